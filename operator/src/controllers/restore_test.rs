//! The result of a restore test Job (`pgbackup verify --restore`) as status figures, the
//! `Verified` condition and an Event, shared by PostgresBackups and BackupSchedules.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Note, job_state::JobState};
use crate::{
    agent::verify::RestoreTest,
    api::{STATUS_FALSE, STATUS_TRUE, VerificationStatus},
};

/// What a finished restore test Job says.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The figures for the status.
    pub verification: VerificationStatus,
    /// The `Verified` condition: status, reason, message.
    pub condition: (&'static str, String, String),
    /// The Event to publish.
    pub event: Note,
}

/// The outcome of the Job `name` in `state`; `None` while it has not finished.
pub(crate) fn finished(name: &str, state: &JobState, now: &Time) -> Option<Finished> {
    let mut verification = VerificationStatus {
        job_name: Some(name.to_string()),
        ..VerificationStatus::default()
    };
    let failed = |mut verification: VerificationStatus, reason: &str, message: String| {
        verification.verified = Some(false);
        verification.message = Some(message.clone());
        Finished {
            verification,
            condition: (STATUS_FALSE, reason.to_string(), message.clone()),
            event: Note::warning("VerificationFailed", message),
        }
    };
    match state {
        JobState::Active { .. } => None,
        JobState::Succeeded {
            started,
            finished,
            result,
        } => {
            verification.started_at = started.clone();
            verification.completed_at = finished.clone().or(Some(now.clone()));
            let Some(test) = result
                .as_deref()
                .and_then(|r| serde_json::from_str::<RestoreTest>(r).ok())
            else {
                let message = format!("the restore test Job {name} succeeded but left no report");
                return Some(failed(verification, "ResultMissing", message));
            };
            record(&mut verification, &test);
            let message = passed_message(&test);
            verification.message = Some(message.clone());
            Some(Finished {
                verification,
                condition: (STATUS_TRUE, "RestoreTestPassed".into(), message.clone()),
                event: Note::normal("Verified", message),
            })
        }
        JobState::Failed {
            reason,
            message,
            finished,
        } => {
            verification.completed_at = finished.clone().or(Some(now.clone()));
            Some(failed(verification, reason, message.clone()))
        }
    }
}

/// The figures of a passed test into the status.
fn record(verification: &mut VerificationStatus, test: &RestoreTest) {
    let count = |n: usize| i64::try_from(n).ok();
    verification.backup_id = Some(test.backup_id.clone());
    verification.verified = Some(test.verified);
    verification.restore_seconds = Some(test.restore_seconds);
    verification.reached_lsn = test.reached_lsn.clone();
    verification.tables = count(test.tables);
    verification.rows = i64::try_from(test.rows).ok();
    verification.matched = count(test.matched);
    verification.changed_during_backup = count(test.changed_count);
}

/// `backup … restored into a scratch server in 12.3 s; 42 tables, 10,000 rows: …`.
fn passed_message(test: &RestoreTest) -> String {
    format!(
        "backup {} restored into a scratch server in {:.1} s{}; {}",
        test.backup_id,
        test.restore_seconds,
        test.reached_lsn
            .as_deref()
            .map(|lsn| format!(", recovered to {lsn}"))
            .unwrap_or_default(),
        test.summary
    )
}
