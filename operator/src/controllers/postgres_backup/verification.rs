//! The restore test of a completed backup with `verify.enabled` (pure): start the test Job
//! once, follow it, and record the result as the `Verified` condition and
//! `status.verification`. The backup itself stays `Completed` and `Ready` either way: the
//! test's verdict is its own condition.

use k8s_openapi::{api::batch::v1::Job, apimachinery::pkg::apis::meta::v1::Time};

use super::build;
use crate::{
    api::{
        CONDITION_VERIFIED, PostgresBackup, PostgresBackupStatus, STATUS_FALSE, STATUS_UNKNOWN,
        VerificationStatus, set_condition,
    },
    controllers::{Note, job_state::JobState, restore_test},
    k8s::agent_pod::AgentSettings,
};

/// What the restore-test step does.
#[derive(Debug, Default)]
pub(super) struct Step {
    /// The test Job to create.
    pub job: Option<Job>,
    /// An Event to publish.
    pub event: Option<Note>,
}

/// Whether `status` still waits for a restore test.
pub(super) fn pending(backup: &PostgresBackup, status: &PostgresBackupStatus) -> bool {
    backup.spec.verify.as_ref().is_some_and(|v| v.enabled)
        && status.backup_id.is_some()
        && status
            .verification
            .as_ref()
            .and_then(|v| v.verified)
            .is_none()
}

/// The next step of the test of a completed backup, given its Job's state.
pub(super) fn step(
    backup: &PostgresBackup,
    job: Option<&JobState>,
    status: &mut PostgresBackupStatus,
    settings: &AgentSettings,
    now: &Time,
) -> Step {
    let mut step = Step::default();
    if !pending(backup, status) {
        return step;
    }
    let name = build::verify_job_name(backup);
    let backup_id = status.backup_id.clone().unwrap_or_default();
    let mut verification = status.verification.clone().unwrap_or_default();
    let mut condition = |status_: &str, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            CONDITION_VERIFIED,
            status_,
            reason,
            message,
            backup.metadata.generation,
            now.clone(),
        );
    };
    match job {
        None if verification.job_name.is_some() => {
            let message =
                format!("the restore test Job {name} was removed before its result was recorded");
            verification.verified = Some(false);
            verification.completed_at = Some(now.clone());
            verification.message = Some(message.clone());
            condition(STATUS_FALSE, "JobLost", &message);
            step.event = Some(Note::warning("VerificationFailed", message));
        }
        None => {
            let major =
                build::major_of(status.server_version.as_deref()).unwrap_or(settings.default_major);
            step.job = Some(build::verify_job(backup, settings, &backup_id, major));
            verification = VerificationStatus {
                job_name: Some(name.clone()),
                backup_id: Some(backup_id.clone()),
                ..VerificationStatus::default()
            };
            let message = format!("restore test Job {name} created");
            condition(STATUS_UNKNOWN, "Verifying", &message);
            step.event = Some(Note::normal("VerificationStarted", message));
        }
        Some(JobState::Active { started, stuck }) => {
            verification.started_at = started.clone().or(verification.started_at.take());
            match stuck {
                Some((reason, message)) => condition(
                    STATUS_UNKNOWN,
                    reason,
                    &format!("the restore test pod cannot start: {message}"),
                ),
                None => condition(
                    STATUS_UNKNOWN,
                    "Verifying",
                    &format!("restoring backup {backup_id} into a scratch server (Job {name})"),
                ),
            }
        }
        Some(state) => {
            if let Some(done) = restore_test::finished(&name, state, now) {
                let (value, reason, message) = &done.condition;
                condition(value, reason, message);
                verification = VerificationStatus {
                    backup_id: done.verification.backup_id.clone().or(Some(backup_id)),
                    started_at: done
                        .verification
                        .started_at
                        .clone()
                        .or(verification.started_at.take()),
                    ..done.verification
                };
                step.event = Some(done.event);
            }
        }
    }
    status.verification = Some(verification);
    step
}
