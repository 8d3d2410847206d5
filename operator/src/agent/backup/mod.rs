//! `pgbackup backup`: a logical or physical backup streamed into the repository. Checks the
//! database and the repository before writing anything; writes the manifest last; on any
//! failure removes what it wrote, so nothing half-made is presented as a backup.

mod args;
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
mod store;
mod tar_stream;

pub use args::BackupArgs;
pub use report::{BackupReport, TERMINATION_MESSAGE_LIMIT};
pub(crate) use store::{scratch_dir, store_tool_output};

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use serde::Serialize;

use super::{
    AgentError,
    process::PgBin,
    progress::{ProgressReporter, human_bytes},
};
use crate::{
    api::BackupMethod,
    postgres::{PgConnection, ServerInfo},
    repository::{
        BackupDir, BackupKind, Catalog, MANIFEST_FILE, Manifest, ObjectStore, Progress, Store,
        StreamOptions,
    },
};

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
    let (algorithm, level) = args.check()?;
    let mut stop = super::process::termination("stopping: removing what this backup stored")?;

    // Database first, then repository: both must answer before anything is written.
    let connection = PgConnection::resolve(&args.connection)
        .choose_server()
        .await?;
    let client = connection.connect(None).await?;
    let server = ServerInfo::query(&client).await?;
    let role = if server.in_recovery {
        "standby"
    } else {
        "primary"
    };
    let source = format!("{} ({role})", connection.args.pg_host);
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
        backup_id: store::unique_id(&catalog, begin_time),
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
            max_chunk_size: args.max_chunk_size(),
            encryption: keys.clone(),
            threads: args.compression_threads,
        },
        progress,
        pg_bin: PgBin(args.pg_bin.clone()),
        args,
    };
    let (manifest, manifest_sha256, full_because) =
        store::stored_or_removed(&context, begin_time, &mut stop).await?;
    Ok(summary(
        &context,
        begin_time,
        manifest,
        manifest_sha256,
        full_because,
        source,
    ))
}

/// The summary of a stored backup, logged and returned.
fn summary(
    context: &BackupContext<'_>,
    begin_time: Timestamp,
    manifest: Manifest,
    manifest_sha256: String,
    full_because: Option<String>,
    source: String,
) -> BackupSummary {
    let dir = &context.dir;
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
    BackupSummary {
        backup_id: dir.backup_id.clone(),
        location: format!("{}/{}", context.store.describe(), dir.key(MANIFEST_FILE)),
        manifest_sha256,
        manifest,
        size,
        stored_size,
        full_because,
        source,
    }
}
