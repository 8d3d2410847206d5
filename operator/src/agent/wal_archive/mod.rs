//! `pgbackup wal-archive`: continuous WAL archiving for a server it does not run on, with
//! no change to the server's image or configuration. `pg_receivewal` streams into a local
//! spool; every completed segment and history file is stored (compressed, its SHA-256 in
//! its key) and the segment being written is stored every `--partial-upload-seconds`, which
//! bounds how much committed work a lost server can take with it. A replication slot that
//! only moves past stored WAL keeps the server from recycling anything not yet in the
//! repository. After any restart, streaming resumes where the repository ends.

mod coverage;
mod metrics;
mod receiver;
mod resume;
mod server;
mod spool;
mod store;
mod waldump;
mod window;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use tokio::sync::watch;

pub use metrics::{ArchiverMetrics, ArchiverReport, ProvenWindow};

use self::{
    coverage::Coverage,
    receiver::Receiver,
    spool::Spool,
    store::{CoverageMarker, PartialState, lag, spool_error},
};
use super::{AgentError, process::PgBin, repository_args::RepositoryArgs};
use crate::{
    api::CompressionAlgorithm,
    postgres::{ConnectionArgs, PgConnection, ServerInfo},
    repository::{
        ArchiveCoverage, ArchiveIdentity, Store, StreamOptions, TimelinePath, WalArchive, WalError,
        WalFile, format_lsn, segno_of,
    },
};

/// How often the spool is looked at.
const TICK: Duration = Duration::from_millis(500);

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
        return server::drop_slot(&client, &args.slot, archive.as_ref()).await;
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
    let mut backoff = Duration::from_secs(1);
    let archiving = async {
        loop {
            let started = Instant::now();
            match archiver.session(&mut shutdown).await {
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
    };
    let window_interval = Duration::from_secs(args.window_interval_seconds.max(1));
    let result = tokio::select! {
        result = archiving => result,
        () = window::watch(&store, &args.repository.server, keys_for_window, &metrics, window_interval) => Ok(()),
    };
    http.abort();
    result?;
    Ok(format!(
        "WAL archiver stopped; {} segments archived in this run",
        metrics.segments_archived()
    ))
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

impl Archiver<'_> {
    /// One connection to the server: resume where the repository ends, then stream and store
    /// until shutdown (`Ok`) or a failure (`Err`).
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        let session = self.prepare().await?;
        self.stream(session, shutdown).await
    }

    /// Connects, checks the archive is this cluster's, stores what an earlier run left in
    /// the spool, and prepares the spool and the slot for streaming from where the
    /// repository ends.
    async fn prepare(&self) -> Result<Session, AgentError> {
        // The server is chosen again at every session: after a failover the archiver
        // follows the new primary (`--pg-server-role primary` with every pod listed).
        let connection = PgConnection::resolve(&self.args.connection)
            .choose_server()
            .await?;
        let client = connection.connect(None).await?;
        let info = ServerInfo::query(&client).await?;
        let env = connection.libpq_env();
        let identity = server::identify(&self.pg_bin, &env).await?;
        let segment_size = info.wal_segment_size;
        let cluster = ArchiveIdentity {
            system_identifier: identity.system_identifier.clone(),
            wal_segment_size: segment_size,
            server_major: info.major(),
        };
        self.archive.claim(&cluster).await?;
        let spool = Spool::open(
            self.args.spool_dir.as_deref(),
            &self.args.repository.server,
            cluster,
        )
        .map_err(|source| AgentError::Io {
            path: "the spool directory".into(),
            source,
        })?;
        let slot = &self.args.slot;
        let restart = server::ensure_slot(&client, slot, &self.archive).await?;
        let mut coverage = Coverage::new(segment_size);
        // The server's history first: what an earlier run left of its timeline's first
        // segment is checked against it.
        let history = match self
            .archive
            .history(identity.timeline, segment_size)
            .await?
        {
            Some(history) => history,
            None => {
                self.store_server_history(&spool, &env, identity.timeline)
                    .await?
            }
        };
        // What an earlier run received but did not store.
        spool::remove_leftovers(&spool.dir).map_err(|source| spool_error(&spool, source))?;
        self.store_complete(&spool, &client, &mut coverage).await?;
        let path = TimelinePath::new(identity.timeline, &history);
        let index = self.archive.index(segment_size).await?;
        let held_from = segno_of(restart, segment_size);
        let removed = self.server_removed.load(Ordering::Relaxed);
        let resume = resume::resume_point(&index, &path, held_from, removed);
        let name = |segno: u64| {
            WalFile::segment(path.timeline_of_segment(segno, segment_size), segno)
                .name(segment_size)
        };
        if let Some((first, last)) = resume.gap {
            tracing::error!(
                "WAL segments {} to {} were removed from the server before they were archived: the archive has a gap there; take a new base backup",
                name(first),
                name(last)
            );
            self.metrics.gaps.inc();
            self.server_removed.store(false, Ordering::Relaxed);
        }
        let next = resume.next;
        if resume.gap.is_none()
            && next > 0
            && index.last_complete(&path).is_some_and(|l| l + 1 >= next)
        {
            coverage.stored(next * segment_size);
        }
        // A partial segment of another position (say, the old timeline's last one) is
        // stored before the spool is prepared for the new position.
        self.store_stale_partial(&spool, &path, next).await?;
        let timeline = path.timeline_of_segment(next, segment_size);
        spool::seed(&spool, timeline, next).map_err(|source| spool_error(&spool, source))?;
        if next * segment_size > restart {
            server::advance_slot(&client, slot, next * segment_size).await?;
        }
        tracing::info!(
            slot = %slot,
            "streaming from {} (timeline {timeline}) into {}",
            WalFile::segment(timeline, next).name(segment_size),
            spool.dir.display()
        );
        Ok(Session {
            client,
            env,
            spool,
            path,
            coverage,
        })
    }

    /// Streams and stores until shutdown or a failure.
    async fn stream(
        &self,
        session: Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let Session {
            client,
            env,
            spool,
            path,
            mut coverage,
        } = session;
        let segment_size = spool.segment_size();
        let mut receiver = Receiver::start(&self.pg_bin, &spool.dir, &env)?;
        self.metrics.set_ready(None);
        let mut partial = PartialState::default();
        let mut marker = CoverageMarker::default();
        let interval = Duration::from_secs(self.args.partial_upload_seconds);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    receiver.stop().await;
                    self.store_complete(&spool, &client, &mut coverage).await?;
                    self.store_partial(&spool, &mut partial, &coverage).await?;
                    return Ok(());
                }
                why = receiver.exited() => {
                    // Store what arrived before it stopped; then reconnect.
                    if why.contains("has already been removed") {
                        self.server_removed.store(true, Ordering::Relaxed);
                    }
                    self.store_complete(&spool, &client, &mut coverage).await?;
                    self.store_partial(&spool, &mut partial, &coverage).await?;
                    return Err(AgentError::Interrupted(why));
                }
                _ = tokio::time::sleep(TICK) => {}
            }
            let (at, lsn) = server::wal_position(&client).await?;
            coverage.record(at, lsn);
            let state = self.store_complete(&spool, &client, &mut coverage).await?;
            if !interval.is_zero() && partial.last_attempt.is_none_or(|t| t.elapsed() >= interval) {
                partial.last_attempt = Some(Instant::now());
                self.store_partial(&spool, &mut partial, &coverage).await?;
            }
            self.metrics.set_lag(lag(&state, &partial));
            let until = coverage.stored_until().max(partial.stored_until);
            if let Some(covers) = until.and_then(|until| coverage.covers(until)) {
                self.metrics.covered(covers);
            }
            if let Some(until) = until
                && let Some(covers) = coverage.covers(until)
                && marker.is_due(covers, interval)
            {
                let timeline =
                    path.timeline_of_segment(segno_of(until - 1, segment_size), segment_size);
                self.archive
                    .set_coverage(&ArchiveCoverage {
                        timeline,
                        lsn: format_lsn(until),
                        covers,
                    })
                    .await?;
                marker.written(covers);
            }
        }
    }
}

/// A connection prepared for streaming.
struct Session {
    client: tokio_postgres::Client,
    env: Vec<(&'static str, String)>,
    spool: Spool,
    path: TimelinePath,
    coverage: Coverage,
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
