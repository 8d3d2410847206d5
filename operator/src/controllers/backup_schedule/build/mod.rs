//! The objects a BackupSchedule owns, built from its spec (pure): the trigger's
//! ServiceAccount, Role and RoleBinding, the CronJob, the restore-test CronJob, and the WAL
//! archiver Deployment.
//!
//! Here: the names of those objects and their metadata. The trigger's RBAC and the CronJobs
//! are built in `cron_jobs`, the archiver and the Job that drops its slot in `wal_archiver`.

mod cron_jobs;
mod wal_archiver;

pub(super) use cron_jobs::{Runs, scheduled};
pub use cron_jobs::{cron_job, trigger_rbac, verify_cron_job};
pub use wal_archiver::{archiver, drop_slot_job};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::{
    api::BackupSchedule,
    k8s::{LABEL_SCHEDULE, MAX_CRON_JOB_NAME, child_name, child_name_within, label_value, labels},
};

/// Port of the archiver's `/healthz`, `/readyz`, `/metrics` and `/status`.
pub const ARCHIVER_PORT: i32 = 8080;

/// Name of the CronJob (and of the trigger's ServiceAccount, Role and RoleBinding).
pub fn cron_job_name(schedule: &BackupSchedule) -> String {
    child_name_within(&schedule.name_any(), "trigger", MAX_CRON_JOB_NAME)
}

/// Name of the CronJob of the scheduled restore tests.
pub fn verify_cron_job_name(schedule: &BackupSchedule) -> String {
    child_name_within(&schedule.name_any(), "verify", MAX_CRON_JOB_NAME)
}

/// Name of the WAL archiver Deployment.
pub fn archiver_name(schedule: &BackupSchedule) -> String {
    child_name(&schedule.name_any(), "wal-archiver")
}

/// The replication slot of the schedule's archiver: `walArchiving.slotName`, else
/// `pgbackup_<name>` in the characters a slot name allows.
pub fn slot_name(schedule: &BackupSchedule) -> String {
    if let Some(slot) = schedule
        .spec
        .wal_archiving
        .as_ref()
        .and_then(|w| w.slot_name.clone())
    {
        return slot;
    }
    let name: String = schedule
        .name_any()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("pgbackup_{name}").chars().take(63).collect()
}

/// Whether the schedule runs a WAL archiver.
pub fn archiving(schedule: &BackupSchedule) -> bool {
    schedule
        .spec
        .wal_archiving
        .as_ref()
        .is_some_and(|w| w.enabled)
}

pub(super) fn meta(schedule: &BackupSchedule, name: String, component: &str) -> ObjectMeta {
    let mut labels = labels(component, &schedule.name_any());
    labels.insert(LABEL_SCHEDULE.into(), label_value(&schedule.name_any()));
    ObjectMeta {
        name: Some(name),
        namespace: schedule.namespace(),
        labels: Some(labels),
        owner_references: schedule.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Name of the Job that drops the replication slot when archiving ends.
pub fn drop_slot_job_name(schedule: &BackupSchedule) -> String {
    child_name(&schedule.name_any(), "drop-slot")
}
