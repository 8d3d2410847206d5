//! The PointInTimeRestore `kubectl pgbackup restore` creates (pure): from a schedule, a
//! backup or a snapshot, into a clone or in place, to the moment asked for.

use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{
    BackupSchedule, DatabaseTarget, PointInTimeRestore, PointInTimeRestoreSpec, PostgresBackup,
    RecoveryTarget, RestoreMode, RestoreSource, VolumeSnapshotBackup,
};

/// What a restore starts from, as the user named it.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `backupschedule/NAME` (or `schedule/NAME`).
    Schedule(Box<BackupSchedule>),
    /// `postgresbackup/NAME` (or `backup/NAME`).
    Backup(Box<PostgresBackup>),
    /// `volumesnapshotbackup/NAME` (or `snapshot/NAME`).
    Snapshot(Box<VolumeSnapshotBackup>),
}

/// `KIND/NAME` of a source, its kind in the short forms kubectl users type.
pub fn source_ref(text: &str) -> Result<(&'static str, &str), String> {
    let (kind, name) = text.split_once('/').ok_or_else(|| {
        format!(
            "{text:?}: say backupschedule/NAME, postgresbackup/NAME or volumesnapshotbackup/NAME"
        )
    })?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "backupschedule" | "backupschedules" | "schedule" => "backupschedule",
        "postgresbackup" | "postgresbackups" | "backup" => "postgresbackup",
        "volumesnapshotbackup" | "volumesnapshotbackups" | "snapshot" => "volumesnapshotbackup",
        other => return Err(format!("{other:?} is not a kind to restore from")),
    };
    if name.is_empty() {
        return Err(format!("{text:?}: the name is missing"));
    }
    Ok((kind, name))
}

impl Source {
    fn target(&self) -> DatabaseTarget {
        match self {
            Self::Schedule(s) => s.spec.template.target.clone(),
            Self::Backup(b) => b.spec.target.clone(),
            Self::Snapshot(s) => s.spec.target.clone(),
        }
    }

    fn restore_source(&self) -> RestoreSource {
        let mut source = RestoreSource {
            postgres_backup: None,
            volume_snapshot_backup: None,
            backup_schedule: None,
            copy: None,
            allow_other_cluster: false,
        };
        match self {
            Self::Schedule(s) => source.backup_schedule = Some(s.name_any()),
            Self::Backup(b) => source.postgres_backup = Some(b.name_any()),
            Self::Snapshot(s) => source.volume_snapshot_backup = Some(s.name_any()),
        }
        source
    }

    /// When the moment lies outside what the source can restore (as its status knows it):
    /// why, in words.
    pub fn outside(&self, target: &RecoveryTarget) -> Option<String> {
        let Self::Schedule(schedule) = self else {
            return None;
        };
        let time = target.time.as_ref()?.0;
        let window = schedule.status.as_ref()?.recovery_window.as_ref()?;
        let first = window.first_recoverability_point.as_ref().map(|t| t.0);
        let last = window.last_recoverability_point.as_ref().map(|t| t.0);
        let shown = |t: Option<Timestamp>| t.map_or_else(|| "?".into(), |t| t.to_string());
        let outside = first.is_some_and(|f| time < f) || last.is_some_and(|l| time > l);
        outside.then(|| {
            format!(
                "{time} is outside what backupschedule/{} can restore: {} to {}",
                schedule.name_any(),
                shown(first),
                shown(last)
            )
        })
    }
}

/// The restore object: `name` in the source's namespace.
pub fn restore_object(
    source: &Source,
    name: &str,
    target: RecoveryTarget,
    in_place: bool,
) -> PointInTimeRestore {
    let spec = PointInTimeRestoreSpec {
        target: source.target(),
        source: source.restore_source(),
        recovery_target: target,
        mode: if in_place {
            RestoreMode::InPlace
        } else {
            RestoreMode::Clone
        },
        confirm: in_place,
        placement: Default::default(),
        resources: None,
        replicas: Default::default(),
        previous_volumes: Default::default(),
        wait_timeout: "15m".into(),
        logical: None,
    };
    let mut restore = PointInTimeRestore::new(name, spec);
    restore.metadata.namespace = match source {
        Source::Schedule(s) => s.namespace(),
        Source::Backup(b) => b.namespace(),
        Source::Snapshot(s) => s.namespace(),
    };
    restore
}

/// The default name of a restore of `source` started at `now`: `<statefulSet>-restore-<UTC
/// time>`, cut to what a StatefulSet's pods can be named after.
pub fn default_name(source: &Source, now: Timestamp) -> String {
    let stamp = now.strftime("%Y%m%d%H%M%S").to_string();
    let head: String = source.target().stateful_set.chars().take(20).collect();
    format!("{head}-restore-{stamp}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(window: serde_json::Value) -> Source {
        Source::Schedule(Box::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
                "metadata": {"name": "nightly", "namespace": "shop"},
                "spec": {"schedule": "0 3 * * *", "method": "physical",
                         "template": {"target": {"statefulSet": "orders-db", "credentialsSecret": {"name": "a"}},
                                      "repository": {"s3": {"bucket": "b"}}}},
                "status": {"recoveryWindow": window},
            }))
            .expect("schedule"),
        ))
    }

    #[test]
    fn a_restore_from_a_schedule_targets_its_statefulset_as_a_clone_unless_in_place() {
        let source = schedule(serde_json::json!({}));
        let target = RecoveryTarget {
            latest: Some(true),
            ..RecoveryTarget::default()
        };
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        let name = default_name(&source, now);
        assert_eq!(name, "orders-db-restore-20261205100000");
        let clone = restore_object(&source, &name, target.clone(), false);
        assert_eq!(clone.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(clone.spec.mode, RestoreMode::Clone);
        assert!(!clone.spec.confirm);
        assert_eq!(
            clone.spec.source.backup_schedule.as_deref(),
            Some("nightly")
        );
        assert_eq!(clone.spec.target.stateful_set, "orders-db");
        let in_place = restore_object(&source, &name, target, true);
        assert_eq!(
            (in_place.spec.mode, in_place.spec.confirm),
            (RestoreMode::InPlace, true)
        );
    }

    #[test]
    fn a_moment_outside_the_schedules_window_is_named_with_the_window() {
        let source = schedule(serde_json::json!({
            "firstRecoverabilityPoint": "2026-12-04T03:00:00Z",
            "lastRecoverabilityPoint": "2026-12-05T09:59:00Z"}));
        let at = |t: &str| RecoveryTarget {
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                t.parse().expect("t"),
            )),
            ..RecoveryTarget::default()
        };
        assert_eq!(source.outside(&at("2026-12-05T09:14:00Z")), None);
        let early = source
            .outside(&at("2026-12-01T00:00:00Z"))
            .expect("outside");
        assert!(
            early.contains("2026-12-04T03:00:00Z to 2026-12-05T09:59:00Z"),
            "{early}"
        );
        assert!(source.outside(&at("2026-12-05T09:59:30Z")).is_some());
    }

    #[test]
    fn sources_are_named_as_kubectl_users_do() {
        assert_eq!(
            source_ref("schedule/nightly"),
            Ok(("backupschedule", "nightly"))
        );
        assert_eq!(
            source_ref("PostgresBackup/b1"),
            Ok(("postgresbackup", "b1"))
        );
        assert!(source_ref("nightly").is_err());
        assert!(source_ref("pod/x").is_err());
    }
}
