//! A schedule's own conditions: `LastBackupSucceeded` (from its backups and the trigger's
//! newest run) and `Ready` (refused, active or suspended), each with its Event when the
//! reason changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::backups::ScheduledBackup;
use super::plan::{JobRun, Observed};
use crate::{
    api::{
        BackupSchedule, BackupScheduleStatus, CONDITION_LAST_BACKUP_SUCCEEDED, CONDITION_READY,
        STATUS_FALSE, STATUS_TRUE, STATUS_UNKNOWN, SchedulePhase, find_condition, set_condition,
    },
    controllers::{Note, job_state::JobState, references::Problem},
};

/// The generation and the clock every condition of one reconcile is written with.
pub(super) struct Stamp {
    pub generation: Option<i64>,
    pub now: Timestamp,
}

impl Stamp {
    fn set(
        &self,
        status: &mut BackupScheduleStatus,
        type_: &str,
        value: &str,
        reason: &str,
        message: &str,
    ) {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            reason,
            message,
            self.generation,
            Time(self.now),
        );
    }
}

/// `LastBackupSucceeded`: the newer of the last successful and the last failed backup; a
/// run of the trigger that could not make its backup (a quota, an admission webhook, no
/// node) is the last word until a backup is made again.
pub(super) fn last_backup(
    status: &mut BackupScheduleStatus,
    old: &BackupScheduleStatus,
    observed: &Observed,
    stamp: &Stamp,
    events: &mut Vec<Note>,
) {
    let last_succeeded = match (&status.last_successful_backup, &status.last_failed_backup) {
        (None, None) => None,
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        (Some(ok), Some(bad)) => {
            Some(ok.time.as_ref().map(|t| t.0) >= bad.time.as_ref().map(|t| t.0))
        }
    };
    let (ok, bad) = (
        status.last_successful_backup.clone(),
        status.last_failed_backup.clone(),
    );
    let type_ = CONDITION_LAST_BACKUP_SUCCEEDED;
    match (last_succeeded, ok, bad) {
        (Some(true), Some(ok), _) => stamp.set(
            status,
            type_,
            STATUS_TRUE,
            "Completed",
            &format!("backup {} completed", ok.name),
        ),
        (Some(false), _, Some(bad)) => stamp.set(
            status,
            type_,
            STATUS_FALSE,
            "Failed",
            &format!("backup {} failed; see its status", bad.name),
        ),
        _ => stamp.set(
            status,
            type_,
            STATUS_UNKNOWN,
            "NoBackupYet",
            "no backup of this schedule has finished yet",
        ),
    }
    if let Some((reason, message)) = observed
        .trigger_job
        .as_ref()
        .and_then(|run| trigger_problem(run, &observed.backups))
    {
        let was = find_condition(&old.conditions, type_).map(|c| c.reason.clone());
        stamp.set(status, type_, STATUS_FALSE, &reason, &message);
        if was.as_deref() != Some(reason.as_str()) {
            events.push(Note::warning(&reason, message));
        }
    }
}

/// `Ready=False` and phase `Failed`: the spec cannot be carried out.
pub(super) fn refused(
    status: &mut BackupScheduleStatus,
    old: &BackupScheduleStatus,
    problem: &Problem,
    stamp: &Stamp,
    events: &mut Vec<Note>,
) {
    status.phase = Some(SchedulePhase::Failed);
    status.message = Some(problem.message.clone());
    stamp.set(
        status,
        CONDITION_READY,
        STATUS_FALSE,
        problem.reason,
        &problem.message,
    );
    if find_condition(&old.conditions, CONDITION_READY).map(|c| c.reason.as_str())
        != Some(problem.reason)
    {
        events.push(Note::warning(problem.reason, problem.message.clone()));
    }
}

/// `Ready=True`: backups run on schedule, or are suspended (WAL archiving goes on).
pub(super) fn ready(
    schedule: &BackupSchedule,
    status: &mut BackupScheduleStatus,
    old: &BackupScheduleStatus,
    stamp: &Stamp,
    events: &mut Vec<Note>,
) {
    let (phase, reason, message) = if schedule.spec.suspend {
        (
            SchedulePhase::Suspended,
            "Suspended",
            "scheduled backups are suspended (spec.suspend); WAL archiving goes on".to_string(),
        )
    } else {
        (
            SchedulePhase::Active,
            "Active",
            format!("backups run on schedule {:?}", schedule.spec.schedule),
        )
    };
    status.phase = Some(phase);
    status.message = Some(message.clone());
    stamp.set(status, CONDITION_READY, STATUS_TRUE, reason, &message);
    if find_condition(&old.conditions, CONDITION_READY).map(|c| c.reason.as_str()) != Some(reason) {
        events.push(Note::normal(reason, message));
    }
}

/// Why the newest run of the trigger made no backup, when it made none and cannot: its
/// pod could not be made or started, or the Job failed. `(reason, message)`.
fn trigger_problem(run: &JobRun, backups: &[ScheduledBackup]) -> Option<(String, String)> {
    let made_one = backups.iter().any(|b| {
        b.created
            .is_some_and(|c| run.created.is_none_or(|r| c >= r))
    });
    if made_one {
        return None;
    }
    let name = &run.name;
    match &run.state {
        JobState::Active {
            stuck: Some((reason, why)),
            ..
        } => Some((
            reason.clone(),
            format!("the scheduled run {name} made no backup yet: its pod cannot start: {why}"),
        )),
        JobState::Failed {
            reason, message, ..
        } => Some((
            "TriggerFailed".into(),
            format!("the scheduled run {name} made no backup: {reason}: {message}"),
        )),
        _ => None,
    }
}
