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
/// `Copied`: the newest run of each of a schedule's second copies (`spec.copies`)
/// succeeded (or, with status False, which did not).
pub const CONDITION_COPIED: &str = "Copied";
/// `LastBackupSucceeded`: the most recent backup of a schedule completed.
pub const CONDITION_LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";

/// `Reconciling` (kstatus): work is under way; mirrors `Progressing=True`.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// `Stalled` (kstatus): the object will not get further without a change; mirrors
/// `Failed=True` (and, for a schedule, `Ready=False`).
pub const CONDITION_STALLED: &str = "Stalled";

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

/// Sets the condition `type_` in `conditions`: its `lastTransitionTime` moves only when its
/// status changes, so an idle reconcile computes the same list and writes nothing.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let transition = match find_condition(conditions, type_) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now,
    };
    let condition = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }
}

/// Adds kstatus's abnormal-true conditions, `Reconciling` and `Stalled`, derived from
/// ours, so that tools built on kstatus (`kubectl wait`, Flux, Argo CD's defaults,
/// cli-utils) see a running object as in progress and a failed one as failed. They are
/// present only while true, as kstatus expects.
pub fn mirror_kstatus(
    conditions: &mut Vec<Condition>,
    stalled_when_not_ready: bool,
    generation: Option<i64>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let true_one = |conditions: &[Condition], type_: &str| {
        find_condition(conditions, type_)
            .filter(|c| c.status == STATUS_TRUE)
            .cloned()
    };
    let reconciling = true_one(conditions, CONDITION_PROGRESSING);
    let stalled = true_one(conditions, CONDITION_FAILED).or_else(|| {
        find_condition(conditions, CONDITION_READY)
            .filter(|c| stalled_when_not_ready && c.status == STATUS_FALSE)
            .cloned()
    });
    for (type_, source) in [
        (CONDITION_RECONCILING, reconciling),
        (CONDITION_STALLED, stalled),
    ] {
        match source {
            Some(c) => set_condition(
                conditions,
                type_,
                STATUS_TRUE,
                &c.reason,
                &c.message,
                generation,
                now.clone(),
            ),
            None => conditions.retain(|c| c.type_ != type_),
        }
    }
}

/// A status with conditions.
pub trait WithConditions: Clone + PartialEq {
    /// The conditions.
    fn conditions(&self) -> &[Condition];
    /// The conditions, to change.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// Whether two statuses say the same, ignoring condition transition times (an idle
/// reconcile then writes nothing).
pub fn same_status<S: WithConditions>(a: &S, b: &S) -> bool {
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    a2.conditions_mut().clear();
    b2.conditions_mut().clear();
    a2 == b2 && same_conditions(a.conditions(), b.conditions())
}

macro_rules! with_conditions {
    ($($status:ty),*) => {$(
        impl WithConditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}

with_conditions!(
    super::PostgresBackupStatus,
    super::BackupScheduleStatus,
    super::VolumeSnapshotBackupStatus,
    super::PointInTimeRestoreStatus
);

/// Whether two condition lists say the same, ignoring transition times.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.len() == b.len() && a.iter().all(|c| b.iter().any(|d| strip(c) == strip(d)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(time: &str) -> Time {
        Time(time.parse().expect("time"))
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            CONDITION_READY,
            STATUS_FALSE,
            "Running",
            "a",
            Some(1),
            at("2026-11-21T10:00:00Z"),
        );
        set_condition(
            &mut list,
            CONDITION_READY,
            STATUS_FALSE,
            "Running",
            "b",
            Some(1),
            at("2026-11-21T10:05:00Z"),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, at("2026-11-21T10:00:00Z"));
        assert_eq!(list[0].message, "b");
        set_condition(
            &mut list,
            CONDITION_READY,
            STATUS_TRUE,
            "Completed",
            "c",
            Some(1),
            at("2026-11-21T10:09:00Z"),
        );
        assert_eq!(list[0].last_transition_time, at("2026-11-21T10:09:00Z"));
    }

    #[test]
    fn lists_that_differ_only_in_time_are_the_same() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        set_condition(
            &mut a,
            CONDITION_READY,
            STATUS_TRUE,
            "Completed",
            "",
            Some(1),
            at("2026-11-21T10:00:00Z"),
        );
        set_condition(
            &mut b,
            CONDITION_READY,
            STATUS_TRUE,
            "Completed",
            "",
            Some(1),
            at("2026-11-21T11:00:00Z"),
        );
        assert!(same_conditions(&a, &b));
        set_condition(
            &mut b,
            CONDITION_FAILED,
            STATUS_FALSE,
            "Completed",
            "",
            Some(1),
            at("2026-11-21T11:00:00Z"),
        );
        assert!(!same_conditions(&a, &b));
    }

    #[test]
    fn kstatus_conditions_follow_ours() {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-21T10:00:00Z".parse().expect("time"),
        );
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            CONDITION_PROGRESSING,
            STATUS_TRUE,
            "Running",
            "Job runs",
            Some(1),
            now.clone(),
        );
        mirror_kstatus(&mut conditions, false, Some(1), now.clone());
        assert!(is_condition_true(&conditions, CONDITION_RECONCILING));
        assert!(find_condition(&conditions, CONDITION_STALLED).is_none());

        set_condition(
            &mut conditions,
            CONDITION_PROGRESSING,
            STATUS_FALSE,
            "Failed",
            "",
            Some(1),
            now.clone(),
        );
        set_condition(
            &mut conditions,
            CONDITION_FAILED,
            STATUS_TRUE,
            "DatabaseLoginFailed",
            "refused",
            Some(1),
            now.clone(),
        );
        mirror_kstatus(&mut conditions, false, Some(1), now.clone());
        assert!(find_condition(&conditions, CONDITION_RECONCILING).is_none());
        let stalled = find_condition(&conditions, CONDITION_STALLED).expect("stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "DatabaseLoginFailed")
        );

        // A schedule that is not Ready has stalled until the user fixes it.
        let mut schedule = Vec::new();
        set_condition(
            &mut schedule,
            CONDITION_READY,
            STATUS_FALSE,
            "InvalidSchedule",
            "minute",
            Some(2),
            now.clone(),
        );
        mirror_kstatus(&mut schedule, true, Some(2), now);
        assert!(is_condition_true(&schedule, CONDITION_STALLED));
    }
}
