//! `pgbackup wal-fetch`: PostgreSQL's `restore_command`. Fetches one WAL file, checked
//! against the SHA-256 in its key, and at the same time the next segments into a prefetch
//! directory beside it, so that recovery does not wait on the object store's latency for
//! every segment. Exits 1 when the file is not in the archive (PostgreSQL then ends or
//! continues recovery as it should) and with a code above 125 for any other failure, which
//! makes PostgreSQL stop recovery instead of taking the failure for the end of the WAL.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{
    AgentError,
    repository_args::RepositoryArgs,
    wal_fetch_ahead::{self, Ahead},
};

pub use super::wal_fetch_ahead::wait_for_prefetching;
use crate::repository::{
    ArchiveIdentity, ObjectStore, Store, StoreError, WalArchive, WalError, WalFile, WalFileKind,
    WalObject,
};

/// Directory beside the requested file where segments are prefetched.
pub const PREFETCH_DIR: &str = ".pgbackup-prefetch";

/// The archive identity kept in the prefetch directory.
const IDENTITY_CACHE: &str = "archive.json";

/// Exit code for "not in the archive".
pub const EXIT_NOT_FOUND: u8 = 1;

/// Exit code for any other failure: above 125, so that PostgreSQL aborts recovery.
pub const EXIT_FATAL: u8 = 255;

/// Options of `pgbackup wal-fetch`.
#[derive(Debug, Clone, Args)]
pub struct WalFetchArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,

    /// Name of the WAL file wanted (`%f` in `restore_command`).
    pub name: String,

    /// Where to write it (`%p` in `restore_command`).
    pub destination: PathBuf,

    /// Segments to fetch ahead, in parallel, into `.pgbackup-prefetch/` beside the
    /// destination, by a process of its own once the requested file is in place. 0 turns
    /// prefetching off.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prefetch: u32,

    /// Only fetch the segments after NAME into the prefetch directory (what the
    /// prefetching process runs).
    #[arg(long, hide = true)]
    pub prefetch_only: bool,
}

/// Fetches the file; returns a summary line. Prefetching runs in a process of its own
/// ([`wal_fetch_ahead`]) that outlives this one: recovery gets the segment it asked for as
/// soon as it is in place, never after a batch of others.
pub async fn run(args: &WalFetchArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    let archive =
        WalArchive::new(&store, &args.repository.server).with_keys(args.repository.keys()?);
    let dir = args
        .destination
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let prefetch_dir = dir.join(PREFETCH_DIR);
    let segment_size = segment_size(&archive, &store, &prefetch_dir, args).await?;
    let file = WalFile::parse(&args.name, segment_size)
        .ok_or_else(|| WalError::NotWal(args.name.clone()))?;
    let ahead = Ahead {
        dir: &prefetch_dir,
        timeline: file.timeline,
        from: file.segno + 1,
        count: u64::from(args.prefetch),
        segment_size,
    };
    if args.prefetch_only {
        ahead.fetch(&archive).await;
        return Ok(format!("prefetched after {}", args.name));
    }
    if file.kind != WalFileKind::Segment || args.prefetch == 0 {
        fetch(&archive, &file, segment_size, &args.destination).await?;
        return Ok(format!("fetched {}", args.name));
    }
    discard_passed(&prefetch_dir, &file, segment_size);
    let prefetched = prefetch_dir.join(&args.name);
    let summary = if prefetched.exists() {
        move_into_place(&prefetched, &args.destination)?;
        format!("fetched {} (prefetched)", args.name)
    } else {
        let object = fetch(&archive, &file, segment_size, &args.destination).await?;
        format!(
            "fetched {}{}",
            args.name,
            if object.file.kind == WalFileKind::Partial {
                " (from its partial copy: the WAL received until it was stored)"
            } else {
                ""
            }
        )
    };
    if !ahead.all_here() {
        wal_fetch_ahead::start(&prefetch_dir);
    }
    Ok(summary)
}

/// The archive's segment size. With prefetching it is kept beside the prefetched segments
/// (an archive's identity never changes), so that serving a prefetched segment costs no
/// request to the store.
async fn segment_size(
    archive: &WalArchive<'_, Store>,
    store: &Store,
    prefetch_dir: &Path,
    args: &WalFetchArgs,
) -> Result<u64, AgentError> {
    let cached = prefetch_dir.join(IDENTITY_CACHE);
    if args.prefetch > 0
        && let Some(identity) = std::fs::read(&cached)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ArchiveIdentity>(&bytes).ok())
    {
        return Ok(identity.wal_segment_size);
    }
    // No archive at all is a wrong --server or repository, not the end of the WAL.
    let identity = archive.identity().await?.ok_or_else(|| {
        AgentError::Invalid(format!(
            "{} holds no WAL archive of server {}",
            store.describe(),
            args.repository.server
        ))
    })?;
    if args.prefetch > 0
        && std::fs::create_dir_all(prefetch_dir).is_ok()
        && let Ok(bytes) = serde_json::to_vec(&identity)
    {
        // Best effort: without the cache the next call asks the store again.
        let _ = std::fs::write(&cached, bytes);
    }
    Ok(identity.wal_segment_size)
}

/// Finds and downloads a file. A partial copy can be replaced by a newer one (or the
/// complete segment) between listing and download: then it is looked up again.
async fn fetch<S: ObjectStore>(
    archive: &WalArchive<'_, S>,
    file: &WalFile,
    segment_size: u64,
    destination: &Path,
) -> Result<WalObject, WalError> {
    let object = archive.find(file, segment_size).await?;
    match archive.download(&object, destination).await {
        Err(WalError::Store(StoreError::NotFound { .. })) => {
            let object = archive.find(file, segment_size).await?;
            archive.download(&object, destination).await?;
            Ok(object)
        }
        result => result.map(|_| object),
    }
}

/// Moves a prefetched file to where PostgreSQL wants it (copies across filesystems).
fn move_into_place(from: &Path, to: &Path) -> Result<(), AgentError> {
    let io_err = |source| AgentError::Io {
        path: to.display().to_string(),
        source,
    };
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_err)?;
        let _ = std::fs::remove_file(from);
    }
    Ok(())
}

/// Removes prefetched segments recovery has gone past, on any timeline.
fn discard_passed(dir: &Path, requested: &WalFile, segment_size: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let passed = WalFile::parse(&name, segment_size).is_some_and(|f| f.segno < requested.segno);
        // A download in progress is left to the prefetching process.
        let stale_download = name.starts_with(".pgbackup-fetch-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 600);
        if passed || stale_download {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
