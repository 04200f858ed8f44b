//! Manifests: the only truth about what is committed.
//!
//! Manifest `n` (`_manifests/<n, 20 digits>.json`) commits the epochs `[lower, upper)`: it lists
//! every object written for them and, per partition, the [`ResumeState`] from which a restart
//! continues. Manifest `n + 1` always starts where `n` ended. Each is written with a
//! create-if-absent PUT, so of two clusters that try to write the same successor exactly one
//! succeeds: that is the fence against zombies. A *claim* manifest (`lower == upper`, no
//! files) is written by a cluster when it starts, so that a second cluster on the same output
//! is detected at its next commit at the latest.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::aggregate::AggTable;
use crate::contract::Stream;
use crate::epoch::{Epoch, EpochClock};
use crate::lake::{FileKind, Lake, LakeError};
use crate::reclock::ResumeState;

/// Format version written into every manifest.
pub const FORMAT: u32 = 1;

/// One committed object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Path relative to the output root.
    pub path: String,
    /// The stream whose rows it holds.
    pub stream: Stream,
    /// Data, late or dead letters.
    pub kind: FileKind,
    /// The first epoch whose rows it holds (which names it).
    pub epoch: Epoch,
    /// The last epoch whose rows it holds; every epoch in `[epoch, last_epoch]` belongs to the
    /// manifest that lists the object. (Manifests of versions that wrote one object per epoch
    /// lack it: read as 0, and [`FileEntry::last`] then gives `epoch`.)
    #[serde(default)]
    pub last_epoch: Epoch,
    /// The Kafka partitions (of `stream`) whose rows it holds, ascending.
    pub partitions: Vec<i32>,
    /// Rows.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Delta statistics JSON of the object (`numRecords`, `minValues`, `maxValues`,
    /// `nullCount`), computed from its footer as it was written; published in its `add`.
    /// (Absent in manifests of versions before the Delta tables.)
    #[serde(default)]
    pub stats: Option<String>,
    /// The aggregate table of a [`FileKind::Aggregate`] file. (Always serialized, `null` for
    /// the other kinds: entries also cross the cluster inside timely messages, whose bincode
    /// encoding cannot skip a field.)
    #[serde(default)]
    pub aggregate: Option<AggTable>,
}

impl FileEntry {
    /// The last epoch whose rows the object holds.
    pub fn last(&self) -> Epoch {
        self.last_epoch.max(self.epoch)
    }
}

/// Whether a manifest commits epochs or claims the output for a starting cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestKind {
    /// A cluster started here.
    Claim,
    /// Epochs `[lower, upper)` are committed.
    Commit,
}

/// One manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Position in the chain.
    pub sequence: u64,
    /// Claim or commit.
    pub kind: ManifestKind,
    /// First epoch committed.
    pub lower: Epoch,
    /// One past the last epoch committed.
    pub upper: Epoch,
    /// Window and lateness in force (a restart must use the same window).
    pub clock: EpochClock,
    /// Kafka topic prefix in force.
    pub topic_prefix: String,
    /// The writing cluster's run id.
    pub run: String,
    /// Wall-clock time of writing, RFC 3339 (informational only).
    pub written_at: String,
    /// Objects committed.
    pub files: Vec<FileEntry>,
    /// Where every known partition resumes.
    pub partitions: Vec<ResumeState>,
    /// The shape of the cluster that wrote it (absent in manifests of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterShape>,
    /// Files of aggregate tables that this manifest's files replace (or that a partition left
    /// without rows lost): paths relative to the output root. Removed from their tables in the
    /// same Delta commit that adds the new files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// The aggregate tables that equal the aggregation of the committed rows as of this
    /// manifest: maintained by every commit since the lake began. A table not listed (switched
    /// off for a while, or a lake from before the aggregates) is rebuilt from the stream tables
    /// when a run maintains it again.
    #[serde(default)]
    pub aggregates: Vec<AggTable>,
}

/// How many processes and worker threads per process a cluster runs (`-n`, `-w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterShape {
    /// Processes (`-n`).
    pub processes: usize,
    /// Worker threads per process (`-w`).
    pub threads: usize,
}

/// Errors of committing.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Someone else wrote this manifest first.
    #[error(
        "manifest {sequence} already exists at {url}: another citystream cluster is writing to the same output (this cluster stops; run one cluster per output)"
    )]
    Conflict {
        /// The contested sequence number.
        sequence: u64,
        /// The `--output` URL both clusters write to.
        url: String,
    },
    /// The manifest is unreadable.
    #[error("manifest {path} is not valid: {reason}")]
    Corrupt {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

impl From<object_store::Error> for ManifestError {
    fn from(e: object_store::Error) -> Self {
        ManifestError::Lake(e.into())
    }
}

/// Path of manifest `sequence`.
pub fn manifest_path(sequence: u64) -> Path {
    Path::from(format!("_manifests/{sequence:020}.json"))
}

/// Reads the latest manifest, if any.
pub async fn latest(lake: &Lake) -> Result<Option<Manifest>, ManifestError> {
    let listed: Vec<_> = lake.store.list(Some(&Path::from("_manifests"))).try_collect().await?;
    let newest = listed.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()).max();
    let Some(sequence) = newest else { return Ok(None) };
    read(lake, sequence).await.map(Some)
}

/// Reads manifest `sequence`.
pub async fn read(lake: &Lake, sequence: u64) -> Result<Manifest, ManifestError> {
    let path = manifest_path(sequence);
    let bytes = lake.store.get(&path).await?.bytes().await?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| ManifestError::Corrupt { path: path.to_string(), reason: e.to_string() })?;
    if manifest.sequence != sequence || manifest.format != FORMAT {
        return Err(ManifestError::Corrupt {
            path: path.to_string(),
            reason: format!("sequence {} / format {} do not match", manifest.sequence, manifest.format),
        });
    }
    Ok(manifest)
}

/// Writes a manifest if and only if its sequence number is still free.
///
/// Safe to repeat, because the store may have executed a request whose answer was lost: a
/// create that finds its own bytes already there (an earlier attempt landed) succeeds; other
/// bytes are another cluster's manifest, a [`ManifestError::Conflict`]. Transient failures that
/// `object_store` does not retry for a conditional PUT (a timeout or a dropped connection after
/// the request was sent) are retried here with backoff, within the lake's retry budget.
pub async fn write(lake: &Lake, manifest: &Manifest) -> Result<(), ManifestError> {
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
    let payload = PutPayload::from(bytes.clone());
    let path = manifest_path(manifest.sequence);
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match lake.store.put_opts(&path, payload.clone(), opts).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                let existing = lake.store.get(&path).await?.bytes().await?;
                if existing.as_ref() == bytes.as_slice() {
                    tracing::info!(sequence = manifest.sequence, "manifest found already written by an earlier attempt of this write (its answer was lost)");
                    return Ok(());
                }
                return Err(ManifestError::Conflict { sequence: manifest.sequence, url: lake.url.clone() });
            }
            Err(e @ object_store::Error::Generic { .. }) if started.elapsed() + pause < lake.retry_timeout => {
                tracing::warn!(sequence = manifest.sequence, error = %e, "writing the manifest failed; retrying in {pause:?}");
                crate::observe::metrics().store_retry("manifest_put");
                crate::observe::metrics().commit_failures.inc();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Now as RFC 3339 in UTC with millisecond precision (`2025-03-01T10:15:42.123Z`), for the
/// informational `written_at`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sequence: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            sequence,
            kind: ManifestKind::Commit,
            lower: Epoch(0),
            upper: Epoch(3),
            clock: EpochClock::new(60_000_000, 120_000_000),
            topic_prefix: String::new(),
            run: "r1".into(),
            written_at: now_rfc3339(),
            files: vec![],
            partitions: vec![],
            cluster: None,
            removed: vec![],
            aggregates: vec![],
        }
    }

    #[test]
    fn written_at_is_utc_with_milliseconds() {
        let before = std::time::SystemTime::now();
        let text = now_rfc3339();
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`: always three fraction digits, always the `Z` of UTC.
        assert_eq!(text.len(), 24, "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[10] == b'T' && text.as_bytes()[19] == b'.', "{text}");
        assert!(text[20..23].bytes().all(|b| b.is_ascii_digit()), "{text}");
        // It reads back as the instant it was taken, truncated to the millisecond.
        let parsed = humantime::parse_rfc3339(&text).unwrap();
        let since = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(since(parsed).subsec_nanos() % 1_000_000, 0, "{text}");
        assert!(since(parsed).as_millis() >= since(before).as_millis(), "{text}");
        assert!(parsed <= std::time::SystemTime::now(), "{text}");
        // The contract's own parser reads it too.
        let micros = crate::contract::timestamp::parse_timestamp(&text, 0).unwrap();
        assert_eq!(micros.micros(), since(parsed).as_micros() as i64, "{text}");
    }

    #[test]
    fn create_if_absent_fences_a_second_writer() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lake = Lake::open("memory://").unwrap();
        rt.block_on(async {
            assert!(latest(&lake).await.unwrap().is_none());
            write(&lake, &manifest(1)).await.unwrap();
            write(&lake, &manifest(2)).await.unwrap();
            let mut other = manifest(2);
            other.run = "r2".into();
            let err = write(&lake, &other).await.unwrap_err();
            assert!(matches!(err, ManifestError::Conflict { sequence: 2, .. }));
            assert!(err.to_string().contains("another citystream cluster"));
            assert_eq!(latest(&lake).await.unwrap().unwrap(), manifest(2).clone_with_time(&latest(&lake).await.unwrap().unwrap()));
        });
    }

    #[test]
    fn a_repeated_write_of_the_same_manifest_is_not_a_conflict() {
        // A retried create whose first attempt landed finds its own bytes: success, not a fence.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lake = Lake::open("memory://").unwrap();
        rt.block_on(async {
            let m = manifest(1);
            write(&lake, &m).await.unwrap();
            write(&lake, &m).await.unwrap();
            let mut theirs = m.clone();
            theirs.run = "another".into();
            assert!(matches!(write(&lake, &theirs).await.unwrap_err(), ManifestError::Conflict { sequence: 1, .. }));
        });
    }

    impl Manifest {
        fn clone_with_time(mut self, other: &Manifest) -> Manifest {
            self.written_at = other.written_at.clone();
            self
        }
    }
}
