//! The options of `pgbackup backup`, and the checks on them made before anything is read.

use std::path::PathBuf;

use clap::Args;

use crate::agent::{AgentError, repository_args::RepositoryArgs};
use crate::{
    api::{BackupMethod, CheckpointMode, CompressOn, CompressionAlgorithm, DumpFormat},
    postgres::ConnectionArgs,
    repository::{MAX_PARTS, StreamOptions},
};

/// Options of `pgbackup backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// `logical` (pg_dumpall --globals-only + pg_dump per database) or `physical`
    /// (pg_basebackup of the cluster, the base for point-in-time restore).
    #[arg(long, value_enum)]
    pub method: BackupMethod,

    /// Database to dump (logical; repeat for several). Default: every database that accepts
    /// connections except templates.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,

    /// Leave out roles and tablespaces (logical).
    #[arg(long)]
    pub no_globals: bool,

    /// pg_dump archive format (logical): `custom` streams each database straight into the
    /// repository; `directory` dumps with `--jobs` workers and stores the dump directory as
    /// one tar stream, each file as soon as pg_dump has written it.
    #[arg(long, value_enum, default_value_t = DumpFormat::Custom)]
    pub format: DumpFormat,

    /// Parallel pg_dump workers per database (logical, `--format directory`); each holds a
    /// connection of its own besides pg_dump's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,

    /// Where a directory-format dump is written before its files go into the repository.
    /// Default: the temporary directory.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// Most MiB of a directory-format dump kept in `--scratch-dir` while the repository
    /// catches up: above it pg_dump is paused until what it wrote is stored. Files still
    /// being written (up to `--jobs` tables) come on top.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub scratch_limit_mib: u64,

    /// Take an incremental physical backup (PostgreSQL 17+, `summarize_wal = on`): only the
    /// blocks changed since the newest physical backup of the cluster on its timeline, which
    /// it builds on. Restores combine the chain with `pg_combinebackup`.
    #[arg(long)]
    pub incremental: bool,

    /// With `--incremental`: take a full backup instead when the newest chain already
    /// holds N backups (its full one included), or when there is no chain to build on yet.
    #[arg(long, value_name = "N", requires = "incremental", value_parser = clap::value_parser!(u32).range(1..))]
    pub full_every: Option<u32>,

    /// With `--incremental`: take a full backup instead when the newest chain's full
    /// backup is older than this (`7d`, `36h`), or when there is no chain to build on yet.
    #[arg(long, value_name = "DURATION", requires = "incremental")]
    pub full_after: Option<String>,

    /// With `--incremental`: when no incremental backup can be taken (nothing to build on,
    /// a server older than 17 or with summarize_wal off, WAL summaries that do not reach
    /// back to the parent), take a full one and say why instead of failing.
    #[arg(long, requires = "incremental")]
    pub fall_back_to_full: bool,

    /// A YAML stream of the Kubernetes objects the database runs as, stored with the backup
    /// (`pgbackup configuration` prints it back); the operator writes it. A file that
    /// cannot be read is left out with a warning.
    #[arg(long, env = "PGBACKUP_CONFIGURATION", value_name = "FILE")]
    pub configuration: Option<PathBuf>,

    /// Checkpoint at the start of a physical backup.
    #[arg(long, value_enum, default_value_t = CheckpointMode::Fast)]
    pub checkpoint: CheckpointMode,

    /// Compression of stored objects.
    #[arg(long, value_enum, default_value_t = CompressionAlgorithm::Zstd)]
    pub compression: CompressionAlgorithm,

    /// Compression level (zstd 1-19, lz4 1-12, gzip 1-9). Default: the algorithm's fast one.
    #[arg(long)]
    pub compression_level: Option<i32>,

    /// Where a full physical backup is compressed: `server` (PostgreSQL 15+; older servers
    /// and incremental backups fall back to the agent) compresses as the server reads its
    /// files, zstd with `--compression-threads` workers in the server, and only the
    /// compressed stream crosses the network and is stored as it comes; `client` has the
    /// agent compress what the server sends, keeping that CPU off the database's node.
    #[arg(long, value_enum, default_value_t = CompressOn::Server)]
    pub compress_on: CompressOn,

    /// Seconds between progress lines in the log.
    #[arg(long, default_value_t = 10)]
    pub progress_interval: u64,

    /// Directory of PostgreSQL's programs (pg_dump, pg_basebackup, …). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// Threads zstd compresses with. Default 1: the backup already runs reading,
    /// compressing and uploading side by side, and a pod on the database's node competes
    /// with it for CPU; raise it where the agent has cores to spare.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub compression_threads: u32,

    /// Do not count the rows of every table for the restore test (`verify --restore`). The
    /// counts read every table once more, which a very large database may not want; without
    /// them the restore test checks that the backup restores and recovers, not its rows.
    #[arg(long)]
    pub no_row_counts: bool,

    /// Largest stored object in MiB; longer streams continue in numbered objects.
    #[arg(long, default_value_t = 100 * 1024, hide = true)]
    pub max_object_mib: u64,
}

/// The largest stored object: the configured maximum, but never more than an S3 multipart
/// upload can hold with the configured part size.
impl BackupArgs {
    pub(super) fn max_chunk_size(&self) -> u64 {
        const MIB: u64 = 1024 * 1024;
        let multipart_limit = u64::from(self.repository.s3_part_size_mib) * MIB * MAX_PARTS as u64;
        (self.max_object_mib.max(1) * MIB).min(multipart_limit)
    }

    /// Checks the options that do not go together, before anything is read; the
    /// compression and its level.
    pub(super) fn check(&self) -> Result<(CompressionAlgorithm, i32), AgentError> {
        let algorithm = self.compression;
        let level = self
            .compression_level
            .unwrap_or_else(|| StreamOptions::default_level(algorithm));
        check_level(algorithm, level)?;
        if self.incremental && self.method != BackupMethod::Physical {
            return Err(AgentError::Invalid(
                "--incremental is for physical backups (--method physical)".into(),
            ));
        }
        if self.method == BackupMethod::Logical
            && self.jobs > 1
            && self.format != DumpFormat::Directory
        {
            return Err(AgentError::Invalid(
                "--jobs above 1 needs --format directory (pg_dump dumps in parallel only into a directory)".into(),
            ));
        }
        if let Some(text) = &self.full_after {
            crate::repository::parse_duration(text)
                .map_err(|e| AgentError::Invalid(format!("--full-after: {e}")))?;
        }
        Ok((algorithm, level))
    }
}

fn check_level(algorithm: CompressionAlgorithm, level: i32) -> Result<(), AgentError> {
    let range = match algorithm {
        CompressionAlgorithm::Zstd => 1..=19,
        CompressionAlgorithm::Lz4 => 1..=12,
        CompressionAlgorithm::Gzip => 1..=9,
        CompressionAlgorithm::None => 0..=0,
    };
    if range.contains(&level) {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "compression level {level} is outside {range:?} for {algorithm:?}"
        )))
    }
}
