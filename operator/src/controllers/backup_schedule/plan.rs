//! The decisions of a BackupSchedule reconcile (pure): whether the spec can be carried out,
//! the objects it owns, which backup objects retention drops, and the next status.

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        batch::v1::CronJob,
        core::v1::ServiceAccount,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

use super::{build, cron};
use crate::{
    agent::wal_archive::ArchiverReport,
    api::{
        BackupPhase, BackupReference, BackupSchedule, BackupScheduleStatus,
        CONDITION_LAST_BACKUP_SUCCEEDED, CONDITION_READY, CONDITION_WAL_ARCHIVING, PostgresBackup,
        RecoveryWindow, STATUS_FALSE, STATUS_TRUE, STATUS_UNKNOWN, ScheduleMethod, SchedulePhase,
        WalArchivingStatus, find_condition, set_condition,
    },
    controllers::{
        Note, Settings,
        references::{self, Problem, References},
    },
    k8s::agent_pod,
    repository::{RetentionPolicy, parse_duration, select_kept},
};

/// WAL archiving further behind than this is reported as lagging.
pub const LAG_WARNING_SECONDS: f64 = 300.0;
/// Failed backup objects of a schedule kept for inspection; older ones are deleted.
pub const FAILED_KEPT: usize = 3;

/// What the reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The StatefulSet and Secrets the template refers to.
    pub references: References,
    /// The schedule's CronJob.
    pub cron_job: Option<CronJob>,
    /// The archiver, when its Deployment exists: `Ok` with its report, or why none.
    pub archiver: Option<Result<ArchiverReport, String>>,
    /// The backup objects this schedule created.
    pub backups: Vec<PostgresBackup>,
    /// The other schedules in the namespace.
    pub siblings: Vec<BackupSchedule>,
}

/// The objects the schedule owns.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned {
    /// The trigger's ServiceAccount.
    pub account: ServiceAccount,
    /// The trigger's Role.
    pub role: Role,
    /// Its RoleBinding.
    pub binding: RoleBinding,
    /// The CronJob.
    pub cron_job: CronJob,
    /// The WAL archiver, when archiving is on.
    pub archiver: Option<Deployment>,
}

/// What the reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The objects to apply; `None` when the spec cannot be carried out (nothing changes).
    pub owned: Option<Owned>,
    /// Delete the archiver Deployment (archiving turned off).
    pub remove_archiver: bool,
    /// Backup objects retention drops, with their data.
    pub expire: Vec<String>,
    /// The status to write.
    pub status: BackupScheduleStatus,
    /// Events to publish.
    pub events: Vec<Note>,
}

/// The retention policy of the spec.
pub fn retention_policy(schedule: &BackupSchedule) -> Result<Option<RetentionPolicy>, Problem> {
    let Some(retention) = &schedule.spec.retention else {
        return Ok(None);
    };
    let count = |n: Option<i32>| n.map(|n| u32::try_from(n.max(0)).unwrap_or(0));
    let policy = RetentionPolicy {
        keep_last: count(retention.keep_last),
        keep_daily: count(retention.keep_daily),
        keep_weekly: count(retention.keep_weekly),
        keep_monthly: count(retention.keep_monthly),
        max_age_seconds: retention
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| Problem::new("InvalidSpec", format!("retention.maxAge: {e}")))?,
    };
    if policy.validate().is_err() {
        // An empty retention block keeps everything, as no block does.
        return Ok(None);
    }
    Ok(Some(policy))
}

/// Checks what can be checked without the cluster, then the references and the slot.
fn check(schedule: &BackupSchedule, observed: &Observed) -> Result<String, Problem> {
    let spec = &schedule.spec;
    cron::check_schedule(&spec.schedule)
        .map_err(|why| Problem::new("InvalidSchedule", format!("spec.schedule: {why}")))?;
    let template = &spec.template;
    let mismatch = match spec.method {
        ScheduleMethod::Logical => {
            template.physical.is_some() || template.volume_snapshot.is_some()
        }
        ScheduleMethod::Physical => {
            template.logical.is_some() || template.volume_snapshot.is_some()
        }
        ScheduleMethod::VolumeSnapshot => template.logical.is_some() || template.physical.is_some(),
    };
    if mismatch {
        return Err(Problem::new(
            "InvalidSpec",
            "the template's options do not match spec.method (template.logical needs method logical, template.physical physical, template.volumeSnapshot volumeSnapshot)",
        ));
    }
    if spec.method == ScheduleMethod::VolumeSnapshot {
        return Err(Problem::new(
            "Unsupported",
            "method: volumeSnapshot needs the VolumeSnapshotBackup controller, which this version of pgbackup does not have yet",
        ));
    }
    if template.repository.is_none() {
        return Err(Problem::new(
            "InvalidSpec",
            "logical and physical backups need template.repository",
        ));
    }
    if build::archiving(schedule) && template.repository.is_none() {
        return Err(Problem::new(
            "InvalidSpec",
            "WAL archiving needs template.repository",
        ));
    }
    if let Some(logical) = &template.logical
        && (logical.format == crate::api::DumpFormat::Directory || logical.jobs > 1)
    {
        return Err(Problem::new(
            "Unsupported",
            "template.logical.format: directory and jobs > 1 are not available in this version of pgbackup",
        ));
    }
    if let Some(repository) = &template.repository {
        references::check_repository_supported(repository)?;
    }
    retention_policy(schedule)?;
    if build::archiving(schedule) {
        check_slot(schedule, &observed.siblings)?;
    }
    let namespace = schedule.namespace().unwrap_or_default();
    references::check(
        &namespace,
        &template.target,
        template.repository.as_ref(),
        &observed.references,
    )
}

/// Two archivers on one slot would each advance it past WAL only the other stored. The
/// schedule that claimed the slot first keeps it.
fn check_slot(schedule: &BackupSchedule, siblings: &[BackupSchedule]) -> Result<(), Problem> {
    let slot = build::slot_name(schedule);
    let target = &schedule.spec.template.target;
    let seniority = |s: &BackupSchedule| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.name_any(),
        )
    };
    let rival = siblings.iter().find(|other| {
        other.name_any() != schedule.name_any()
            && build::archiving(other)
            && build::slot_name(other) == slot
            && other.spec.template.target.stateful_set == target.stateful_set
            && seniority(other) < seniority(schedule)
    });
    match rival {
        Some(other) => Err(Problem::new(
            "SlotConflict",
            format!(
                "replication slot {slot} on StatefulSet {} is already used by BackupSchedule {}; set walArchiving.slotName to another name",
                target.stateful_set,
                other.name_any()
            ),
        )),
        None => Ok(()),
    }
}

/// Which backup objects retention drops: completed ones the policy no longer keeps (per
/// method), and failed ones beyond the newest few.
pub fn expired(
    schedule: &BackupSchedule,
    backups: &[PostgresBackup],
    now: Timestamp,
) -> Vec<String> {
    let live: Vec<&PostgresBackup> = backups
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .collect();
    let mut doomed = Vec::new();
    if let Ok(Some(policy)) = retention_policy(schedule) {
        for method in [
            crate::api::BackupMethod::Logical,
            crate::api::BackupMethod::Physical,
        ] {
            let times: Vec<(String, Timestamp)> = live
                .iter()
                .filter(|b| b.spec.method == method)
                .filter_map(|b| {
                    let status = b.status.as_ref()?;
                    (status.phase == Some(BackupPhase::Completed))
                        .then(|| Some((b.name_any(), status.completed_at.clone()?.0)))
                        .flatten()
                })
                .collect();
            let mut kept = select_kept(&times, &policy, now);
            // Whatever the rules say (`maxAge` on a schedule that stopped working, say), the
            // newest completed backup stays: retention never leaves nothing to restore.
            if let Some((newest, _)) = times.iter().max_by_key(|(_, t)| *t) {
                kept.insert(newest.clone());
            }
            doomed.extend(
                times
                    .into_iter()
                    .filter(|(name, _)| !kept.contains(name))
                    .map(|(name, _)| name),
            );
        }
    }
    let mut failed: Vec<(Option<Timestamp>, String)> = live
        .iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Failed))
        .map(|b| {
            (
                b.metadata.creation_timestamp.clone().map(|t| t.0),
                b.name_any(),
            )
        })
        .collect();
    failed.sort();
    let surplus = failed.len().saturating_sub(FAILED_KEPT);
    doomed.extend(failed.into_iter().take(surplus).map(|(_, name)| name));
    doomed.sort();
    doomed
}

/// The next step for `schedule`.
pub fn plan(
    schedule: &BackupSchedule,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let old = schedule.status.clone().unwrap_or_default();
    let generation = schedule.metadata.generation;
    let mut status = BackupScheduleStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let condition = |status: &mut BackupScheduleStatus,
                     type_: &str,
                     value: &str,
                     reason: &str,
                     message: &str| {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            reason,
            message,
            generation,
            Time(now),
        );
    };
    let mut events = Vec::new();
    backup_history(&mut status, &observed.backups);
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
    match (last_succeeded, ok, bad) {
        (Some(true), Some(ok), _) => condition(
            &mut status,
            CONDITION_LAST_BACKUP_SUCCEEDED,
            STATUS_TRUE,
            "Completed",
            &format!("backup {} completed", ok.name),
        ),
        (Some(false), _, Some(bad)) => condition(
            &mut status,
            CONDITION_LAST_BACKUP_SUCCEEDED,
            STATUS_FALSE,
            "Failed",
            &format!("backup {} failed; see its status", bad.name),
        ),
        _ => condition(
            &mut status,
            CONDITION_LAST_BACKUP_SUCCEEDED,
            STATUS_UNKNOWN,
            "NoBackupYet",
            "no backup of this schedule has finished yet",
        ),
    }

    let host = match check(schedule, observed) {
        Ok(host) => host,
        Err(problem) => {
            status.phase = Some(SchedulePhase::Failed);
            status.message = Some(problem.message.clone());
            condition(
                &mut status,
                CONDITION_READY,
                STATUS_FALSE,
                problem.reason,
                &problem.message,
            );
            if find_condition(&old.conditions, CONDITION_READY).map(|c| c.reason.as_str())
                != Some(problem.reason)
            {
                events.push(Note::warning(problem.reason, problem.message));
            }
            return Plan {
                owned: None,
                remove_archiver: false,
                expire: Vec::new(),
                status,
                events,
            };
        }
    };

    let (account, role, binding) = build::trigger_rbac(schedule);
    let cron_job = build::cron_job(schedule, settings);
    let major = observed
        .references
        .stateful_set
        .as_ref()
        .and_then(agent_pod::postgres_major)
        .unwrap_or(settings.agent.default_major);
    let archiver = match (
        &schedule.spec.wal_archiving,
        &schedule.spec.template.repository,
    ) {
        (Some(archiving), Some(repository)) if archiving.enabled => Some(build::archiver(
            schedule, archiving, settings, repository, &host, major,
        )),
        _ => None,
    };
    status.cron_job_name = Some(build::cron_job_name(schedule));
    status.last_schedule_time = observed
        .cron_job
        .as_ref()
        .and_then(|c| c.status.as_ref()?.last_schedule_time.clone())
        .or(status.last_schedule_time.take());
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
    condition(&mut status, CONDITION_READY, STATUS_TRUE, reason, &message);
    if find_condition(&old.conditions, CONDITION_READY).map(|c| c.reason.as_str()) != Some(reason) {
        events.push(Note::normal(reason, message));
    }

    if schedule.spec.verify.is_some() {
        condition(
            &mut status,
            crate::api::CONDITION_VERIFIED,
            STATUS_UNKNOWN,
            "NotAvailable",
            "scheduled restore tests are not available in this version of pgbackup; run `pgbackup verify` against the repository",
        );
    } else {
        status
            .conditions
            .retain(|c| c.type_ != crate::api::CONDITION_VERIFIED);
    }
    wal_archiving_status(schedule, observed, &mut status, now, &mut events, &old);
    let expire = expired(schedule, &observed.backups, now);
    let kept: Vec<PostgresBackup> = observed
        .backups
        .iter()
        .filter(|b| !expire.contains(&b.name_any()))
        .cloned()
        .collect();
    let covered_until = match &observed.archiver {
        Some(Ok(report)) => report.covered_until,
        _ => old
            .recovery_window
            .as_ref()
            .and_then(|w| w.last_recoverability_point.as_ref())
            .map(|t| t.0),
    };
    status.recovery_window = recovery_window(schedule, &kept, covered_until);
    if !expire.is_empty() {
        events.push(Note::normal(
            "Retention",
            format!("retention drops {}", expire.join(", ")),
        ));
    }
    Plan {
        remove_archiver: archiver.is_none(),
        owned: Some(Owned {
            account,
            role,
            binding,
            cron_job,
            archiver,
        }),
        expire,
        status,
        events,
    }
}

/// The newest completed and failed backup objects.
fn backup_history(status: &mut BackupScheduleStatus, backups: &[PostgresBackup]) {
    let newest = |phase: BackupPhase| {
        backups
            .iter()
            .filter_map(|b| {
                let s = b.status.as_ref()?;
                (s.phase == Some(phase)).then(|| BackupReference {
                    name: b.name_any(),
                    time: s
                        .completed_at
                        .clone()
                        .or_else(|| b.metadata.creation_timestamp.clone()),
                })
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

fn wal_archiving_status(
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
    if !matches!(observed.archiver, Some(Ok(_))) {
        // An old lag would read as current; without a report it is unknown.
        wal.lag_seconds = None;
    }
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
            wal.lag_seconds = Some(report.lag_seconds.round() as i64);
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

/// From the end of the oldest completed backup to the newest backup's end or, with WAL
/// archiving over a physical base, the moment up to which the archiver has every commit
/// stored (by the server's clock; the last known one while the archiver does not answer).
fn recovery_window(
    schedule: &BackupSchedule,
    backups: &[PostgresBackup],
    covered_until: Option<Timestamp>,
) -> Option<RecoveryWindow> {
    let completed: Vec<(&PostgresBackup, Timestamp)> = backups
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            let s = b.status.as_ref()?;
            (s.phase == Some(BackupPhase::Completed)).then_some((b, s.completed_at.clone()?.0))
        })
        .collect();
    let first = completed.iter().map(|(_, t)| *t).min()?;
    let mut last = completed.iter().map(|(_, t)| *t).max()?;
    let has_physical = completed
        .iter()
        .any(|(b, _)| b.spec.method == crate::api::BackupMethod::Physical);
    if build::archiving(schedule)
        && has_physical
        && let Some(covered) = covered_until
    {
        last = last.max(whole_seconds(covered));
    }
    Some(RecoveryWindow {
        first_recoverability_point: Some(Time(whole_seconds(first))),
        last_recoverability_point: Some(Time(whole_seconds(last))),
    })
}

/// A time cut to whole seconds, as the API stores it.
fn whole_seconds(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

fn whole_seconds_time(time: Timestamp) -> Time {
    Time(whole_seconds(time))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
