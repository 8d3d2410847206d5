//! One streaming session of the archiver: connect to the server (the primary again after
//! a failover), check the archive is this cluster's, store what an earlier run left in the
//! spool, find where the repository ends and resume there, then stream and store until
//! shutdown or a failure.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    Archiver,
    coverage::Coverage,
    receiver::Receiver,
    resume, server,
    server::Identity,
    spool::{self, Spool},
    store::{CoverageMarker, PartialState, lag, spool_error},
};
use crate::{
    agent::AgentError,
    postgres::{PgConnection, ServerInfo},
    repository::{ArchiveCoverage, ArchiveIdentity, TimelinePath, WalFile, format_lsn, segno_of},
};

/// How often the spool is looked at.
const TICK: Duration = Duration::from_millis(500);
/// How long a receiver may go on taking WAL after the session's own connection failed.
const RECEIVER_GRACE: Duration = Duration::from_secs(10);

impl Archiver<'_> {
    /// One connection to the server: resume where the repository ends, then stream and store
    /// until shutdown (`Ok`) or a failure (`Err`).
    pub(super) async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let session = self.prepare().await?;
        self.stream(session, shutdown).await
    }

    /// Connects, checks the archive is this cluster's, stores what an earlier run left in
    /// the spool, and prepares the spool and the slot for streaming from where the
    /// repository ends.
    async fn prepare(&self) -> Result<Session, AgentError> {
        let Connected {
            client,
            env,
            identity,
            spool,
            restart,
            segment_size,
        } = self.connect().await?;
        let slot = &self.args.slot;
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
        let next = self
            .resume_from(&path, restart, segment_size, &mut coverage)
            .await?;
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

    /// Connects to the server, claims the archive for its cluster, and opens the spool and
    /// the slot (the slot's restart LSN comes back).
    async fn connect(&self) -> Result<Connected, AgentError> {
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
        Ok(Connected {
            client,
            env,
            identity,
            spool,
            restart,
            segment_size,
        })
    }

    /// The segment streaming resumes at: where the repository ends, unless the server
    /// removed WAL before it was archived (a gap, said loudly) or holds none that old.
    async fn resume_from(
        &self,
        path: &TimelinePath,
        restart: u64,
        segment_size: u64,
        coverage: &mut Coverage,
    ) -> Result<u64, AgentError> {
        let index = self.archive.index(segment_size).await?;
        let held_from = segno_of(restart, segment_size);
        let removed = self.server_removed.load(Ordering::Relaxed);
        let resume = resume::resume_point(&index, path, held_from, removed);
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
            && index.last_complete(path).is_some_and(|l| l + 1 >= next)
        {
            coverage.stored(next * segment_size);
        }
        Ok(next)
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
            let ticked: Result<(), AgentError> = async {
                let (at, lsn) = server::wal_position(&client).await?;
                coverage.record(at, lsn);
                let state = self.store_complete(&spool, &client, &mut coverage).await?;
                if !interval.is_zero()
                    && partial.last_attempt.is_none_or(|t| t.elapsed() >= interval)
                {
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
                Ok(())
            }
            .await;
            if let Err(err) = ticked {
                // Often the server going away (a shutdown before a failover): what its WAL
                // sender still sends lands in the spool, which the next session stores
                // before it resumes, instead of a gap where a killed receiver left it.
                receiver.finish(RECEIVER_GRACE).await;
                return Err(err);
            }
        }
    }
}

/// The server connected to, its archive claimed, the spool and the slot open.
struct Connected {
    client: tokio_postgres::Client,
    env: Vec<(&'static str, String)>,
    identity: Identity,
    spool: Spool,
    /// The slot's restart LSN.
    restart: u64,
    segment_size: u64,
}

/// A connection prepared for streaming.
struct Session {
    client: tokio_postgres::Client,
    env: Vec<(&'static str, String)>,
    spool: Spool,
    path: TimelinePath,
    coverage: Coverage,
}
