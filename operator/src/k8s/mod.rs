//! The operator's edge to the Kubernetes API: names and labels of the objects it makes,
//! server-side apply with one field manager, the agent pods, events and leader election.

mod agent_env;
pub mod agent_pod;
pub mod apply;
pub mod database_pod;
pub mod finalizer;
pub mod generated;
pub mod leader;
pub mod names;
mod repository_wiring;
pub mod scale;
pub mod verify_job;

#[cfg(test)]
pub(crate) mod fixtures;

pub use apply::{ApplyError, apply, apply_status, delete_if_exists, delete_in_foreground, get_opt};
pub use names::{
    MAX_CRON_JOB_NAME, child_name, child_name_within, dns_label_within, is_dns_label, label_value,
    labels, schedule_selector,
};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "pgbackup";

/// `app.kubernetes.io/managed-by` on every object the operator makes.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/name`: always `pgbackup`.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/component`: `backup`, `delete`, `wal-archiver`, `trigger`.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/instance`: the pgbackup object the child belongs to.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// On backup objects a schedule created, and on the schedule's own objects: the schedule's
/// name as a label value ([`label_value`]).
pub const LABEL_SCHEDULE: &str = "pgbackup.io/schedule";
/// On backup objects a schedule created: the schedule's full name (a label value may be
/// cut short).
pub const ANNOTATION_SCHEDULE: &str = "pgbackup.io/schedule";
/// On a backup object: `"true"` records the rows of every table for restore tests
/// (set by the trigger of a schedule with `verify`).
pub const ANNOTATION_ROW_COUNTS: &str = "pgbackup.io/row-counts";
/// On a backup's Jobs: the backup's name.
pub const LABEL_BACKUP: &str = "pgbackup.io/backup";
/// Set to `"true"` on a backup object by retention before deleting it: its data goes with
/// it whatever its `deletionPolicy` says.
pub const ANNOTATION_DELETE_DATA: &str = "pgbackup.io/delete-data";
/// The label Kubernetes puts on a Job's pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
