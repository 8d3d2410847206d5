//! `BackupSchedule`: the protection policy of one database — scheduled backups through a
//! CronJob, continuous WAL archiving, retention and restore tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Condition, DURATION_PATTERN, DatabaseTarget, DeletionPolicy, JobOptions, LogicalOptions,
    PhysicalOptions, Repository, VolumeSnapshotOptions,
};

/// Pattern of a CronJob schedule: five fields, or one of the `@` macros.
pub const CRON_PATTERN: &str =
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$";

/// Backups on a schedule, continuous WAL archiving and retention for one database. Every
/// scheduled backup is a PostgresBackup or VolumeSnapshotBackup object with its own status.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "pgbackup.io",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    status = "BackupScheduleStatus",
    shortname = "pgbs",
    category = "pgbackup",
    doc = "Scheduled backups, WAL archiving and retention for a PostgreSQL StatefulSet.",
    derive = "PartialEq",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.template.target.statefulSet"
    ),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastSuccessfulBackup.time"
    ),
    printcolumn(
        name = "Recoverable Until",
        type_ = "string",
        json_path = ".status.recoveryWindow.lastRecoverabilityPoint",
        description = "The latest moment the repository restores to"
    ),
    printcolumn(
        name = "Recoverable From",
        type_ = "string",
        json_path = ".status.recoveryWindow.firstRecoverabilityPoint",
        description = "The earliest moment the repository restores to",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.method == 'volumeSnapshot' || has(self.template.repository)").message("logical and physical backups need template.repository"),
    validation = Rule::new("!has(self.template.logical) || self.method == 'logical'").message("template.logical needs method: logical"),
    validation = Rule::new("!has(self.template.physical) || self.method == 'physical'").message("template.physical needs method: physical"),
    validation = Rule::new("!has(self.template.volumeSnapshot) || self.method == 'volumeSnapshot'").message("template.volumeSnapshot needs method: volumeSnapshot"),
    validation = Rule::new("!has(self.walArchiving) || !self.walArchiving.enabled || has(self.template.repository)").message("WAL archiving needs template.repository"),
    validation = Rule::new("!has(self.copies) || size(self.copies) == 0 || self.method != 'volumeSnapshot'").message("copies need logical or physical backups in template.repository"),
    validation = Rule::new("!has(self.copies) || self.copies.all(c, self.copies.exists_one(d, d.name == c.name))").message("every copy needs a name of its own")
)]
pub struct BackupScheduleSpec {
    /// When to back up, in CronJob syntax: five fields (`minute hour day-of-month month
    /// day-of-week`, e.g. `30 2 * * *`) or a macro such as `@daily`.
    #[schemars(regex(pattern = CRON_PATTERN))]
    pub schedule: String,

    /// IANA time zone of the schedule, e.g. `Europe/Berlin`. Default: the controller
    /// manager's time zone (usually UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,

    /// Pause scheduled backups (WAL archiving goes on). Backups already running finish.
    #[serde(default)]
    pub suspend: bool,

    /// What each scheduled backup is: a `logical` or `physical` PostgresBackup, or a
    /// `volumeSnapshot` VolumeSnapshotBackup.
    pub method: ScheduleMethod,

    /// What every backup object this schedule creates gets.
    pub template: BackupTemplate,

    /// Continuous WAL archiving by a streaming archiver Deployment, for point-in-time
    /// restore between backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archiving: Option<WalArchiving>,

    /// Which backups to keep. Applied to the backup objects this schedule created and to
    /// their data; WAL that a kept base backup needs is never deleted. Unset: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// What to do when a backup is due while the previous one still runs: `Forbid` (skip
    /// the new one), `Replace` (stop the running one), `Allow` (run both).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// Seconds after the scheduled time within which a missed run may still start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,

    /// How many finished trigger Jobs of successful runs the CronJob keeps.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0))]
    pub successful_jobs_history_limit: i32,

    /// How many finished trigger Jobs of failed runs the CronJob keeps.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0))]
    pub failed_jobs_history_limit: i32,

    /// Scheduled restore tests of the newest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<ScheduledVerify>,

    /// Second copies of the schedule's backups and archived WAL in other S3 buckets (the
    /// "2" and "1" of 3-2-1), each kept by a CronJob of its own that copies what the copy
    /// lacks, verified by checksum, and never deletes in the template's repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub copies: Vec<BackupCopy>,
}

impl BackupSchedule {
    /// The repository a restore from this schedule reads: the template's, or with `copy`
    /// the second copy of that name — its bucket with the template repository's server
    /// name, compression and encryption, since objects are copied as they are stored.
    pub fn repository_for(&self, copy: Option<&str>) -> Result<Repository, String> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let template = self
            .spec
            .template
            .repository
            .as_ref()
            .ok_or_else(|| format!("BackupSchedule {name} has no repository"))?;
        let Some(copy) = copy else {
            return Ok(template.clone());
        };
        let found = self
            .spec
            .copies
            .iter()
            .find(|c| c.name == copy)
            .ok_or_else(|| format!("BackupSchedule {name} has no copy {copy:?} (spec.copies)"))?;
        Ok(Repository {
            s3: Some(found.s3.clone()),
            volume: None,
            ..template.clone()
        })
    }
}

/// A second copy of the schedule's repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupCopy {
    /// Name of the copy, unique in the schedule: it names the copy's CronJob
    /// (`<schedule>-copy-<name>`) and its entry in `status.copies`.
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// When to copy, in CronJob syntax (in `timeZone`), e.g. an hour after the backups.
    /// Each run copies the backups and WAL the copy lacks.
    #[schemars(regex(pattern = CRON_PATTERN))]
    pub schedule: String,

    /// The bucket of the copy. Objects are copied as stored — still compressed, still
    /// encrypted with the template repository's key — under the same server name, so the
    /// copy is a repository of its own (`pgbackup list`, `verify`, `restore` work on it).
    /// Its `serviceAccountName`, when set, must be the template repository's: one pod
    /// reads the one and writes the other.
    pub s3: super::S3Repository,

    /// Which backups the copy keeps (a backup the rules would not keep is not copied; the
    /// WAL only dropped backups needed goes too). Unset: the copy keeps everything it
    /// receives, whatever the schedule's own retention deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// What the schedule creates each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScheduleMethod {
    /// A PostgresBackup with `method: logical`.
    Logical,
    /// A PostgresBackup with `method: physical`.
    Physical,
    /// A VolumeSnapshotBackup.
    VolumeSnapshot,
}

/// The part of each backup object that comes from the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTemplate {
    /// The database to back up.
    pub target: DatabaseTarget,

    /// Where backups and archived WAL are stored. Required for logical and physical
    /// backups and for WAL archiving; optional for volume snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,

    /// Options of logical backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalOptions>,

    /// Options of physical backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalOptions>,

    /// Options of volume snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<VolumeSnapshotOptions>,

    /// Deletion policy of each backup object created: what happens to its data when the
    /// object is deleted by hand. Retention removes the data of the backups it drops
    /// whatever this says.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How each backup Job runs: retries, deadline, how long it is kept, resources.
    #[serde(default)]
    pub job: JobOptions,
}

/// Continuous WAL archiving settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalArchiving {
    /// Run the WAL archiver. It streams WAL over a physical replication slot, so the
    /// server keeps WAL until it is archived: watch the disk if the archiver stops.
    #[serde(default)]
    pub enabled: bool,

    /// Name of the replication slot. Default: `pgbackup_<schedule name>` with `-`
    /// replaced by `_`. Two schedules may not use the same slot on one server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,63}$"))]
    pub slot_name: Option<String>,

    /// Upload the WAL segment being written every this many seconds, so a quiet server
    /// loses at most this much on restore (recovery point objective).
    #[serde(default = "default_partial_upload_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub partial_upload_seconds: i32,

    /// Read the repository's backups and WAL back every this many seconds to prove the
    /// recovery window (`status.recoveryWindow`, `provenBy: walArchive`). Each read lists
    /// the archive: on a large one in S3, fewer reads cost less.
    #[serde(default = "default_window_check_seconds")]
    #[schemars(range(min = 5, max = 86400))]
    pub window_check_seconds: i32,

    /// CPU and memory of the archiver container. Default: requests of 50m CPU and 128Mi
    /// memory, a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// Which backups to keep: a backup is kept when any rule keeps it, and the newest completed
/// backup is always kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N completed backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<i32>,
    /// Keep the newest backup of each of the last N days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_daily: Option<i32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_weekly: Option<i32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_monthly: Option<i32>,
    /// Keep every backup younger than this, e.g. `30d`, `2w`, `36h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
}

/// CronJob concurrency policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip a run while the previous one is still going.
    #[default]
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
    /// Run both.
    Allow,
}

/// Scheduled restore tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledVerify {
    /// When to restore-test the newest completed logical or physical backup in the
    /// template's repository, in CronJob syntax (in `timeZone`). A CronJob restores it into
    /// a scratch PostgreSQL and compares the rows of every table with the counts recorded
    /// at backup time; the result is the `Verified` condition and `status.lastVerification`.
    #[schemars(regex(pattern = CRON_PATTERN))]
    pub schedule: String,
}

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

fn default_successful_history() -> i32 {
    3
}

fn default_failed_history() -> i32 {
    1
}

fn default_window_check_seconds() -> i32 {
    60
}

fn default_partial_upload_seconds() -> i32 {
    60
}
