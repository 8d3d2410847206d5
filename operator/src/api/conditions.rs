//! Status conditions shared by the four kinds: kstatus-style `Ready`, `Progressing` and `Failed`.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// `Ready`: the object has reached its goal (backup complete, schedule active, restore done).
/// `kubectl wait --for=condition=Ready`, Argo CD and Flux read this one.
pub const CONDITION_READY: &str = "Ready";
/// `Progressing`: work is under way (a Job runs, a restore moves between phases).
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// `Failed`: the object will not reach its goal without a change; the message says why.
pub const CONDITION_FAILED: &str = "Failed";
/// `Verified`: a restore test of the backup succeeded (or, with status False, failed).
pub const CONDITION_VERIFIED: &str = "Verified";
/// `WALArchiving`: the schedule's WAL archiver runs and keeps up.
pub const CONDITION_WAL_ARCHIVING: &str = "WALArchiving";
/// `LastBackupSucceeded`: the most recent backup of a schedule completed.
pub const CONDITION_LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";

/// Condition status `True`.
pub const STATUS_TRUE: &str = "True";
/// Condition status `False`.
pub const STATUS_FALSE: &str = "False";
/// Condition status `Unknown`.
pub const STATUS_UNKNOWN: &str = "Unknown";

/// Finds the condition of a type in a list.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of this type is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == STATUS_TRUE)
}
