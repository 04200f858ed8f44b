//! `citystream status`: what a lake holds, read from its manifest chain.
//!
//! Every manifest of `_manifests/` is read (concurrently, through the manifest types of
//! [`crate::commit::manifest`]) and the chain is checked as a restart relies on it: sequence
//! numbers 1..=n without a gap, each readable, each commit starting where the one before ended.
//! From the commits come the last committed epoch and its event-time range, when and by which
//! cluster shape it was written, and rows, objects and bytes per stream. The consumer group's
//! lag per partition is added by the caller ([`crate::cli::status`]) when `--brokers` is given.
//!
//! Then each Delta table ([`crate::delta`]): its version and the manifest its `txn` says it
//! holds ([`LakeStatus::tables`]); a table behind the newest manifest is shown as such (the
//! publisher of a running cluster is at most a moment behind; a stopped one catches up at the
//! next start).

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::commit::manifest::{ClusterShape, Manifest, ManifestKind, manifest_path};
use crate::contract::Stream;
use crate::epoch::Epoch;
use crate::lake::{FileKind, Lake};

/// Whether the chain can be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// Every manifest is there, readable and continues the one before.
    Healthy,
    /// No commit manifest (nothing was ever committed).
    Empty(String),
    /// A manifest is missing, unreadable or does not continue its predecessor.
    Broken(String),
}

/// The latest commit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastCommit {
    /// Its manifest's sequence number.
    pub sequence: u64,
    /// The last epoch it committed (the cluster's committed watermark).
    pub epoch: Epoch,
    /// Start of the event time committed: the first epoch any committed object holds (RFC 3339).
    pub event_time_from: String,
    /// End (exclusive) of the event time committed (RFC 3339).
    pub event_time_to: String,
    /// When the manifest was written (RFC 3339, the writer's clock).
    pub written_at: String,
    /// The writing cluster's run id.
    pub run: String,
    /// Processes × threads of the writing cluster (manifests of older versions do not say).
    pub cluster: Option<ClusterShape>,
    /// Epoch length, seconds.
    pub window_seconds: f64,
}

/// Totals of one stream over every commit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamTotals {
    /// The stream's topic name without prefix (`vehicle_data`, …).
    pub stream: String,
    /// On-time rows.
    pub rows: u64,
    /// Late rows.
    pub late_rows: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Objects (of every kind).
    pub objects: u64,
    /// Bytes of those objects.
    pub bytes: u64,
}

/// A partition's position in the latest manifest and, with `--brokers`, the group's lag.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStatus {
    /// The topic, with prefix.
    pub topic: String,
    /// The Kafka partition number.
    pub partition: i32,
    /// Where a restart resumes (the latest manifest's resume position).
    pub committed_position: i64,
    /// The consumer group's committed offset (`--brokers`; `None` if the group has none).
    pub group_offset: Option<i64>,
    /// The broker's high watermark (`--brokers`).
    pub end: Option<i64>,
    /// `end − group offset` (or − the committed position when the group has none).
    pub lag: Option<i64>,
}

/// What `citystream status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LakeStatus {
    /// The `--output` URL examined.
    pub output: String,
    /// Healthy, empty or broken, with the reason.
    pub health: Health,
    /// Manifests in the chain (claims included).
    pub manifests: u64,
    /// Commit manifests.
    pub commits: u64,
    /// The latest commit, if any.
    pub last_commit: Option<LastCommit>,
    /// Per stream, in the contract's order.
    pub streams: Vec<StreamTotals>,
    /// The topic prefix of the lake's input.
    pub topic_prefix: String,
    /// Per partition of the latest manifest.
    pub partitions: Vec<PartitionStatus>,
    /// Per Delta table: its name, its version, and the manifest it holds (its `txn`).
    pub tables: Vec<TableStatus>,
}

impl LakeStatus {
    /// The process exit code of `status`: 0 healthy, 4 empty, 5 broken chain.
    pub fn exit_code(&self) -> u8 {
        match self.health {
            Health::Healthy => 0,
            Health::Empty(_) => EMPTY_EXIT_CODE,
            Health::Broken(_) => BROKEN_EXIT_CODE,
        }
    }
}

/// One Delta table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStatus {
    /// The table's name.
    pub table: String,
    /// Its newest version.
    pub version: u64,
    /// The manifest it holds (its `txn` version for `citystream/<table>`; 0: none).
    pub manifest: u64,
}

/// Exit code of `status` on a lake with no commit.
pub const EMPTY_EXIT_CODE: u8 = 4;
/// Exit code of `status` on a broken manifest chain.
pub const BROKEN_EXIT_CODE: u8 = 5;

/// Reads the chain of `lake` and sums it up. Errors only when the store cannot be listed.
pub async fn read(lake: &Lake) -> anyhow::Result<LakeStatus> {
    let listed: Vec<_> = lake.store.list(Some(&Path::from("_manifests"))).try_collect().await?;
    let mut sequences: Vec<u64> = listed.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()).collect();
    sequences.sort_unstable();
    let read_one = |sequence: u64| async move {
        let path = manifest_path(sequence);
        let parsed = match lake.store.get(&path).await {
            Ok(got) => match got.bytes().await {
                Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|e| format!("manifest {path} is not valid: {e}")),
                Err(e) => Err(format!("manifest {path} cannot be read: {e}")),
            },
            Err(e) => Err(format!("manifest {path} cannot be read: {e}")),
        };
        (sequence, parsed)
    };
    let manifests: Vec<(u64, Result<Manifest, String>)> = futures::stream::iter(sequences.iter().copied()).map(read_one).buffered(16).collect().await;
    let mut status = summarise(&lake.url, manifests);
    for table in crate::delta::Table::all() {
        if let Some(t) = lake.delta().open(table).await? {
            let manifest = t.snapshot()?.transaction_version(t.log_store().as_ref(), table.app_id()).await?.unwrap_or(0).max(0) as u64;
            status.tables.push(TableStatus { table: table.name().to_owned(), version: t.version().unwrap_or(0), manifest });
        }
    }
    Ok(status)
}

/// Sums up a chain read as `(sequence, manifest or why not)`, ascending.
pub fn summarise(output: &str, manifests: Vec<(u64, Result<Manifest, String>)>) -> LakeStatus {
    let mut broken: Option<String> = None;
    let mut streams: Vec<StreamTotals> = Stream::ALL.iter().map(|s| StreamTotals { stream: s.name().to_owned(), ..StreamTotals::default() }).collect();
    let mut previous: Option<&Manifest> = None;
    let mut last_commit: Option<&Manifest> = None;
    let mut commits = 0;
    let mut first_lower: Option<Epoch> = None;
    let mut expected = 1;
    for (sequence, m) in &manifests {
        if *sequence != expected && broken.is_none() {
            broken = Some(if *sequence > expected {
                format!(
                    "manifest {expected} is missing (the chain goes on at {sequence}): a restart would resume from {}, skipping what it committed",
                    manifests.last().map_or(0, |l| l.0)
                )
            } else {
                format!("manifest {sequence} appears twice")
            });
        }
        expected = sequence + 1;
        let m = match m {
            Ok(m) => m,
            Err(why) => {
                broken.get_or_insert_with(|| why.clone());
                continue;
            }
        };
        if m.sequence != *sequence {
            broken.get_or_insert_with(|| format!("manifest {sequence} says it is number {}", m.sequence));
        }
        if let Some(p) = previous
            && m.lower != p.upper
        {
            broken.get_or_insert_with(|| format!("manifest {sequence} starts at epoch {} but manifest {} ended at {}", m.lower, p.sequence, p.upper));
        }
        previous = Some(m);
        if m.kind != ManifestKind::Commit {
            continue;
        }
        commits += 1;
        // The aggregate tables' files summarise rows counted here already: they are listed with
        // the Delta tables, not in the streams' totals.
        let raw = || m.files.iter().filter(|f| f.kind != FileKind::Aggregate);
        if let Some(least) = raw().map(|f| f.epoch).min() {
            first_lower = Some(first_lower.map_or(least, |e: Epoch| e.min(least)));
        }
        last_commit = Some(m);
        for f in raw() {
            let t = &mut streams[f.stream.index()];
            t.objects += 1;
            t.bytes += f.bytes;
            match f.kind {
                FileKind::Data => t.rows += f.rows,
                FileKind::Late => t.late_rows += f.rows,
                FileKind::DeadLetter => t.dead_letters += f.rows,
                FileKind::Aggregate => {}
            }
        }
    }
    let latest = manifests.iter().rev().find_map(|(_, m)| m.as_ref().ok());
    let health = match (broken, last_commit) {
        (Some(why), _) => Health::Broken(why),
        (None, None) if manifests.is_empty() => Health::Empty(format!("no manifest in {output}/_manifests: nothing was ever committed here")),
        (None, None) => Health::Empty(format!("{} claim manifest(s) but no commit in {output}: a cluster started but committed nothing yet", manifests.len())),
        (None, Some(_)) => Health::Healthy,
    };
    let rfc3339 = |micros: i64| humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64)).to_string();
    let prefix = latest.map(|m| m.topic_prefix.clone()).unwrap_or_default();
    LakeStatus {
        output: output.to_owned(),
        health,
        manifests: manifests.len() as u64,
        commits,
        last_commit: last_commit.map(|m| LastCommit {
            sequence: m.sequence,
            epoch: m.upper.saturating_sub(1),
            event_time_from: rfc3339(m.clock.start_of(first_lower.unwrap_or(m.lower)).micros()),
            event_time_to: rfc3339(m.clock.start_of(m.upper).micros()),
            written_at: m.written_at.clone(),
            run: m.run.clone(),
            cluster: m.cluster,
            window_seconds: m.clock.window_us as f64 / 1e6,
        }),
        streams,
        partitions: latest
            .map(|m| {
                m.partitions
                    .iter()
                    .map(|s| PartitionStatus {
                        topic: format!("{prefix}{}", s.id.stream.name()),
                        partition: s.id.partition,
                        committed_position: s.position.offset.get(),
                        group_offset: None,
                        end: None,
                        lag: None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        topic_prefix: prefix,
        tables: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::manifest::{FORMAT, FileEntry};
    use crate::epoch::EpochClock;

    fn manifest(sequence: u64, kind: ManifestKind, lower: Epoch, upper: Epoch, rows: u64) -> Manifest {
        let file = |stream, kind, rows| FileEntry {
            path: format!("f{sequence}"),
            stream,
            kind,
            epoch: lower,
            last_epoch: upper - 1,
            partitions: vec![0],
            rows,
            bytes: 100,
            stats: None,
            aggregate: None,
        };
        Manifest {
            format: FORMAT,
            sequence,
            kind,
            lower,
            upper,
            clock: EpochClock::new(60_000_000, 120_000_000),
            topic_prefix: "t.".into(),
            run: "r".into(),
            written_at: "2026-11-29T00:00:00.000Z".into(),
            files: if kind == ManifestKind::Commit {
                vec![file(Stream::Gps, FileKind::Data, rows), file(Stream::Gps, FileKind::DeadLetter, 1)]
            } else {
                vec![]
            },
            partitions: vec![],
            cluster: Some(ClusterShape { processes: 2, threads: 2 }),
            removed: vec![],
            aggregates: vec![],
        }
    }

    #[test]
    fn a_chain_is_healthy_empty_or_broken_with_its_reason() {
        assert!(matches!(summarise("x", vec![]).health, Health::Empty(_)));
        let claim_only = summarise("x", vec![(1, Ok(manifest(1, ManifestKind::Claim, Epoch(0), Epoch(0), 0)))]);
        assert!(matches!(&claim_only.health, Health::Empty(why) if why.contains("claim")), "{:?}", claim_only.health);

        let chain = || {
            vec![
                (1, Ok(manifest(1, ManifestKind::Claim, Epoch(0), Epoch(0), 0))),
                (2, Ok(manifest(2, ManifestKind::Commit, Epoch(0), Epoch(10), 7))),
                (3, Ok(manifest(3, ManifestKind::Commit, Epoch(10), Epoch(12), 5))),
            ]
        };
        let s = summarise("x", chain());
        assert_eq!(s.health, Health::Healthy);
        assert_eq!((s.manifests, s.commits, s.exit_code()), (3, 2, 0));
        let gps = &s.streams[Stream::Gps.index()];
        assert_eq!((gps.rows, gps.dead_letters, gps.objects, gps.bytes), (12, 2, 4, 400));
        let last = s.last_commit.unwrap();
        assert_eq!((last.sequence, last.epoch), (3, Epoch(11)));
        assert_eq!(last.event_time_to, "1970-01-01T00:12:00Z");
        assert_eq!(last.cluster, Some(ClusterShape { processes: 2, threads: 2 }));

        let mut gap = chain();
        let _ = gap.remove(1);
        let s = summarise("x", gap);
        assert!(matches!(&s.health, Health::Broken(why) if why.contains("manifest 2 is missing")), "{:?}", s.health);
        assert_eq!(s.exit_code(), BROKEN_EXIT_CODE);

        let mut unreadable = chain();
        unreadable[1].1 = Err("manifest _manifests/2 is not valid: eof".into());
        assert!(matches!(summarise("x", unreadable).health, Health::Broken(why) if why.contains("not valid")));

        let mut misplaced = chain();
        misplaced[2].1 = Ok(manifest(3, ManifestKind::Commit, Epoch(11), Epoch(12), 5));
        assert!(matches!(summarise("x", misplaced).health, Health::Broken(why) if why.contains("starts at epoch 11")));
    }
}
