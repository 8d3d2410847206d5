//! `BackupSchedule`: the protection policy of one database — scheduled backups through a
//! CronJob, continuous WAL archiving, retention and restore tests.
//!
//! Here: the kind, its spec and the template of each backup. WAL archiving, retention,
//! restore tests and copies are in `policies`, the observed state in `status`.

mod policies;
mod status;

pub use policies::*;
pub use status::*;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    DatabaseTarget, DeletionPolicy, JobOptions, LogicalOptions, PhysicalOptions, Repository,
    VolumeSnapshotOptions,
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

fn default_successful_history() -> i32 {
    3
}

fn default_failed_history() -> i32 {
    1
}
