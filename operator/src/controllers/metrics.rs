//! The operator's Prometheus metrics, labelled by namespace and object name.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::http::{Probe, Readiness, encode_metrics};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The operator's metrics, and whether it is ready.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    last_success: Family<Labels, FloatGauge>,
    duration: Family<Labels, FloatGauge>,
    size: Family<Labels, Gauge>,
    wal_lag: Family<Labels, FloatGauge>,
    window_start: Family<Labels, FloatGauge>,
    window_end: Family<Labels, FloatGauge>,
    backup_reach: Family<Labels, FloatGauge>,
    /// The backups each schedule last reported a reach for, by (namespace, schedule).
    reported_reach: Mutex<HashMap<(String, String), Vec<String>>>,
    reconcile_errors: Family<Labels, Counter>,
    reconciles: Family<Labels, Counter>,
    leader: Gauge,
    readiness: Readiness,
}

fn labels(namespace: &str, name: &str) -> Labels {
    vec![
        ("namespace".into(), namespace.into()),
        ("name".into(), name.into()),
    ]
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Arc<Self> {
        let mut metrics = Self {
            registry: Registry::default(),
            last_success: Family::default(),
            duration: Family::default(),
            size: Family::default(),
            wal_lag: Family::default(),
            window_start: Family::default(),
            window_end: Family::default(),
            backup_reach: Family::default(),
            reported_reach: Mutex::default(),
            reconcile_errors: Family::default(),
            reconciles: Family::default(),
            leader: Gauge::default(),
            readiness: Readiness::starting(),
        };
        let r = &mut metrics.registry;
        r.register(
            "pgbackup_backup_last_success_timestamp_seconds",
            "Unix time the newest completed backup of a database ended (name: the schedule, or the backup object for a manual one)",
            metrics.last_success.clone(),
        );
        r.register(
            "pgbackup_backup_duration_seconds",
            "How long the newest completed backup took",
            metrics.duration.clone(),
        );
        r.register(
            "pgbackup_backup_size_bytes",
            "Bytes the newest completed backup stores in the repository",
            metrics.size.clone(),
        );
        r.register(
            "pgbackup_wal_archive_lag_seconds",
            "Age of the oldest WAL the schedule's archiver received and has not stored yet",
            metrics.wal_lag.clone(),
        );
        r.register(
            "pgbackup_recovery_window_start_timestamp_seconds",
            "Unix time of the earliest moment a schedule's repository can restore to (status.recoveryWindow)",
            metrics.window_start.clone(),
        );
        r.register(
            "pgbackup_recovery_window_end_timestamp_seconds",
            "Unix time of the latest moment a schedule's repository can restore to; alert on time() minus this",
            metrics.window_end.clone(),
        );
        r.register(
            "pgbackup_backup_recoverable_until_timestamp_seconds",
            "Unix time of the latest moment a schedule's physical backup restores to (its status.recoveryWindow; name: the PostgresBackup)",
            metrics.backup_reach.clone(),
        );
        r.register(
            "pgbackup_reconcile_errors",
            "Reconciles that failed and were retried (kind in the label)",
            metrics.reconcile_errors.clone(),
        );
        r.register(
            "pgbackup_reconciles",
            "Reconciles run (kind in the label)",
            metrics.reconciles.clone(),
        );
        r.register(
            "pgbackup_leader",
            "1 while this replica holds the leader Lease and reconciles",
            metrics.leader.clone(),
        );
        Arc::new(metrics)
    }

    /// Records a completed backup of the series `name` (schedule or object).
    pub fn backup_completed(
        &self,
        namespace: &str,
        name: &str,
        end: f64,
        seconds: f64,
        bytes: i64,
    ) {
        let labels = labels(namespace, name);
        let previous = self.last_success.get_or_create(&labels).get();
        if end < previous {
            return;
        }
        self.last_success.get_or_create(&labels).set(end);
        self.duration.get_or_create(&labels).set(seconds);
        self.size.get_or_create(&labels).set(bytes);
    }

    /// Records a schedule's WAL archiving lag.
    pub fn wal_lag(&self, namespace: &str, name: &str, seconds: f64) {
        self.wal_lag
            .get_or_create(&labels(namespace, name))
            .set(seconds);
    }

    /// Forgets a schedule's WAL lag (archiving off or the schedule gone).
    pub fn forget_wal_lag(&self, namespace: &str, name: &str) {
        self.wal_lag.remove(&labels(namespace, name));
    }

    /// Records a schedule's recovery window (Unix times), or forgets it (`None`).
    pub fn recovery_window(&self, namespace: &str, name: &str, window: Option<(f64, f64)>) {
        let labels = labels(namespace, name);
        match window {
            Some((start, end)) => {
                self.window_start.get_or_create(&labels).set(start);
                self.window_end.get_or_create(&labels).set(end);
            }
            None => {
                self.window_start.remove(&labels);
                self.window_end.remove(&labels);
            }
        }
    }

    /// Records how far each physical backup of a schedule reaches (Unix times, by backup
    /// name), and forgets the schedule's backups that are gone.
    pub fn backup_reach(&self, namespace: &str, schedule: &str, reach: &[(String, f64)]) {
        for (name, until) in reach {
            self.backup_reach
                .get_or_create(&labels(namespace, name))
                .set(*until);
        }
        let names: Vec<String> = reach.iter().map(|(name, _)| name.clone()).collect();
        let Ok(mut reported) = self.reported_reach.lock() else {
            return;
        };
        let key = (namespace.to_string(), schedule.to_string());
        let before = if names.is_empty() {
            reported.remove(&key)
        } else {
            reported.insert(key, names.clone())
        };
        for gone in before.unwrap_or_default() {
            if !names.contains(&gone) {
                self.backup_reach.remove(&labels(namespace, &gone));
            }
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_error(&self, kind: &str, namespace: &str, name: &str) {
        let mut labels = labels(namespace, name);
        labels.push(("kind".into(), kind.into()));
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
    }

    /// Failed reconciles of an object so far (for tests and logs).
    pub fn reconcile_errors(&self, kind: &str, namespace: &str, name: &str) -> u64 {
        let mut labels = labels(namespace, name);
        labels.push(("kind".into(), kind.into()));
        self.reconcile_errors.get_or_create(&labels).get()
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks the operator ready or not, and why.
    pub fn set_ready(&self, why_not: Option<String>) {
        self.readiness.set(why_not);
    }
}

impl Probe for Metrics {
    fn ready(&self) -> Result<(), String> {
        self.readiness.get()
    }

    fn metrics(&self) -> String {
        encode_metrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_namespace_and_name() {
        let metrics = Metrics::new();
        metrics.backup_completed("shop", "nightly", 1_790_000_000.0, 42.0, 1234);
        metrics.backup_completed("shop", "nightly", 1_700_000_000.0, 1.0, 1);
        metrics.wal_lag("shop", "nightly", 3.5);
        metrics.reconcile_error("PostgresBackup", "shop", "nightly-1");
        let text = metrics.metrics();
        assert!(
            text.contains("pgbackup_backup_size_bytes{namespace=\"shop\",name=\"nightly\"} 1234"),
            "{text}"
        );
        assert!(
            text.contains(
                "pgbackup_backup_duration_seconds{namespace=\"shop\",name=\"nightly\"} 42"
            ),
            "an older backup does not replace the newest: {text}"
        );
        assert!(
            text.contains(
                "pgbackup_wal_archive_lag_seconds{namespace=\"shop\",name=\"nightly\"} 3.5"
            ),
            "{text}"
        );
        assert!(text.contains("pgbackup_reconcile_errors_total{namespace=\"shop\",name=\"nightly-1\",kind=\"PostgresBackup\"} 1"), "{text}");
    }

    #[test]
    fn a_backups_reach_goes_with_the_backup() {
        let metrics = Metrics::new();
        let reach = |name: &str, until: f64| (name.to_string(), until);
        metrics.backup_reach("shop", "nightly", &[reach("b1", 10.0), reach("b2", 20.0)]);
        metrics.backup_reach("shop", "other", &[reach("o1", 5.0)]);
        let line = |name: &str| {
            format!(
                "pgbackup_backup_recoverable_until_timestamp_seconds{{namespace=\"shop\",name=\"{name}\"}}"
            )
        };
        let text = metrics.metrics();
        assert!(text.contains(&format!("{} 20.0", line("b2"))), "{text}");
        // Retention dropped b1.
        metrics.backup_reach("shop", "nightly", &[reach("b2", 30.0)]);
        let text = metrics.metrics();
        assert!(!text.contains(&line("b1")), "{text}");
        assert!(text.contains(&format!("{} 30.0", line("b2"))), "{text}");
        assert!(
            text.contains(&line("o1")),
            "another schedule's stay: {text}"
        );
        metrics.backup_reach("shop", "nightly", &[]);
        assert!(!metrics.metrics().contains(&line("b2")));
    }
}
