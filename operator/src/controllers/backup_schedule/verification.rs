//! The scheduled restore tests of a BackupSchedule (pure): the newest Job of its verify
//! CronJob becomes the `Verified` condition and `status.lastVerification`, with one Event
//! per finished test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    api::{
        BackupSchedule, BackupScheduleStatus, CONDITION_VERIFIED, STATUS_UNKNOWN, set_condition,
    },
    controllers::{Note, job_state::JobState, restore_test},
};

/// Records the newest restore test (`job`: its name and state) in `status`.
pub(super) fn verification_status(
    schedule: &BackupSchedule,
    job: Option<&(String, JobState)>,
    status: &mut BackupScheduleStatus,
    now: &Time,
    events: &mut Vec<Note>,
) {
    let Some(verify) = &schedule.spec.verify else {
        status.conditions.retain(|c| c.type_ != CONDITION_VERIFIED);
        status.last_verification = None;
        return;
    };
    let generation = schedule.metadata.generation;
    let condition =
        |status: &mut BackupScheduleStatus, value: &str, reason: &str, message: &str| {
            set_condition(
                &mut status.conditions,
                CONDITION_VERIFIED,
                value,
                reason,
                message,
                generation,
                now.clone(),
            );
        };
    let last = status.last_verification.clone();
    let recorded = |name: &str| {
        last.as_ref()
            .is_some_and(|l| l.job_name.as_deref() == Some(name) && l.verified.is_some())
    };
    match job {
        None if last.is_none() => condition(
            status,
            STATUS_UNKNOWN,
            "NotRunYet",
            &format!(
                "the first restore test runs on schedule {:?}",
                verify.schedule
            ),
        ),
        None => {}
        Some((name, _)) if recorded(name) => {}
        // The last finished test's verdict stays until a running one ends.
        Some((_, JobState::Active { .. })) if last.as_ref().and_then(|l| l.verified).is_some() => {}
        Some((name, JobState::Active { stuck, .. })) => {
            let message = match stuck {
                Some((_, why)) => format!("the restore test pod cannot start: {why}"),
                None => format!("restore test Job {name} is running"),
            };
            condition(status, STATUS_UNKNOWN, "Verifying", &message);
        }
        Some((name, state)) => {
            if let Some(done) = restore_test::finished(name, state, now) {
                let (value, reason, message) = &done.condition;
                condition(status, value, reason, message);
                status.last_verification = Some(done.verification);
                events.push(done.event);
            }
        }
    }
}
