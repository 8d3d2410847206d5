//! Storing what the spool holds: complete segments and history files (then moving the
//! slot past them), the segment being written every `--partial-upload-seconds`, and the
//! record of up to when the archive holds every commit.

use std::time::{Duration, Instant, SystemTime};

use super::{
    Archiver,
    coverage::Coverage,
    server, spool,
    spool::{Spool, SpoolState},
    waldump,
};
use crate::{
    agent::AgentError,
    repository::{HistoryEntry, TimelinePath, WalError, WalFile, WalFileKind},
};

impl Archiver<'_> {
    /// The spool's state.
    pub(super) fn scan_spool(&self, spool: &Spool) -> Result<SpoolState, AgentError> {
        spool::scan(&spool.dir, spool.segment_size()).map_err(|source| spool_error(spool, source))
    }

    /// Stores the complete files in the spool, oldest first; removes each from the spool and
    /// moves the slot past each segment once it is stored.
    pub(super) async fn store_complete(
        &self,
        spool: &Spool,
        client: &tokio_postgres::Client,
        coverage: &mut Coverage,
    ) -> Result<SpoolState, AgentError> {
        let segment_size = spool.segment_size();
        let state = self.scan_spool(spool)?;
        let segments = |s: &SpoolState| {
            s.complete
                .iter()
                .filter(|f| f.file.kind == WalFileKind::Segment)
                .count()
        };
        self.metrics.set_backlog(segments(&state));
        for spooled in &state.complete {
            let started = Instant::now();
            let end = (spooled.file.segno + 1) * segment_size;
            let covers = (spooled.file.kind == WalFileKind::Segment)
                .then(|| coverage.covers(end))
                .flatten();
            self.push(spool, &spooled.path, &spooled.path, &spooled.file, covers)
                .await?;
            self.metrics.upload_took(started.elapsed().as_secs_f64());
            let name = spooled.file.name(segment_size);
            if spooled.file.kind == WalFileKind::Segment {
                coverage.stored(end);
                server::advance_slot(client, &self.args.slot, end).await?;
                self.metrics.archived(&name, end);
                tracing::info!(segment = %name, "archived {name}");
            } else {
                self.metrics.histories.inc();
                self.metrics.stored_now();
                tracing::info!("archived {name}");
            }
            std::fs::remove_file(&spooled.path).map_err(|source| AgentError::Io {
                path: spooled.path.display().to_string(),
                source,
            })?;
        }
        Ok(state)
    }

    /// Stores `path` (the spool's `spooled`, or a copy of it) as `file`. A file that is not
    /// the cluster's WAL at the place its name says is never stored: `spooled` is moved out
    /// of the spool and the error names both.
    async fn push(
        &self,
        spool: &Spool,
        spooled: &std::path::Path,
        path: &std::path::Path,
        file: &WalFile,
        covers: Option<jiff::Timestamp>,
    ) -> Result<(), AgentError> {
        match self
            .archive
            .push(path, file, &spool.cluster, covers, &self.options)
            .await
        {
            Ok(_) => Ok(()),
            Err(WalError::Foreign { reason, .. }) => {
                self.metrics.rejected.inc();
                let to = spool
                    .set_aside(spooled)
                    .map_err(|source| spool_error(spool, source))?;
                Err(AgentError::Corrupt(format!(
                    "{} is not WAL of cluster {} at the place its name says ({reason}): it was not stored, and was moved to {}",
                    spooled.display(),
                    spool.cluster.system_identifier,
                    to.display()
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Stores the segment being written, if it changed since it was last stored. The file
    /// may be renamed under us when its segment completes: nothing to do then.
    pub(super) async fn store_partial(
        &self,
        spool: &Spool,
        state: &mut PartialState,
        coverage: &Coverage,
    ) -> Result<(), AgentError> {
        match self.try_store_partial(spool, state, coverage).await {
            Err(err) if is_not_found(&err) => Ok(()),
            other => other,
        }
    }

    /// Stores a `.partial` file of another position than `next` before the spool is
    /// seeded (which removes it).
    pub(super) async fn store_stale_partial(
        &self,
        spool: &Spool,
        path: &TimelinePath,
        next: u64,
    ) -> Result<(), AgentError> {
        let segment_size = spool.segment_size();
        let state = self.scan_spool(spool)?;
        let Some(partial) = state.partial else {
            return Ok(());
        };
        let wanted = (path.timeline_of_segment(next, segment_size), next);
        if (partial.file.timeline, partial.file.segno) == wanted
            || crate::agent::wal_push::read_header(&partial.path)
                .await?
                .is_none()
        {
            return Ok(());
        }
        self.push(spool, &partial.path, &partial.path, &partial.file, None)
            .await?;
        tracing::info!("archived {}", partial.file.name(segment_size));
        Ok(())
    }

    async fn try_store_partial(
        &self,
        spool: &Spool,
        state: &mut PartialState,
        coverage: &Coverage,
    ) -> Result<(), AgentError> {
        let segment_size = spool.segment_size();
        let spooled = self.scan_spool(spool)?;
        let Some(partial) = spooled.partial else {
            return Ok(());
        };
        let seen = (partial.file, partial.modified);
        if state.stored == Some(seen) {
            state.dirty_since = None;
            return Ok(());
        }
        // A seeded file nothing has been written into yet holds no WAL.
        if crate::agent::wal_push::read_header(&partial.path)
            .await?
            .is_none()
        {
            return Ok(());
        }
        state.dirty_since.get_or_insert(Instant::now());
        let started = Instant::now();
        // A copy under the segment's own name, that pg_waldump can read and that no longer
        // changes: what is checked is what is stored.
        let copy_dir = tempfile::Builder::new()
            .prefix(".pgbackup-partial-")
            .tempdir_in(&spool.dir)
            .map_err(|source| spool_error(spool, source))?;
        let segment_name =
            WalFile::segment(partial.file.timeline, partial.file.segno).name(segment_size);
        let copy = copy_dir.path().join(&segment_name);
        tokio::fs::copy(&partial.path, &copy)
            .await
            .map_err(|source| AgentError::Io {
                path: partial.path.display().to_string(),
                source,
            })?;
        let valid_end = waldump::valid_end(&self.pg_bin, copy_dir.path(), &segment_name).await;
        let covers = valid_end.and_then(|end| coverage.covers(end));
        self.push(spool, &partial.path, &copy, &partial.file, covers)
            .await?;
        self.metrics.upload_took(started.elapsed().as_secs_f64());
        self.metrics.partial_stored(&segment_name);
        state.stored = Some(seen);
        state.stored_until = valid_end;
        state.dirty_since = None;
        tracing::debug!("stored {}", partial.file.name(segment_size));
        Ok(())
    }

    /// Fetches the history of the server's timeline from the server and stores it, for a
    /// server that switched timeline before it was archived.
    pub(super) async fn store_server_history(
        &self,
        spool: &Spool,
        env: &[(&str, String)],
        timeline: u32,
    ) -> Result<Vec<HistoryEntry>, AgentError> {
        let (name, content, history) =
            server::timeline_history(&self.pg_bin, env, timeline).await?;
        let path = spool.dir.join(&name);
        std::fs::write(&path, content).map_err(|source| AgentError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file = WalFile::history(timeline);
        self.push(spool, &path, &path, &file, None).await?;
        let _ = std::fs::remove_file(&path);
        Ok(history)
    }
}

/// An I/O error in the spool.
pub(super) fn spool_error(spool: &Spool, source: std::io::Error) -> AgentError {
    AgentError::Io {
        path: spool.dir.display().to_string(),
        source,
    }
}

/// When the archive's coverage record was last written, and what it said.
#[derive(Debug, Default)]
pub(super) struct CoverageMarker {
    last: Option<(jiff::Timestamp, Instant)>,
}

impl CoverageMarker {
    /// Whether to write `covers` now: it says more than the last record, and the last one
    /// is at least `interval` (10 s without partial uploads) old.
    pub(super) fn is_due(&self, covers: jiff::Timestamp, interval: Duration) -> bool {
        let every = if interval.is_zero() {
            Duration::from_secs(10)
        } else {
            interval
        };
        self.last
            .is_none_or(|(said, at)| covers > said && at.elapsed() >= every)
    }

    pub(super) fn written(&mut self, covers: jiff::Timestamp) {
        self.last = Some((covers, Instant::now()));
    }
}

/// What was last done with the segment being written.
#[derive(Debug, Default)]
pub(super) struct PartialState {
    /// The file and modification time last stored.
    pub(super) stored: Option<(WalFile, Option<SystemTime>)>,
    /// How far the stored copy holds valid WAL.
    pub(super) stored_until: Option<u64>,
    /// When a change not yet stored was first seen.
    pub(super) dirty_since: Option<Instant>,
    /// When storing it was last considered.
    pub(super) last_attempt: Option<Instant>,
}

/// A file that went away between listing and reading.
fn is_not_found(err: &AgentError) -> bool {
    let io = match err {
        AgentError::Io { source, .. } | AgentError::Wal(WalError::Io { source, .. }) => source,
        _ => return false,
    };
    io.kind() == std::io::ErrorKind::NotFound
}

/// Age of the oldest received WAL that is not stored yet.
pub(super) fn lag(state: &SpoolState, partial: &PartialState) -> f64 {
    let oldest_complete = state
        .complete
        .iter()
        .filter_map(|f| f.modified)
        .min()
        .and_then(|m| m.elapsed().ok())
        .map(|d| d.as_secs_f64());
    let partial_age = partial.dirty_since.map(|t| t.elapsed().as_secs_f64());
    oldest_complete
        .into_iter()
        .chain(partial_age)
        .fold(0.0, f64::max)
}
