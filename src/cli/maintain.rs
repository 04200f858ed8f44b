//! `citystream compact` and `citystream vacuum`: table maintenance, safe while a cluster writes.

use std::time::Duration;

use super::{parse_bytes, parse_duration};
use crate::delta::compact::CompactOptions;
use crate::delta::vacuum::MIN_SAFE_RETENTION;

/// `citystream compact` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The lake: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long, env = "CITYSTREAM_OUTPUT")]
    pub output: String,
    /// Only hour partitions whose hour ended at least this long ago (late rows may still
    /// arrive for younger ones; compacting them again later is harmless).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Size the new files aim for; files of at least half of it are left as they are.
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    pub target_size: u64,
    /// Print what would be rewritten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl CompactArgs {
    /// The checked options.
    pub fn validate(&self) -> anyhow::Result<CompactOptions> {
        if self.target_size < 1 << 20 {
            anyhow::bail!("invalid --target-size {}: must be at least 1MiB", self.target_size);
        }
        Ok(CompactOptions { older_than: self.older_than, target_size: self.target_size, dry_run: self.dry_run })
    }
}

/// `citystream vacuum` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VacuumArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The lake: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long, env = "CITYSTREAM_OUTPUT")]
    pub output: String,
    /// Keep unreferenced files this long after they were removed from the table (or written):
    /// readers of older table versions and running compactions still need them.
    #[arg(long, default_value = "7days", value_parser = parse_duration)]
    pub retention: Duration,
    /// Allow a --retention under 1h (can break readers of older versions and a compaction
    /// running at the same time).
    #[arg(long)]
    pub allow_short_retention: bool,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl VacuumArgs {
    /// The checked retention.
    pub fn validate(&self) -> anyhow::Result<Duration> {
        if self.retention < MIN_SAFE_RETENTION && !self.allow_short_retention {
            anyhow::bail!(
                "invalid --retention {}: under 1h, a reader of an older table version or a compaction running now may lose files it needs; pass --allow-short-retention to do it anyway",
                humantime::format_duration(self.retention)
            );
        }
        Ok(self.retention)
    }
}
