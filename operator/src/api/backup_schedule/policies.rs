//! What a BackupSchedule does besides taking backups: continuous WAL archiving, retention,
//! scheduled restore tests and second copies of the repository.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CRON_PATTERN;
use crate::api::DURATION_PATTERN;

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
    pub s3: crate::api::S3Repository,

    /// Which backups the copy keeps (a backup the rules would not keep is not copied; the
    /// WAL only dropped backups needed goes too). Unset: the copy keeps everything it
    /// receives, whatever the schedule's own retention deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
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

fn default_window_check_seconds() -> i32 {
    60
}

fn default_partial_upload_seconds() -> i32 {
    60
}
