//! The parts of a schedule's status computed from what was observed (pure): its backups'
//! history, the WAL archiver's state, and the recoverability window.

use super::{backups::ScheduledBackup, build, plan::Observed};
use crate::{
    agent::wal_archive::ProvenWindow,
    api::{
        BackupPhase, BackupReference, BackupSchedule, BackupScheduleStatus,
        CONDITION_WAL_ARCHIVING, RecoveryWindow, STATUS_FALSE, STATUS_TRUE, STATUS_UNKNOWN,
        WalArchivingStatus, find_condition, set_condition,
    },
    controllers::Note,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// WAL archiving further behind than this is reported as lagging.
pub const LAG_WARNING_SECONDS: f64 = 300.0;

/// The newest completed and failed backup objects.
pub(super) fn backup_history(status: &mut BackupScheduleStatus, backups: &[ScheduledBackup]) {
    let newest = |phase: BackupPhase| {
        backups
            .iter()
            .filter(|b| b.phase == Some(phase))
            .map(|b| BackupReference {
                name: b.name.clone(),
                time: b.completed_at.or(b.created).map(Time),
            })
            .max_by_key(|r| r.time.as_ref().map(|t| t.0))
    };
    if let Some(ok) = newest(BackupPhase::Completed) {
        status.last_successful_backup = Some(ok);
    }
    if let Some(bad) = newest(BackupPhase::Failed) {
        status.last_failed_backup = Some(bad);
    }
}

pub(super) fn wal_archiving_status(
    schedule: &BackupSchedule,
    observed: &Observed,
    status: &mut BackupScheduleStatus,
    now: Timestamp,
    events: &mut Vec<Note>,
    old: &BackupScheduleStatus,
) {
    let generation = schedule.metadata.generation;
    if !build::archiving(schedule) {
        status.wal_archiving = None;
        status
            .conditions
            .retain(|c| c.type_ != CONDITION_WAL_ARCHIVING);
        return;
    }
    let mut wal = WalArchivingStatus {
        slot_name: Some(build::slot_name(schedule)),
        deployment_name: Some(build::archiver_name(schedule)),
        ..status.wal_archiving.clone().unwrap_or_default()
    };
    let (value, reason, message) = match &observed.archiver {
        None => (
            STATUS_UNKNOWN,
            "Starting",
            "the WAL archiver is being deployed".to_string(),
        ),
        Some(Err(why)) => (
            STATUS_FALSE,
            "ArchiverUnreachable",
            format!("the WAL archiver does not answer: {why}"),
        ),
        Some(Ok(report)) => {
            wal.last_archived_wal = report.last_archived_wal.clone().or(wal.last_archived_wal);
            // Whole seconds, as the API stores times: a finer value would never compare
            // equal to what was written, and every reconcile would write again.
            wal.last_archived_time = report
                .last_archived_time
                .map(whole_seconds_time)
                .or(wal.last_archived_time);
            match (&report.not_ready_reason, report.lag_seconds) {
                (Some(why), _) if !report.ready => (STATUS_FALSE, "ArchiverNotReady", why.clone()),
                (_, lag) if lag > LAG_WARNING_SECONDS => (
                    STATUS_FALSE,
                    "Lagging",
                    format!("WAL archiving is {lag:.0} s behind"),
                ),
                _ => (
                    STATUS_TRUE,
                    "Streaming",
                    match &wal.last_archived_wal {
                        Some(name) => format!(
                            "streaming WAL over slot {}; last stored {name}",
                            build::slot_name(schedule)
                        ),
                        None => format!("streaming WAL over slot {}", build::slot_name(schedule)),
                    },
                ),
            }
        }
    };
    set_condition(
        &mut status.conditions,
        CONDITION_WAL_ARCHIVING,
        value,
        reason,
        &message,
        generation,
        Time(now),
    );
    let was = find_condition(&old.conditions, CONDITION_WAL_ARCHIVING).map(|c| c.reason.clone());
    if value == STATUS_FALSE && was.as_deref() != Some(reason) {
        events.push(Note::warning(reason, message));
    }
    status.wal_archiving = Some(wal);
}

/// From the end of the oldest completed backup to the newest backup's end; with WAL
/// archiving over a physical base, the window the archiver read back from the repository
/// (from the first backup after which the WAL is unbroken, so a gap moves it later) and up
/// to the moment the archiver has every commit stored (by the server's clock; the last
/// known one while the archiver does not answer).
pub(super) fn recovery_window(
    schedule: &BackupSchedule,
    backups: &[ScheduledBackup],
    covered_until: Option<Timestamp>,
    proven: Option<&ProvenWindow>,
) -> Option<RecoveryWindow> {
    let completed: Vec<(&ScheduledBackup, Timestamp)> = backups
        .iter()
        .filter(|b| !b.deleting && b.phase == Some(BackupPhase::Completed))
        .filter_map(|b| Some((b, b.completed_at?)))
        .collect();
    let mut first = completed.iter().map(|(_, t)| *t).min()?;
    let mut last = completed.iter().map(|(_, t)| *t).max()?;
    let has_base = completed.iter().any(|(b, _)| b.kind.is_base());
    let archiving = build::archiving(schedule) && has_base;
    if archiving && let Some(covered) = covered_until {
        last = last.max(whole_seconds(covered));
    }
    // Proven once a base backup is followed by unbroken WAL; before that stretch only
    // the backups' own ends can be reached.
    let proven = proven.filter(|w| archiving && w.from.is_some());
    if let Some(window) = proven {
        if let Some(from) = window.from {
            first = whole_seconds(from);
        }
        if let Some(until) = window.until {
            last = last.max(whole_seconds(until));
        }
    }
    Some(RecoveryWindow {
        first_recoverability_point: Some(Time(whole_seconds(first))),
        last_recoverability_point: Some(Time(whole_seconds(last))),
        proven_by: Some(
            if proven.is_some() {
                "walArchive"
            } else {
                "backups"
            }
            .into(),
        ),
        checked_at: proven.map(|w| Time(whole_seconds(w.checked_at))),
    })
}

/// What each completed physical PostgresBackup of the schedule restores to, where its
/// status says otherwise: once the schedule's window is proven by the archived WAL, a
/// backup that ended inside it reaches to the window's end; one that ended before (a gap
/// follows it) reaches its own end only. Without proof every backup keeps its own end,
/// as its controller wrote it.
pub fn backup_windows(
    window: Option<&RecoveryWindow>,
    backups: &[ScheduledBackup],
) -> Vec<(String, RecoveryWindow)> {
    let Some(window) = window.filter(|w| w.proven_by.as_deref() == Some("walArchive")) else {
        return Vec::new();
    };
    let first = window.first_recoverability_point.as_ref().map(|t| t.0);
    backups
        .iter()
        .filter(|b| b.kind == super::backups::BackupKind::Physical && !b.deleting)
        .filter(|b| b.phase == Some(BackupPhase::Completed))
        .filter_map(|b| {
            let end = whole_seconds(b.completed_at?);
            let wanted = if first.is_some_and(|first| end >= first) {
                RecoveryWindow {
                    first_recoverability_point: Some(Time(end)),
                    ..window.clone()
                }
            } else {
                RecoveryWindow {
                    first_recoverability_point: Some(Time(end)),
                    last_recoverability_point: Some(Time(end)),
                    proven_by: Some("backup".into()),
                    checked_at: None,
                }
            };
            (b.window.as_ref() != Some(&wanted)).then(|| (b.name.clone(), wanted))
        })
        .collect()
}

/// A time cut to whole seconds, as the API stores it.
pub fn whole_seconds(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

fn whole_seconds_time(time: Timestamp) -> Time {
    Time(whole_seconds(time))
}
