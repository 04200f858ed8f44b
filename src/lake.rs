//! The output: where the lake lives (`--output`) and how it is laid out.
//!
//! `<root>/<stream>/date=YYYY-MM-DD/hour=HH/<name>.parquet` (Hive style, queryable as-is),
//! manifests under `<root>/_manifests/`, dead letters under `<root>/_dead_letter/stream=<stream>/…`
//! (one table for all streams, partitioned by `stream`, so that every reader takes the folder as
//! one table). Each stream folder and `_dead_letter/` is also a Delta table (see [`crate::delta`]).
//! Object names carry the first epoch they hold (which names their commit) and the writer's run
//! id (which names the worker): `<stream>-e<epoch>[-late]-<run>[-<n>].parquet`. One worker of a
//! process writes one object per commit and (stream, kind, hour) for all the partitions the
//! process owns, so the object count grows neither with partitions nor with epochs.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, RetryConfig};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

use url::Url;

use crate::contract::timestamp::date_hour;
use crate::contract::{EventTime, Stream};
use crate::delta::DeltaRoot;
use crate::epoch::Epoch;

/// Why the output cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The `--output` text is not understood.
    #[error("invalid --output {spec:?}: {reason}")]
    Spec {
        /// What was given.
        spec: String,
        /// Why it is refused.
        reason: String,
    },
    /// The store refused access.
    #[error("cannot use --output {url}: {reason}")]
    Access {
        /// The `--output` URL that was refused.
        url: String,
        /// What went wrong and what to check.
        reason: String,
    },
    /// A store operation failed (after object_store's retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// What kind of rows a file holds.
// Reading accepts exactly the names `as_str` writes (a test holds the two together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// On-time records of one epoch.
    Data,
    /// Late records committed with an epoch, stored under their own event-time hour.
    Late,
    /// Records that did not decode.
    DeadLetter,
    /// Rows of an aggregate table (`agg/<table>/`), one file per partition and commit.
    Aggregate,
}

impl FileKind {
    /// Every kind, in declaration order (which is also serde's variant index).
    pub const ALL: [FileKind; 4] = [FileKind::Data, FileKind::Late, FileKind::DeadLetter, FileKind::Aggregate];

    /// The kind's name wherever it is persisted: in manifests (`kind`) and in the Parquet
    /// footer (`citystream.kind`), so that the two always agree.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Data => "data",
            FileKind::Late => "late",
            FileKind::DeadLetter => "dead_letter",
            FileKind::Aggregate => "aggregate",
        }
    }
}

impl serde::Serialize for FileKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A unit variant, as the derive would write it: the name in JSON manifests, the index
        // in the binary encoding of chunks exchanged between workers.
        s.serialize_unit_variant("FileKind", *self as u32, self.as_str())
    }
}

/// Environment variable bounding how long one store request is retried (humantime, e.g. `5m`).
pub const RETRY_TIMEOUT_ENV: &str = "CITYSTREAM_STORE_RETRY_TIMEOUT";

/// Default of [`RETRY_TIMEOUT_ENV`]: long enough to ride out an endpoint restart or a short
/// network partition, short enough that a dead store ends the run with a clear message.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);

/// Longest pause between two attempts: once the store answers again, work resumes within it.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The retry budget of one store request: [`RETRY_TIMEOUT_ENV`] or [`DEFAULT_RETRY_TIMEOUT`].
pub fn retry_timeout_from_env() -> Result<Duration, LakeError> {
    match std::env::var(RETRY_TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_RETRY_TIMEOUT),
        Ok(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(d),
            Ok(_) => Err(LakeError::Spec { spec: format!("{RETRY_TIMEOUT_ENV}={text}"), reason: "must be at least 1s".into() }),
            Err(e) => Err(LakeError::Spec { spec: format!("{RETRY_TIMEOUT_ENV}={text}"), reason: format!("not a duration like 3m or 90s: {e}") }),
        },
    }
}

/// How S3 requests are retried: every transient failure (connection refused or reset, 5xx,
/// throttling, timeouts of idempotent requests) with exponential backoff and jitter from 100 ms
/// up to `MAX_BACKOFF`, until `timeout` has passed since the request's first attempt. The
/// attempt count is not the limit (an outage of a minute takes ~20 attempts), the time is.
/// Each retry is logged (`object_store`, INFO, "backing off").
pub fn retry_config(timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: MAX_BACKOFF, base: 2.0 },
        // Bounded by `retry_timeout` first; the count only has to exceed what fits in it.
        max_retries: (timeout.as_millis() / 100).max(10) as usize,
        retry_timeout: timeout,
    }
}

/// An opened output.
#[derive(Clone)]
pub struct Lake {
    /// The store, rooted at the output prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The output as the user named it, for messages.
    pub url: String,
    /// How long a failing store request is retried before the run gives up.
    pub retry_timeout: Duration,
    /// The same output as Delta tables address it (see [`Lake::delta`]).
    pub(crate) delta: DeltaRoot,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("url", &self.url).finish()
    }
}

impl Lake {
    /// Opens `spec`: a local directory, `file:///abs/dir`, `s3://bucket/prefix` (settings from
    /// the standard `AWS_*` environment, `AWS_ENDPOINT_URL` included) or `memory://` (tests).
    ///
    /// Parsed here rather than by `object_store::parse_url_opts`, which would lose what users
    /// rely on: it takes no `RetryConfig` (the retry budget above), roots `file://` at `/` without
    /// creating or canonicalising the directory, refuses a relative `file://lake`, and accepts
    /// schemes the lake does not support.
    pub fn open(spec: &str) -> Result<Lake, LakeError> {
        let bad = |reason: &str| LakeError::Spec { spec: spec.to_owned(), reason: reason.to_owned() };
        if spec.trim().is_empty() {
            return Err(bad("empty; give a directory or s3://bucket/prefix"));
        }
        let retry_timeout = retry_timeout_from_env()?;
        if spec == "memory://" {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let delta = DeltaRoot { store: store.clone(), url: Url::parse("memory:///").expect("a valid URL") };
            return Ok(Lake { store, url: spec.to_owned(), retry_timeout, delta });
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name after s3://"));
            }
            let s3 = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry_config(retry_timeout)).build().map_err(|e| bad(&e.to_string()))?;
            let root: Arc<dyn ObjectStore> = Arc::new(s3);
            let prefix = prefix.trim_matches('/');
            let store =
                if prefix.is_empty() { root.clone() } else { Arc::new(object_store::prefix::PrefixStore::new(root.clone(), prefix)) as Arc<dyn ObjectStore> };
            let url = Url::parse(&format!("s3://{bucket}/{prefix}")).map_err(|e| bad(&e.to_string()))?;
            return Ok(Lake { store, url: spec.to_owned(), retry_timeout, delta: DeltaRoot { store: root, url } });
        }
        if spec.contains("://") && !spec.starts_with("file://") {
            return Err(bad("unsupported scheme; use a directory, file:///dir or s3://bucket/prefix"));
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        std::fs::create_dir_all(dir).map_err(|e| LakeError::Access { url: spec.to_owned(), reason: format!("cannot create directory {dir}: {e}") })?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| LakeError::Access { url: spec.to_owned(), reason: e.to_string() })?;
        let absolute =
            std::fs::canonicalize(dir).map_err(|e| LakeError::Access { url: spec.to_owned(), reason: format!("cannot resolve directory {dir}: {e}") })?;
        let url = Url::from_directory_path(&absolute).map_err(|()| bad("not an absolute directory path"))?;
        let delta = DeltaRoot { store: Arc::new(LocalFileSystem::new()), url };
        Ok(Lake { store: Arc::new(store), url: spec.to_owned(), retry_timeout, delta })
    }

    /// What a store request that failed for good means, for the fatal message: how long it was
    /// retried, how to allow longer, and that a restart resumes from the last manifest.
    pub fn gave_up(&self) -> String {
        format!(
            "the store at {} failed or was unreachable for longer than the retry budget of {} (set {RETRY_TIMEOUT_ENV} to wait longer); \
             nothing uncommitted is lost: restart the cluster and it resumes from the last manifest",
            self.url,
            humantime::format_duration(self.retry_timeout)
        )
    }

    /// Checks, before anything is written, that the output exists and that the credentials
    /// may list, write and delete in it; the error names the output and the cause: a missing
    /// bucket (by name), invalid credentials, a permission the credentials lack, an
    /// unreachable endpoint, an unwritable directory, a store that does not honour
    /// create-if-absent PUTs. Listing comes first: some S3 servers create a missing bucket on
    /// the first write.
    pub async fn check_access(&self) -> Result<(), LakeError> {
        let nanos = crate::clock::now_micros();
        let probe = Path::from(format!("_manifests/.write-check-{}-{nanos}", std::process::id()));
        let manifests = Path::from("_manifests");
        let mut listing = self.store.list(Some(&manifests));
        if let Some(Err(e)) = listing.next().await {
            return Err(self.access_error("list", e));
        }
        drop(listing);
        let create = || PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        self.store.put_opts(&probe, b"ok".to_vec().into(), create()).await.map_err(|e| self.access_error("write", e))?;
        // The commit protocol fences a second writer with create-if-absent PUTs (manifests and
        // Delta commits): a store that quietly overwrites instead would let two clusters both
        // commit the same sequence. A second create of the probe must be refused.
        let honoured = match self.store.put_opts(&probe, b"again".to_vec().into(), create()).await {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Ok(_) | Err(object_store::Error::NotImplemented { .. }) => Err(LakeError::Access {
                url: self.url.clone(),
                reason: "the store does not honour conditional writes (a second create-if-absent PUT of the same object succeeded or is not supported): \
                         citystream's manifests and Delta commits rely on them to fence a second writer; use a store that implements \
                         `If-None-Match: *` on PUT (AWS S3, MinIO and SeaweedFS do)"
                    .to_owned(),
            }),
            Err(e) => Err(self.access_error("write", e)),
        };
        let deleted = match self.store.delete(&probe).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.access_error("delete", e)),
        };
        honoured.and(deleted)
    }

    /// The bucket of an `s3://` output.
    pub fn bucket(&self) -> Option<&str> {
        let rest = self.url.strip_prefix("s3://")?;
        Some(rest.split_once('/').map_or(rest, |(b, _)| b))
    }

    /// Explains a failed access check: what is wrong and what to check.
    fn access_error(&self, op: &str, e: object_store::Error) -> LakeError {
        let text = e.to_string();
        let has = |s: &str| text.contains(s);
        let reason = match self.bucket() {
            Some(bucket) if has("NoSuchBucket") || (op == "list" && matches!(e, object_store::Error::NotFound { .. })) => {
                format!("the bucket {bucket:?} does not exist (create bucket {bucket} first, or fix --output)")
            }
            Some(_)
                if has("InvalidAccessKeyId")
                    || has("SignatureDoesNotMatch")
                    || has("ExpiredToken")
                    || has("InvalidToken")
                    || matches!(e, object_store::Error::Unauthenticated { .. }) =>
            {
                "the S3 credentials are not valid: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the platform's credentials) and AWS_REGION".to_owned()
            }
            Some(_) if has("AccessDenied") || matches!(e, object_store::Error::PermissionDenied { .. }) => format!(
                "permission denied: the credentials may not {op} under {} (citystream needs to list, read, write and delete objects under the output prefix)",
                self.url
            ),
            Some(_) => format!("cannot {op} objects: check the endpoint (AWS_ENDPOINT_URL), the bucket and the credentials"),
            None => format!("cannot {op} in the directory: check that it exists and is writable"),
        };
        LakeError::Access { url: self.url.clone(), reason: format!("{reason}; the store said: {text}") }
    }
}

/// The path of an object: stream, kind, the first epoch it holds (every epoch it holds belongs
/// to one commit, so the first one tells which: a commit's objects are named by epochs in
/// `[lower, upper)`), the writer's run id, `hour_of` — the epochs' start for data and dead
/// letters, the late records' own event-time hour for late objects — and, when one commit
/// needed more than one object for the same (stream, kind, hour) because the first reached its
/// target size, the object's number `n` in that commit (omitted for the first).
pub fn file_path(stream: Stream, kind: FileKind, epoch: Epoch, run: &str, hour_of: EventTime, n: u32) -> Path {
    let (date, hour) = date_hour(hour_of);
    let name = stream.name();
    let part = if n == 0 { String::new() } else { format!("-{n}") };
    match kind {
        FileKind::Data => Path::from(format!("{name}/date={date}/hour={hour:02}/{name}-e{epoch:010}-{run}{part}.parquet")),
        FileKind::Late => Path::from(format!("{name}/date={date}/hour={hour:02}/{name}-e{epoch:010}-late-{run}{part}.parquet")),
        FileKind::DeadLetter => Path::from(format!("_dead_letter/stream={name}/date={date}/hour={hour:02}/{name}-e{epoch:010}-{run}{part}.parquet")),
        FileKind::Aggregate => unreachable!("aggregate files are named by crate::aggregate::table::file_path"),
    }
}

/// The first epoch encoded in an object name made by [`file_path`]: `<stream>-e<10 digits>-…`.
/// Any other name (compacted files, Delta checkpoints, foreign files) has none, so garbage
/// collection never touches it.
pub fn epoch_of_file(path: &Path) -> Option<Epoch> {
    let name = path.filename()?;
    let names = Stream::ALL.into_iter().map(Stream::name).chain(crate::aggregate::AggTable::ALL.into_iter().map(crate::aggregate::AggTable::name));
    let prefix = names.filter(|n| name.starts_with(n) && name[n.len()..].starts_with("-e")).max_by_key(|n| n.len())?;
    let digits = name[prefix.len()..].strip_prefix("-e")?.get(..10)?;
    let rest = name.get(prefix.len() + 2 + 10..)?;
    (digits.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with('-')).then(|| digits.parse().ok()).flatten()
}

/// Deletes data and dead-letter objects that no manifest can have committed: those whose
/// commit epoch is `≥ committed_below`, left behind by a run that crashed before committing
/// them. Run only before this cluster writes anything. Returns how many were deleted.
pub async fn collect_garbage(lake: &Lake, committed_below: Epoch) -> Result<usize, LakeError> {
    let mut deleted = 0;
    let mut prefixes: Vec<Path> = Stream::ALL.iter().map(|s| Path::from(s.name())).collect();
    prefixes.push(Path::from("_dead_letter"));
    prefixes.push(Path::from("agg"));
    for prefix in prefixes {
        let objects: Vec<_> = lake.store.list(Some(&prefix)).try_collect().await?;
        for meta in objects {
            let is_ours = meta.location.extension() == Some("parquet");
            if is_ours && epoch_of_file(&meta.location).is_some_and(|e| e >= committed_below) {
                match lake.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwards to an in-memory store but turns every create-if-absent PUT into an overwrite,
    /// as an S3 server without conditional writes does.
    #[derive(Debug)]
    struct IgnoresConditions(InMemory);

    impl std::fmt::Display for IgnoresConditions {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresConditions")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresConditions {
        async fn put_opts(&self, location: &Path, payload: object_store::PutPayload, mut opts: PutOptions) -> object_store::Result<object_store::PutResult> {
            opts.mode = PutMode::Overwrite;
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: object_store::GetOptions) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: object_store::CopyOptions) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn the_access_check_refuses_a_store_that_ignores_create_if_absent() {
        let honest = Lake::open("memory://").unwrap();
        honest.check_access().await.expect("an in-memory store honours create-if-absent");
        let lax = Lake { store: Arc::new(IgnoresConditions(InMemory::new())), ..Lake::open("memory://").unwrap() };
        let err = lax.check_access().await.expect_err("a store that overwrites must be refused").to_string();
        assert!(err.starts_with("cannot use --output memory://"), "{err}");
        assert!(err.contains("does not honour conditional writes") && err.contains("If-None-Match"), "{err}");
        let left: Vec<_> = lax.store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "the probe is deleted even when the check fails: {left:?}");
    }

    #[test]
    fn file_kinds_are_read_back_by_the_name_they_are_written_as() {
        for kind in FileKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<FileKind>(&json).unwrap(), kind);
            let bytes = bincode::serde::encode_to_vec(kind, bincode::config::standard()).unwrap();
            assert_eq!(bincode::serde::decode_from_slice::<FileKind, _>(&bytes, bincode::config::standard()).unwrap().0, kind);
        }
        assert_eq!(FileKind::DeadLetter.as_str(), "dead_letter");
    }

    #[test]
    fn layout_is_hive_style_and_parsable() {
        let t = EventTime(1_740_824_142_123_456); // 2025-03-01T10:15:42
        let p = file_path(Stream::Weather, FileKind::Data, Epoch(29_013_735), "ab12cd34", t, 0);
        assert_eq!(p.as_ref(), "weather_data/date=2025-03-01/hour=10/weather_data-e0029013735-ab12cd34.parquet");
        assert_eq!(epoch_of_file(&p), Some(Epoch(29_013_735)));
        let l = file_path(Stream::Gps, FileKind::Late, Epoch(12), "r", t, 0);
        assert!(l.as_ref().ends_with("gps_data-e0000000012-late-r.parquet"));
        assert_eq!(epoch_of_file(&l), Some(Epoch(12)));
        let d = file_path(Stream::Gps, FileKind::DeadLetter, Epoch(12), "r", t, 2);
        assert!(d.as_ref().starts_with("_dead_letter/stream=gps_data/date=2025-03-01/hour=10/"));
        assert!(d.as_ref().ends_with("gps_data-e0000000012-r-2.parquet"), "the third object of its key in one commit");
        assert_eq!(epoch_of_file(&d), Some(Epoch(12)));
        for other in [
            "gps_data/date=2025-03-01/hour=10/gps_data-compacted-v12-0e1234567890abcdef.parquet",
            "gps_data/_delta_log/00000000000000000100.checkpoint.parquet",
            "x-e0000000012-r.parquet",
        ] {
            assert_eq!(epoch_of_file(&Path::from(other)), None, "{other}");
        }
    }

    #[test]
    fn garbage_collection_keeps_committed_epochs() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lake = Lake::open("memory://").unwrap();
        rt.block_on(async {
            for e in [5, 9, 10, 11] {
                lake.store.put(&file_path(Stream::Gps, FileKind::Data, Epoch(e), "r", EventTime::UNIX_EPOCH, 0), vec![1].into()).await.unwrap();
            }
            lake.store.put(&file_path(Stream::Gps, FileKind::DeadLetter, Epoch(12), "r", EventTime::UNIX_EPOCH, 1), vec![1].into()).await.unwrap();
            lake.store.put(&Path::from("_manifests/00000000000000000001.json"), vec![1].into()).await.unwrap();
            assert_eq!(collect_garbage(&lake, Epoch(10)).await.unwrap(), 3);
            let left: Vec<_> = lake.store.list(None).try_collect().await.unwrap();
            assert_eq!(left.len(), 3, "epochs 5 and 9 and the manifest stay");
        });
    }

    #[test]
    fn retries_are_bounded_by_time_not_attempts() {
        let c = retry_config(DEFAULT_RETRY_TIMEOUT);
        assert_eq!(c.retry_timeout, DEFAULT_RETRY_TIMEOUT);
        assert!(c.max_retries as f64 * 0.1 >= DEFAULT_RETRY_TIMEOUT.as_secs_f64(), "the time, not the count, ends the retries");
        assert!(c.backoff.max_backoff <= Duration::from_secs(5), "recovery is noticed within seconds");
        let lake = Lake::open("memory://").unwrap();
        assert!(lake.gave_up().contains(RETRY_TIMEOUT_ENV));
    }

    #[test]
    fn bad_specs_name_the_flag() {
        assert!(Lake::open("").unwrap_err().to_string().contains("--output"));
        assert!(Lake::open("ftp://x").unwrap_err().to_string().contains("--output"));
        assert!(Lake::open("s3://").unwrap_err().to_string().contains("bucket"));
    }
}
