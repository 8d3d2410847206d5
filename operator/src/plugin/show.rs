//! What `kubectl pgbackup list` and `status` print (pure): aligned tables of backups and
//! schedules with their recoverability windows, and a restore's phase with its conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::{
    api::{BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    k8s::ANNOTATION_SCHEDULE,
};

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn time(t: Option<&Time>) -> String {
    t.map_or_else(|| "-".into(), |t| t.0.to_string())
}

fn or_dash(text: Option<impl ToString>) -> String {
    text.map_or_else(|| "-".into(), |t| t.to_string())
}

/// Bytes in KiB/MiB/GiB.
fn size(bytes: Option<i64>) -> String {
    let Some(bytes) = bytes else {
        return "-".into();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// The backups of a namespace, oldest first: PostgresBackups and VolumeSnapshotBackups.
pub fn backups(backups: &[PostgresBackup], snapshots: &[VolumeSnapshotBackup]) -> String {
    let mut rows: Vec<(Option<Time>, Vec<String>)> = Vec::new();
    for b in backups {
        let status = b.status.clone().unwrap_or_default();
        let kind = status
            .kind
            .clone()
            .unwrap_or_else(|| format!("{:?}", b.spec.method).to_lowercase());
        rows.push((
            status.completed_at.clone(),
            vec![
                format!("postgresbackup/{}", b.name_any()),
                kind,
                or_dash(status.phase.map(|p| format!("{p:?}"))),
                or_dash(b.annotations().get(ANNOTATION_SCHEDULE)),
                time(status.completed_at.as_ref()),
                time(
                    status
                        .recovery_window
                        .as_ref()
                        .and_then(|w| w.last_recoverability_point.as_ref()),
                ),
                size(status.size),
                size(status.stored_size),
            ],
        ));
    }
    for s in snapshots {
        let status = s.status.clone().unwrap_or_default();
        rows.push((
            status.completed_at.clone(),
            vec![
                format!("volumesnapshotbackup/{}", s.name_any()),
                "snapshot".into(),
                or_dash(status.phase.map(|p| format!("{p:?}"))),
                or_dash(s.annotations().get(ANNOTATION_SCHEDULE)),
                time(status.completed_at.as_ref()),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        ));
    }
    // Not completed (running, failed) last.
    rows.sort_by(|a, b| {
        (a.0.is_none(), a.0.as_ref().map(|t| t.0), &a.1[0]).cmp(&(
            b.0.is_none(),
            b.0.as_ref().map(|t| t.0),
            &b.1[0],
        ))
    });
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    table(
        &[
            "BACKUP",
            "KIND",
            "PHASE",
            "SCHEDULE",
            "COMPLETED",
            "RESTORES UNTIL",
            "SIZE",
            "STORED",
        ],
        &rows,
    )
}

/// The schedules of a namespace with the span of time each can restore to.
pub fn schedules(schedules: &[BackupSchedule]) -> String {
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            let status = s.status.clone().unwrap_or_default();
            let window = status.recovery_window.unwrap_or_default();
            let archiving = status
                .wal_archiving
                .as_ref()
                .and_then(|w| w.last_archived_wal.clone());
            vec![
                format!("backupschedule/{}", s.name_any()),
                s.spec.schedule.clone(),
                or_dash(status.last_successful_backup.map(|b| b.name)),
                time(window.first_recoverability_point.as_ref()),
                time(window.last_recoverability_point.as_ref()),
                or_dash(archiving),
            ]
        })
        .collect();
    table(
        &[
            "SCHEDULE",
            "CRON",
            "LAST BACKUP",
            "RECOVERABLE FROM",
            "RECOVERABLE UNTIL",
            "LAST WAL",
        ],
        &rows,
    )
}

fn conditions(conditions: &[Condition]) -> String {
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    table(&["CONDITION", "STATUS", "REASON", "MESSAGE"], &rows)
}

/// A restore: where it is, what it restored, and its conditions.
pub fn restore(restore: &PointInTimeRestore) -> String {
    let status = restore.status.clone().unwrap_or_default();
    let fields = [
        (
            "Restore",
            format!("pointintimerestore/{}", restore.name_any()),
        ),
        ("Phase", or_dash(status.phase.map(|p| format!("{p:?}")))),
        ("Since", time(status.phase_since.as_ref())),
        ("Target", or_dash(status.recovery_target_description)),
        ("Base backup", or_dash(status.base_backup)),
        ("Into", or_dash(status.restored_stateful_set)),
        ("Connection", or_dash(status.connection)),
        ("Reached LSN", or_dash(status.reached_lsn)),
        (
            "Last transaction",
            time(status.last_transaction_time.as_ref()),
        ),
        ("Started", time(status.started_at.as_ref())),
        ("Completed", time(status.completed_at.as_ref())),
        ("Failure", or_dash(status.failure_reason)),
        ("Message", or_dash(status.message)),
    ];
    let mut out: String = fields
        .iter()
        .map(|(k, v)| format!("{:<17} {v}\n", format!("{k}:")))
        .collect();
    if !status.conditions.is_empty() {
        out.push('\n');
        out.push_str(&conditions(&status.conditions));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(name: &str, status: serde_json::Value) -> PostgresBackup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": name, "annotations": {"pgbackup.io/schedule": "nightly"}},
            "spec": {"method": "physical",
                     "target": {"statefulSet": "pg", "credentialsSecret": {"name": "a"}},
                     "repository": {"s3": {"bucket": "b"}}},
            "status": status,
        }))
        .expect("backup")
    }

    #[test]
    fn backups_are_listed_oldest_first_with_running_ones_last() {
        let listed = backups(
            &[
                backup("b-running", serde_json::json!({"phase": "Running"})),
                backup(
                    "b-new",
                    serde_json::json!({"phase": "Completed", "kind": "incremental",
                                       "completedAt": "2026-12-05T09:00:00Z", "size": 3_145_728, "storedSize": 1000,
                                       "recoveryWindow": {"firstRecoverabilityPoint": "2026-12-05T09:00:00Z",
                                                          "lastRecoverabilityPoint": "2026-12-05T09:14:30Z",
                                                          "provenBy": "walArchive"}}),
                ),
                backup(
                    "b-old",
                    serde_json::json!({"phase": "Completed", "kind": "full",
                                       "completedAt": "2026-12-04T09:00:00Z", "size": 100}),
                ),
            ],
            &[],
        );
        let lines: Vec<&str> = listed.lines().collect();
        assert!(lines[0].starts_with("BACKUP"), "{listed}");
        assert!(lines[1].starts_with("postgresbackup/b-old  "), "{listed}");
        assert!(
            lines[2].contains("incremental")
                && lines[2].contains("3.0 MiB")
                && lines[2].contains("1000 B")
                && lines[2].contains("09:14:30"),
            "{listed}"
        );
        assert!(
            lines[3].starts_with("postgresbackup/b-running") && lines[3].contains("Running"),
            "{listed}"
        );
        // Aligned: every column starts where its header does.
        let at = lines[0].find("PHASE").expect("PHASE");
        assert_eq!(&lines[3][at..at + 7], "Running");
    }

    #[test]
    fn a_restore_shows_its_phase_and_conditions() {
        let restore: PointInTimeRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PointInTimeRestore",
            "metadata": {"name": "r1"},
            "spec": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "a"}},
                     "source": {"backupSchedule": "nightly"}, "recoveryTarget": {"latest": true},
                     "mode": "clone"},
            "status": {"phase": "Restoring", "message": "replaying WAL",
                       "conditions": [{"type": "Progressing", "status": "True", "reason": "Restoring",
                                       "message": "the restore Job runs", "lastTransitionTime": "2026-12-05T09:00:00Z"}]},
        }))
        .expect("restore");
        let shown = super::restore(&restore);
        assert!(shown.contains("Phase:            Restoring"), "{shown}");
        assert!(shown.contains("Message:          replaying WAL"), "{shown}");
        assert!(shown.contains("Progressing  True    Restoring"), "{shown}");
    }
}
