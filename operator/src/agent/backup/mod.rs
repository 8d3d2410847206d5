//! `pgbackup backup`: a logical or physical backup streamed into the repository. Checks the
//! database and the repository before writing anything; writes the manifest last; on any
//! failure removes what it wrote, so nothing half-made is presented as a backup.

mod configuration;
mod counts;
mod dump_directory;
mod dump_watch;
mod incremental;
mod logical;
mod manifest_tap;
mod physical;
mod report;
mod server_compressed;
mod tar_stream;

pub use report::{BackupReport, TERMINATION_MESSAGE_LIMIT};

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    AgentError,
    process::PgBin,
    process::Tool,
    progress::{ProgressReporter, human_bytes},
    repository_args::RepositoryArgs,
};
use crate::{
    api::{BackupMethod, CheckpointMode, CompressOn, CompressionAlgorithm, DumpFormat},
    postgres::{ConnectionArgs, PgConnection, ServerInfo},
    repository::{
        BackupDir, BackupKind, Catalog, FORMAT_VERSION, MANIFEST_FILE, MAX_PARTS, Manifest,
        NewObject, ObjectEntry, ObjectStore, Progress, Store, StreamOptions, new_backup_id,
        store_object,
    },
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

/// What a finished backup prints on stdout (one JSON object), for people and for the
/// operator.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    /// The backup id.
    pub backup_id: String,
    /// Where the manifest is.
    pub location: String,
    /// SHA-256 of the manifest.
    pub manifest_sha256: String,
    /// The manifest.
    #[serde(flatten)]
    pub manifest: Manifest,
    /// Bytes read.
    pub size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// Why a full backup was taken where an incremental one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
    /// The server read from and its role, e.g. `pg-1.pg.shop.svc (standby)`.
    pub source: String,
}

/// Everything a backup method needs.
pub(crate) struct BackupContext<'a> {
    pub store: &'a Store,
    /// The repository's backups of the server when the backup started.
    pub catalog: &'a Catalog,
    pub dir: BackupDir,
    pub connection: &'a PgConnection,
    pub client: &'a tokio_postgres::Client,
    pub server: &'a ServerInfo,
    pub options: StreamOptions,
    pub progress: Arc<Progress>,
    pub pg_bin: PgBin,
    pub args: &'a BackupArgs,
}

/// What a method adds to the manifest.
#[derive(Debug, Default)]
pub(crate) struct MethodResult {
    pub objects: Vec<crate::repository::ObjectEntry>,
    pub chain: Vec<String>,
    pub full_because: Option<String>,
    pub databases: Vec<String>,
    pub timeline: Option<u32>,
    pub begin_lsn: Option<String>,
    pub end_lsn: Option<String>,
    pub begin_wal: Option<String>,
    pub end_wal: Option<String>,
    pub row_counts: Vec<crate::postgres::TableRows>,
}

/// Runs a backup.
pub async fn run(args: &BackupArgs) -> Result<BackupSummary, AgentError> {
    let algorithm = args.compression;
    let level = args
        .compression_level
        .unwrap_or_else(|| StreamOptions::default_level(algorithm));
    check_level(algorithm, level)?;
    if args.incremental && args.method != BackupMethod::Physical {
        return Err(AgentError::Invalid(
            "--incremental is for physical backups (--method physical)".into(),
        ));
    }
    if args.method == BackupMethod::Logical && args.jobs > 1 && args.format != DumpFormat::Directory
    {
        return Err(AgentError::Invalid(
            "--jobs above 1 needs --format directory (pg_dump dumps in parallel only into a directory)".into(),
        ));
    }
    if let Some(text) = &args.full_after {
        crate::repository::parse_duration(text)
            .map_err(|e| AgentError::Invalid(format!("--full-after: {e}")))?;
    }
    let mut stop = super::process::termination("stopping: removing what this backup stored")?;

    // Database first, then repository: both must answer before anything is written.
    let connection = PgConnection::resolve(&args.connection)
        .choose_server()
        .await?;
    let client = connection.connect(None).await?;
    let server = ServerInfo::query(&client).await?;
    let source = format!(
        "{} ({})",
        connection.args.pg_host,
        if server.in_recovery {
            "standby"
        } else {
            "primary"
        }
    );
    let store = args.repository.open().await?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    let keys = args.repository.keys()?;

    let kind = match args.method {
        BackupMethod::Logical => BackupKind::Logical,
        BackupMethod::Physical => BackupKind::Physical,
    };
    let begin_time = Timestamp::now();
    let dir = BackupDir {
        server: args.repository.server.clone(),
        kind,
        backup_id: unique_id(&catalog, begin_time),
    };
    tracing::info!(
        backup_id = %dir.backup_id,
        method = kind.as_str(),
        server_version = %server.version,
        "starting {} backup of {} into {}",
        kind.as_str(),
        source,
        store.describe()
    );
    let progress = Arc::new(Progress::default());
    let _reporter = ProgressReporter::start(
        format!("backup {}", dir.backup_id),
        progress.clone(),
        Duration::from_secs(args.progress_interval.max(1)),
    );
    let context = BackupContext {
        store: &store,
        catalog: &catalog,
        dir: dir.clone(),
        connection: &connection,
        client: &client,
        server: &server,
        options: StreamOptions {
            compression: algorithm,
            level,
            max_chunk_size: max_chunk_size(args),
            encryption: keys.clone(),
            threads: args.compression_threads,
        },
        progress,
        pg_bin: PgBin(args.pg_bin.clone()),
        args,
    };
    // Until the summary is out, a backup stopped by a signal (its object deleted, its pod
    // evicted) is not kept: what it stored goes, and a retried Job makes a new one. So a
    // backup is either reported or gone, never left behind unknown to its object.
    let written = tokio::select! {
        written = store_backup(&context, begin_time) => written,
        _ = stop.changed() => Err(AgentError::Interrupted(format!(
            "stopped by a signal before backup {} was complete; what it stored is removed",
            dir.backup_id
        ))),
    };
    // Stopped just as it finished: not reported, so not kept either.
    let written = match written {
        Ok(_) if *stop.borrow() => Err(AgentError::Interrupted(format!(
            "stopped by a signal before backup {} was reported; what it stored is removed",
            dir.backup_id
        ))),
        other => other,
    };
    let (manifest, manifest_sha256, full_because) = match written {
        Ok(written) => written,
        Err(err) => {
            remove_partial(&store, &dir).await;
            return Err(err);
        }
    };

    let (size, stored_size) = (manifest.size(), manifest.stored_size());
    let seconds =
        (manifest.end_time.as_millisecond() - begin_time.as_millisecond()).max(1) as f64 / 1000.0;
    tracing::info!(
        backup_id = %dir.backup_id,
        size,
        stored_size,
        "backup {} complete: {} read, {} stored (ratio {:.2}), {:.1} s, {}/s",
        dir.backup_id,
        human_bytes(size),
        human_bytes(stored_size),
        size as f64 / stored_size.max(1) as f64,
        seconds,
        human_bytes((size as f64 / seconds) as u64)
    );
    Ok(BackupSummary {
        backup_id: dir.backup_id.clone(),
        location: format!("{}/{}", store.describe(), dir.key(MANIFEST_FILE)),
        manifest_sha256,
        manifest,
        size,
        stored_size,
        full_because,
        source,
    })
}

/// Runs the method and stores the manifest; the manifest, its SHA-256, and why a full
/// backup was taken where an incremental one was asked for.
async fn store_backup(
    context: &BackupContext<'_>,
    begin_time: Timestamp,
) -> Result<(Manifest, String, Option<String>), AgentError> {
    let (args, dir, server) = (context.args, &context.dir, context.server);
    let (algorithm, level) = (context.options.compression, context.options.level);
    let keys = &context.options.encryption;
    let result = match args.method {
        BackupMethod::Logical => logical::run(context).await,
        BackupMethod::Physical => physical::run(context).await,
    };
    let mut result = result?;
    result.objects.extend(configuration::store(context).await?);

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: dir.kind,
        backup_id: dir.backup_id.clone(),
        server: dir.server.clone(),
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        system_identifier: server.system_identifier.clone(),
        timeline: result.timeline,
        begin_lsn: result.begin_lsn,
        end_lsn: result.end_lsn,
        begin_wal: result.begin_wal,
        end_wal: result.end_wal,
        begin_time,
        end_time: Timestamp::now(),
        compression: algorithm,
        compression_level: level,
        encrypted: keys.is_some(),
        tool_version: format!("pgbackup {}", env!("CARGO_PKG_VERSION")),
        databases: result.databases,
        chain: result.chain,
        objects: result.objects,
        snapshot: None,
        row_counts: result.row_counts,
        mac: None,
    };
    let mut manifest = manifest;
    if let Some(keys) = keys {
        manifest.seal(keys);
    }
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| AgentError::Invalid(format!("manifest: {e}")))?;
    let manifest_sha256 = crate::repository::hex_digest(&Sha256::digest(&bytes));
    context
        .store
        .put_bytes(&dir.key(MANIFEST_FILE), bytes)
        .await?;
    Ok((manifest, manifest_sha256, result.full_because))
}

/// Runs a PostgreSQL tool and streams its stdout into the repository as one object. The
/// tool's exit status decides: a tool that died half-way leaves a short stdout that would
/// otherwise have been stored "successfully". Returns the object and the tool's stderr.
/// `wrap` may put a reader around stdout that looks at the stream on its way.
pub(crate) async fn store_tool_output<R>(
    ctx: &BackupContext<'_>,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    object: NewObject,
    wrap: impl FnOnce(tokio::process::ChildStdout) -> R,
) -> Result<(ObjectEntry, Vec<String>), AgentError>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let mut tool = Tool::spawn(&ctx.pg_bin.program(program), args, env, false)?;
    let stdout = tool
        .take_stdout()
        .map(wrap)
        .ok_or_else(|| AgentError::Invalid(format!("{program} has no stdout")))?;
    // Storing ends (and drops stdout, so a still-running tool stops) before we wait.
    let stored = store_object(
        ctx.store,
        &ctx.dir,
        object,
        stdout,
        &ctx.options,
        &ctx.progress,
    )
    .await;
    let finished = tool.finish().await;
    let object = stored?;
    Ok((object, finished?))
}

/// A new directory in `--scratch-dir` (default: the temporary directory), removed when
/// dropped.
pub(super) fn scratch_dir(
    args: &BackupArgs,
    prefix: &str,
) -> Result<tempfile::TempDir, AgentError> {
    let parent = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .map_err(|source| AgentError::Io {
            path: parent.display().to_string(),
            source,
        })
}

/// The largest stored object: the configured maximum, but never more than an S3 multipart
/// upload can hold with the configured part size.
fn max_chunk_size(args: &BackupArgs) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let multipart_limit = u64::from(args.repository.s3_part_size_mib) * MIB * MAX_PARTS as u64;
    (args.max_object_mib.max(1) * MIB).min(multipart_limit)
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

/// The id for a backup starting now; a later second when the repository already has one of
/// that second (ids stay sortable and unique).
fn unique_id(catalog: &Catalog, at: Timestamp) -> String {
    let taken = |id: &str| catalog.backups.iter().any(|b| b.dir.backup_id == id);
    let mut time = at;
    loop {
        let id = new_backup_id(time);
        if !taken(&id) {
            return id;
        }
        time = time
            .saturating_add(jiff::SignedDuration::from_secs(1))
            .unwrap_or(time);
    }
}

/// Removes the objects of a failed backup (best effort: an incomplete backup has no
/// manifest, so it is never taken for a complete one anyway).
async fn remove_partial(store: &Store, dir: &BackupDir) {
    store.abort_unfinished().await;
    match store.list(&dir.prefix()).await {
        Ok(objects) => {
            for object in objects {
                if let Err(err) = store.delete(&object.key).await {
                    tracing::warn!(key = %object.key, error = %err, "could not remove an object of the failed backup");
                }
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not list the objects of the failed backup to remove them")
        }
    }
}
