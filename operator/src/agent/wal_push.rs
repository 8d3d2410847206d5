//! `pgbackup wal-push`: PostgreSQL's `archive_command`. Stores one WAL file, after checking
//! from its header that it belongs to the archive's cluster and sits where its name says.
//! Pushing a file that is archived already succeeds without writing (PostgreSQL retries).
//! When PostgreSQL has more files ready than the one it asks for, a worker stores them
//! ahead, in parallel ([`wal_push_ahead`]).

use std::path::{Path, PathBuf};

use super::{
    AgentError, progress::human_bytes, repository_args::RepositoryArgs, wal_push_ahead::Spool,
};
use crate::{
    api::CompressionAlgorithm,
    postgres::{WalSegmentHeader, read_wal_header},
    repository::{
        ArchiveIdentity, Keys, Pushed, Store, StreamOptions, WalArchive, WalError, WalFile,
    },
};
use clap::Args;

/// Options of `pgbackup wal-push`.
#[derive(Debug, Clone, Args)]
pub struct WalPushArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,

    /// The WAL file to store (`%p` in `archive_command`).
    pub path: PathBuf,

    /// Compression of the stored file.
    #[arg(long, value_enum, default_value_t = CompressionAlgorithm::Zstd)]
    pub compression: CompressionAlgorithm,

    /// Compression level. Default: the algorithm's fastest (zstd 1), since every segment
    /// waits for it.
    #[arg(long)]
    pub compression_level: Option<i32>,

    /// The data directory, for its `PG_VERSION`. Default: the current directory, which is
    /// the data directory when PostgreSQL runs `archive_command`.
    #[arg(long, env = "PGDATA", default_value = ".", value_name = "DIR")]
    pub pgdata: PathBuf,

    /// Files stored at once ahead of PostgreSQL when its archiving has fallen behind (more
    /// files marked ready in `pg_wal/archive_status` than the one asked for): a worker of
    /// its own stores them in parallel and the `archive_command` of each answers as soon
    /// as it is durable in the repository. 0 stores only the file asked for.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub ahead: u32,

    /// Only store the ready files ahead (what the worker runs).
    #[arg(long, hide = true)]
    pub ahead_only: bool,
}

/// Stores the file; returns a summary line.
pub async fn run(args: &WalPushArgs) -> Result<String, AgentError> {
    // A bad key is refused before anything is written (the first push claims the archive).
    let encryption = args.repository.keys()?;
    let spool = Spool::new(&args.pgdata, stored_in(args));
    let name = args
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if args.ahead_only {
        let store = args.repository.open().await?;
        let push = |path: PathBuf, name: String| {
            let (store, encryption) = (&store, encryption.clone());
            async move { store_file(args, store, encryption, &path, &name).await }
        };
        let stored = spool.work(args.ahead.max(1) as usize, push).await;
        return Ok(format!("stored {stored} files ahead"));
    }
    if args.ahead > 0
        && let Some(summary) = spool.answer(&name, &args.path).await
    {
        return Ok(summary);
    }
    let store = args.repository.open().await?;
    store_file(args, &store, encryption, &args.path, &name).await
}

/// Where `wal-push` stores: an acknowledgement of the worker counts only for the same.
fn stored_in(args: &WalPushArgs) -> String {
    let repository = &args.repository;
    format!(
        "{} {} {}",
        repository.repository,
        repository.s3_endpoint.as_deref().unwrap_or("-"),
        repository.server
    )
}

/// Stores the WAL file `name` at `path` after checking it belongs to the archive's cluster;
/// its summary line.
async fn store_file(
    args: &WalPushArgs,
    store: &Store,
    encryption: Option<Keys>,
    path: &Path,
    name: &str,
) -> Result<String, AgentError> {
    let archive = WalArchive::new(store, &args.repository.server);
    let identity = match read_header(path).await? {
        Some(header) => {
            let cluster = ArchiveIdentity {
                system_identifier: header.system_identifier.to_string(),
                wal_segment_size: header.segment_size,
                server_major: server_major(&args.pgdata)?,
            };
            archive.claim(&cluster).await?;
            cluster
        }
        // History and backup history files have no header: the archive knows the cluster,
        // or (a first push after a timeline switch) a segment in pg_wal says which it is.
        None => match archive.identity().await? {
            Some(identity) => identity,
            None => {
                let cluster = identity_from_pg_wal(&args.pgdata).await?;
                archive.claim(&cluster).await?;
                cluster
            }
        },
    };
    let file = WalFile::parse(name, identity.wal_segment_size)
        .ok_or_else(|| WalError::NotWal(name.to_string()))?;
    let options = StreamOptions {
        compression: args.compression,
        level: args
            .compression_level
            .unwrap_or_else(|| StreamOptions::default_wal_level(args.compression)),
        max_chunk_size: u64::MAX,
        encryption,
        // The worker stores several files at once: they, not zstd's workers, share the CPUs.
        threads: if args.ahead_only {
            1
        } else {
            StreamOptions::default_threads()
        },
    };
    // PostgreSQL writes WAL as it goes: every commit before the file's last write (less a
    // second of slack) is in it or an earlier file.
    let covers = file
        .is_wal()
        .then(|| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .flatten()
        .and_then(|m| jiff::Timestamp::try_from(m).ok())
        .and_then(|t| t.checked_sub(jiff::SignedDuration::from_secs(1)).ok());
    let pushed = archive
        .push(path, &file, &identity, covers, &options)
        .await?;
    Ok(match pushed {
        Pushed::Stored { size, stored, .. } => format!(
            "archived {name} ({} stored as {})",
            human_bytes(size),
            human_bytes(stored)
        ),
        Pushed::AlreadyArchived { .. } => format!("{name} was archived already"),
    })
}

/// The long header of a WAL segment file, `None` for files without one.
pub(crate) async fn read_header(path: &Path) -> Result<Option<WalSegmentHeader>, AgentError> {
    read_wal_header(path)
        .await
        .map_err(|source| AgentError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// The cluster as the WAL segments in `<pgdata>/pg_wal` describe it.
async fn identity_from_pg_wal(pgdata: &Path) -> Result<ArchiveIdentity, AgentError> {
    let dir = pgdata.join("pg_wal");
    let entries = std::fs::read_dir(&dir).map_err(|source| AgentError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 24
            && name.bytes().all(|b| b.is_ascii_hexdigit())
            && let Some(header) = read_header(&entry.path()).await?
        {
            return Ok(ArchiveIdentity {
                system_identifier: header.system_identifier.to_string(),
                wal_segment_size: header.segment_size,
                server_major: server_major(pgdata)?,
            });
        }
    }
    Err(AgentError::Invalid(format!(
        "the WAL archive is empty and {} holds no WAL segment to tell which cluster this is",
        dir.display()
    )))
}

/// The major version in `<pgdata>/PG_VERSION`.
fn server_major(pgdata: &Path) -> Result<u32, AgentError> {
    let path = pgdata.join("PG_VERSION");
    let text = std::fs::read_to_string(&path).map_err(|source| AgentError::Io {
        path: format!(
            "{} (run wal-push from the data directory, as archive_command does, or pass --pgdata)",
            path.display()
        ),
        source,
    })?;
    text.trim()
        .parse()
        .map_err(|_| AgentError::Corrupt(format!("{} does not hold a version", path.display())))
}
