//! What the WAL archiver exposes on `/metrics` and `/readyz`.

use std::sync::{Mutex, atomic::AtomicU64};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::http::{Probe, Readiness, encode_metrics};

/// The archiver's metrics and readiness.
#[derive(Debug)]
pub struct ArchiverMetrics {
    registry: Registry,
    /// Complete segments stored.
    pub segments: Counter,
    /// Partial segments stored.
    pub partials: Counter,
    /// History files stored.
    pub histories: Counter,
    /// Failed uploads and lost connections.
    pub failures: Counter,
    /// Files in the spool that were not the cluster's WAL, moved aside unstored.
    pub rejected: Counter,
    /// Times WAL was found removed from the server before it was archived.
    pub gaps: Counter,
    /// Unix time of the last stored WAL.
    pub last_archived_time: Gauge<f64, AtomicU64>,
    /// End of the last complete segment stored, as a byte position.
    pub last_archived_lsn: Gauge,
    /// Complete segments received and not yet stored.
    pub backlog: Gauge,
    /// Age of the oldest received WAL not yet stored, in seconds.
    pub lag: Gauge<f64, AtomicU64>,
    /// Seconds per upload.
    pub upload_seconds: Histogram,
    readiness: Readiness,
    last_wal: Mutex<Option<String>>,
    covered_until: Mutex<Option<jiff::Timestamp>>,
    /// Unix times of the recoverability window last read from the repository.
    pub recoverable_from: Gauge<f64, AtomicU64>,
    /// See `recoverable_from`.
    pub recoverable_until: Gauge<f64, AtomicU64>,
    window: Mutex<Option<ProvenWindow>>,
}

/// The recoverability window of the newest timeline, as the repository shows it: from the
/// end of the first base backup after which the archived WAL has no gap, to the moment up
/// to which it holds every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvenWindow {
    /// `None` when no base backup is followed by unbroken WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<jiff::Timestamp>,
    /// See [`ProvenWindow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<jiff::Timestamp>,
    /// The timeline it is of.
    pub timeline: u32,
    /// When the repository was read.
    pub checked_at: jiff::Timestamp,
}

impl ArchiverMetrics {
    /// Registers the metrics.
    pub fn new() -> Self {
        let mut metrics = Self {
            segments: Counter::default(),
            partials: Counter::default(),
            histories: Counter::default(),
            failures: Counter::default(),
            gaps: Counter::default(),
            rejected: Counter::default(),
            last_archived_time: Gauge::default(),
            last_archived_lsn: Gauge::default(),
            backlog: Gauge::default(),
            lag: Gauge::default(),
            upload_seconds: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            readiness: Readiness::starting(),
            last_wal: Mutex::new(None),
            covered_until: Mutex::new(None),
            recoverable_from: Gauge::default(),
            recoverable_until: Gauge::default(),
            window: Mutex::new(None),
            registry: Registry::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "pgbackup_wal_segments_archived",
            "Complete WAL segments stored in the repository",
            metrics.segments.clone(),
        );
        registry.register(
            "pgbackup_wal_partial_uploads",
            "Uploads of the segment being written (bounded RPO)",
            metrics.partials.clone(),
        );
        registry.register(
            "pgbackup_wal_history_files_archived",
            "Timeline history files stored",
            metrics.histories.clone(),
        );
        registry.register(
            "pgbackup_wal_archive_failures",
            "Failed uploads, lost connections and restarts of streaming",
            metrics.failures.clone(),
        );
        registry.register(
            "pgbackup_wal_archive_gaps",
            "Times WAL was removed from the server before it was archived (take a new base backup)",
            metrics.gaps.clone(),
        );
        registry.register(
            "pgbackup_wal_files_rejected",
            "Files in the spool that were not the cluster's WAL at the place their name says, moved aside and never stored",
            metrics.rejected.clone(),
        );
        registry.register(
            "pgbackup_wal_last_archived_timestamp_seconds",
            "Unix time when WAL was last stored",
            metrics.last_archived_time.clone(),
        );
        registry.register(
            "pgbackup_wal_last_archived_lsn",
            "End of the last complete segment stored, as a byte position in the WAL",
            metrics.last_archived_lsn.clone(),
        );
        registry.register(
            "pgbackup_wal_archive_backlog_segments",
            "Complete segments received but not yet stored",
            metrics.backlog.clone(),
        );
        registry.register(
            "pgbackup_wal_archive_lag_seconds",
            "Age of the oldest received WAL not yet stored (0 when everything is stored)",
            metrics.lag.clone(),
        );
        registry.register(
            "pgbackup_recoverable_from_timestamp_seconds",
            "Unix time of the earliest moment a restore can reach through unbroken archived WAL (0: none)",
            metrics.recoverable_from.clone(),
        );
        registry.register(
            "pgbackup_recoverable_until_timestamp_seconds",
            "Unix time up to which the repository holds every commit (0: unknown)",
            metrics.recoverable_until.clone(),
        );
        registry.register(
            "pgbackup_wal_upload_duration_seconds",
            "Time to store one WAL file",
            metrics.upload_seconds.clone(),
        );
        metrics
    }

    /// Marks the archiver ready (streaming and storing) or not, and why.
    pub fn set_ready(&self, why_not: Option<String>) {
        self.readiness.set(why_not);
    }

    /// Records the stored complete segment `name` ending at `end_lsn`.
    pub fn archived(&self, name: &str, end_lsn: u64) {
        self.segments.inc();
        self.set_last_wal(name);
        self.last_archived_lsn
            .set(i64::try_from(end_lsn).unwrap_or(i64::MAX));
        self.stored_now();
    }

    /// Records a stored copy of the segment being written.
    pub fn partial_stored(&self, name: &str) {
        self.partials.inc();
        self.set_last_wal(&format!("{name}.partial"));
        self.stored_now();
    }

    fn set_last_wal(&self, name: &str) {
        if let Ok(mut last) = self.last_wal.lock() {
            *last = Some(name.to_string());
        }
    }

    /// Records up to when every commit is stored.
    pub fn covered(&self, until: jiff::Timestamp) {
        if let Ok(mut covered) = self.covered_until.lock() {
            *covered = Some(until);
        }
    }

    /// Records the window read from the repository.
    pub fn set_window(&self, window: ProvenWindow) {
        let seconds =
            |t: Option<jiff::Timestamp>| t.map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
        self.recoverable_from.set(seconds(window.from));
        self.recoverable_until.set(seconds(window.until));
        if let Ok(mut kept) = self.window.lock() {
            *kept = Some(window);
        }
    }

    /// Records that WAL was stored now.
    pub fn stored_now(&self) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.last_archived_time.set(now);
    }

    /// Records how long an upload took.
    pub fn upload_took(&self, seconds: f64) {
        self.upload_seconds.observe(seconds);
    }

    /// Counter value, for tests and logs.
    pub fn segments_archived(&self) -> u64 {
        self.segments.get()
    }

    /// Sets a float gauge.
    pub fn set_lag(&self, seconds: f64) {
        self.lag.set(seconds);
    }

    /// Sets the backlog.
    pub fn set_backlog(&self, segments: usize) {
        self.backlog.set(segments as i64);
    }

    /// Counts a failure.
    pub fn failed(&self) {
        self.failures.inc();
    }

    /// The last archived position (as stored in the gauge).
    pub fn last_lsn(&self) -> u64 {
        u64::try_from(self.last_archived_lsn.get()).unwrap_or(0)
    }
}

impl Default for ArchiverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe for ArchiverMetrics {
    fn ready(&self) -> Result<(), String> {
        self.readiness.get()
    }

    fn metrics(&self) -> String {
        encode_metrics(&self.registry)
    }

    fn status(&self) -> Option<String> {
        let last_time = self.last_archived_time.get();
        let report = ArchiverReport {
            ready: self.ready().is_ok(),
            not_ready_reason: self.ready().err(),
            last_archived_wal: self.last_wal.lock().ok().and_then(|w| w.clone()),
            last_archived_time: (last_time > 0.0)
                .then(|| jiff::Timestamp::from_millisecond((last_time * 1000.0) as i64).ok())
                .flatten(),
            covered_until: self.covered_until.lock().ok().and_then(|c| *c),
            lag_seconds: self.lag.get(),
            backlog_segments: u64::try_from(self.backlog.get()).unwrap_or(0),
            window: self.window.lock().ok().and_then(|w| *w),
        };
        serde_json::to_string(&report).ok()
    }
}

/// What the archiver answers on `/status`; the operator reads it into the schedule's status.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiverReport {
    /// Streaming and storing.
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// The last WAL file stored (`.partial` for the segment being written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// When WAL was last stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<jiff::Timestamp>,
    /// Every commit up to this moment (by the server's clock) is stored: where the
    /// recoverability window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_until: Option<jiff::Timestamp>,
    /// Age of the oldest received WAL not yet stored.
    pub lag_seconds: f64,
    /// Complete segments received and not yet stored.
    pub backlog_segments: u64,
    /// The recoverability window last read from the repository (WAL continuity checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<ProvenWindow>,
}
