//! `pgbackup wal-archive`: continuous WAL archiving for a server it does not run on, with
//! no change to the server's image or configuration. `pg_receivewal` streams into a local
//! spool; every completed segment and history file is stored (compressed, its SHA-256 in
//! its key) and the segment being written is stored every `--partial-upload-seconds`, which
//! bounds how much committed work a lost server can take with it. A replication slot that
//! only moves past stored WAL keeps the server from recycling anything not yet in the
//! repository. After any restart, streaming resumes where the repository ends.
//! Here: the command and its retries; one session (connect, resume, stream) is [`session`]'s,
//! storing what the spool holds is [`store`]'s.

mod coverage;
mod metrics;
mod receiver;
mod resume;
mod server;
mod session;
mod spool;
mod store;
mod waldump;
mod window;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use clap::Args;
use tokio::sync::watch;

pub use metrics::{ArchiverMetrics, ArchiverReport, ProvenWindow};

use super::{AgentError, process::PgBin, repository_args::RepositoryArgs};
use crate::{
    api::CompressionAlgorithm,
    postgres::{ConnectionArgs, PgConnection},
    repository::{Store, StreamOptions, WalArchive, WalError},
};

/// Longest wait between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Options of `pgbackup wal-archive`.
#[derive(Debug, Clone, Args)]
pub struct WalArchiveArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Physical replication slot that holds the WAL not yet stored. Created when missing.
    /// The role needs the REPLICATION attribute.
    #[arg(long, env = "PGBACKUP_SLOT", default_value = "pgbackup_archiver", value_parser = parse_slot)]
    pub slot: String,

    /// Drop the replication slot and exit, once archiving ends for good: a slot left
    /// behind keeps the server's WAL forever. Run it only after the archiver has stopped
    /// (the operator waits for its pod to go). Only a slot the archive records as the
    /// archiver's (or named `pgbackup_…`) is dropped; another is left as it is.
    #[arg(long)]
    pub drop_slot: bool,

    /// Seconds between uploads of the segment being written (0: only complete segments).
    /// The most committed work a lost server takes with it is about this long.
    #[arg(long, env = "PGBACKUP_PARTIAL_UPLOAD_SECONDS", default_value_t = 60)]
    pub partial_upload_seconds: u64,

    /// Seconds between reads of the recoverability window from the repository (its
    /// backups and the continuity of its WAL), published on `/status` and `/metrics`.
    #[arg(long, env = "PGBACKUP_WINDOW_INTERVAL_SECONDS", default_value_t = 60)]
    pub window_interval_seconds: u64,

    /// Local directory WAL is received into before it is stored. Default: a directory
    /// named after the server and the cluster's system identifier in the system's
    /// temporary directory. Whatever is in it is checked to be the cluster's WAL before it
    /// is stored; a file that is not is moved to its `rejected/` directory.
    #[arg(long, env = "PGBACKUP_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Compression of stored WAL.
    #[arg(long, value_enum, default_value_t = CompressionAlgorithm::Zstd)]
    pub compression: CompressionAlgorithm,

    /// Compression level. Default: the algorithm's fastest (zstd 1), since every segment
    /// waits for it.
    #[arg(long)]
    pub compression_level: Option<i32>,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoint.
    #[arg(
        long,
        env = "PGBACKUP_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: String,

    /// Directory of PostgreSQL's programs (pg_receivewal, psql). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// Everything a streaming session needs.
struct Archiver<'a> {
    args: &'a WalArchiveArgs,
    archive: WalArchive<'a, Store>,
    pg_bin: PgBin,
    options: StreamOptions,
    metrics: Arc<ArchiverMetrics>,
    /// The server said the WAL to resume from is gone.
    server_removed: AtomicBool,
}

/// Runs until SIGTERM or SIGINT, or an error that retrying cannot fix.
pub async fn run(args: &WalArchiveArgs) -> Result<String, AgentError> {
    if args.drop_slot {
        return drop_slot(args).await;
    }
    let store = args.repository.open().await?;
    let keys = args.repository.keys()?;
    let keys_for_window = keys.clone();
    let metrics = Arc::new(ArchiverMetrics::new());
    let listener = crate::http::bind(&args.listen)
        .await
        .map_err(|source| AgentError::Io {
            path: format!("listening on {}", args.listen),
            source,
        })?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!("health and metrics on http://{address}/ (healthz, readyz, metrics)");
    }
    let http = tokio::spawn(crate::http::serve(listener, metrics.clone()));
    let archiver = Archiver {
        args,
        archive: WalArchive::new(&store, &args.repository.server).with_keys(keys.clone()),
        pg_bin: PgBin(args.pg_bin.clone()),
        options: StreamOptions {
            compression: args.compression,
            level: args
                .compression_level
                .unwrap_or_else(|| StreamOptions::default_wal_level(args.compression)),
            max_chunk_size: u64::MAX,
            encryption: keys,
            // One thread: the archiver runs for good beside the database, and segments come
            // one at a time; extra zstd threads only added memory (30 → 109 MiB under load).
            threads: 1,
        },
        metrics: metrics.clone(),
        server_removed: AtomicBool::new(false),
    };
    let mut shutdown = super::process::termination("stopping: storing what has been received")?;
    let window_interval = Duration::from_secs(args.window_interval_seconds.max(1));
    let result = tokio::select! {
        result = archiver.keep_archiving(&mut shutdown) => result,
        () = window::watch(&store, &args.repository.server, keys_for_window, &metrics, window_interval) => Ok(()),
    };
    http.abort();
    result?;
    Ok(format!(
        "WAL archiver stopped; {} segments archived in this run",
        metrics.segments_archived()
    ))
}

/// `--drop-slot`: lets the archiver's replication slot go, once archiving ends for good.
async fn drop_slot(args: &WalArchiveArgs) -> Result<String, AgentError> {
    let connection = PgConnection::resolve(&args.connection)
        .choose_server()
        .await?;
    let client = connection.connect(None).await?;
    // The record of the archiver's slots is read if the repository can be: a slot
    // must be let go even when the repository is gone.
    let store = match args.repository.open().await {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!(error = %err, "the repository cannot be opened: only a slot named pgbackup_… is taken for the archiver's");
            None
        }
    };
    let archive = store
        .as_ref()
        .map(|store| WalArchive::new(store, &args.repository.server));
    server::drop_slot(&client, &args.slot, archive.as_ref()).await
}

impl Archiver<'_> {
    /// Sessions one after the other until shutdown, or an error that retrying cannot fix;
    /// the wait between them doubles up to [`MAX_BACKOFF`] and starts again after a session
    /// that lasted.
    async fn keep_archiving(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        let metrics = &self.metrics;
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            match self.session(shutdown).await {
                Ok(()) => break Ok(()),
                Err(err) if is_permanent(&err) => break Err(err),
                Err(err) => {
                    let message = super::error_chain(&err);
                    tracing::warn!("archiving interrupted, retrying in {backoff:?}: {message}");
                    metrics.failed();
                    metrics.set_ready(Some(message));
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_secs(1);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break Ok(()),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Errors that the same configuration will hit again: stop rather than retry.
fn is_permanent(err: &AgentError) -> bool {
    matches!(
        err,
        AgentError::Wal(WalError::OtherCluster { .. } | WalError::Conflict { .. })
            | AgentError::Invalid(_)
            | AgentError::Location(_)
    )
}

fn parse_slot(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a replication slot name: lower-case letters, digits and _, at most 63"
        ))
    }
}
