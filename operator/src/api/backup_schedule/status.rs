//! The observed state of a BackupSchedule: its phase, last backups, copies, the recovery
//! window and the WAL archiver.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::Condition;

/// Observed state of a BackupSchedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Active`, `Suspended`, or `Failed` when the spec cannot be carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SchedulePhase>,

    /// `Ready` (CronJob and archiver in place), `WALArchiving`, `LastBackupSucceeded`,
    /// `Verified` (the last scheduled restore test).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Name of the CronJob that triggers the backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job_name: Option<String>,

    /// When a backup was last scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// The newest backup object of this schedule that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupReference>,

    /// The newest backup object of this schedule that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_backup: Option<BackupReference>,

    /// The span of time the database can be restored to from this schedule's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_window: Option<RecoveryWindow>,

    /// State of continuous WAL archiving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archiving: Option<WalArchivingStatus>,

    /// The last scheduled restore test (`verify.schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<crate::api::VerificationStatus>,

    /// The second copies (`spec.copies`): each one's newest run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyStatus>,

    /// A human-readable account of the state or of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of one second copy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    /// The copy's name (`spec.copies[].name`).
    pub name: String,
    /// Its CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job_name: Option<String>,
    /// The newest copy Job (`kubectl logs job/<name>` shows what it copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Whether the newest finished run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// When the newest successful run finished: the copy holds what the repository held
    /// when it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy_time: Option<Time>,
    /// What the newest finished run said: its summary, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SchedulePhase {
    /// Backups run on schedule.
    Active,
    /// `spec.suspend` is set.
    Suspended,
    /// The spec cannot be carried out; see `message` and the `Ready` condition.
    Failed,
}

/// A backup object created by a schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    /// Name of the PostgresBackup or VolumeSnapshotBackup.
    pub name: String,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// The span of time a database can be restored to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryWindow {
    /// The earliest moment that can be restored: the end of the oldest base backup after
    /// which the archived WAL has no gap (with WAL archiving), or of the oldest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<Time>,
    /// The latest moment that can be restored: up to where the archive holds every commit
    /// (with WAL archiving), or the end of the newest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recoverability_point: Option<Time>,
    /// What the window rests on: `walArchive` (the repository's backups and WAL were read
    /// and the WAL found unbroken from the first point on, at `checkedAt`) or `backups`
    /// (the times the backups ended; any moment between two of them needs the WAL
    /// archive); on a PostgresBackup also `backup` (its own end alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_by: Option<String>,
    /// When the repository was last read for `walArchive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
}

/// State of the WAL archiver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalArchivingStatus {
    /// Replication slot the archiver streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_name: Option<String>,
    /// Name of the Deployment running the archiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_name: Option<String>,
    /// The newest WAL segment stored in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// When that segment was stored. (How far behind archiving is, second by second, is
    /// the metric `pgbackup_wal_archive_lag_seconds`; the `WALArchiving` condition says
    /// `Lagging` beyond 5 minutes.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<Time>,
}
