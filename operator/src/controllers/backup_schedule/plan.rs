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

use super::backups::ScheduledBackup;
use super::checks::check;
use super::conditions::{self, Stamp};
use super::retention::expired;
use super::{
    build, copies,
    status::{backup_history, backup_windows, recovery_window, wal_archiving_status},
    verification,
};
use crate::{
    agent::wal_archive::{ArchiverReport, ProvenWindow},
    api::{BackupSchedule, BackupScheduleStatus},
    controllers::{Note, Settings, job_state::JobState, references::References},
    k8s::agent_pod,
};

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
    pub backups: Vec<ScheduledBackup>,
    /// The other schedules in the namespace.
    pub siblings: Vec<BackupSchedule>,
    /// The newest Job of the restore-test CronJob: its name and state.
    pub verify_job: Option<(String, JobState)>,
    /// The newest Job of the trigger CronJob.
    pub trigger_job: Option<JobRun>,
    /// The newest Job of each copy's CronJob, by copy name: its name and state.
    pub copy_jobs: std::collections::BTreeMap<String, (String, JobState)>,
}

/// A Job one of the schedule's CronJobs started.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRun {
    /// Its name.
    pub name: String,
    /// What became of it.
    pub state: JobState,
    /// When it was made.
    pub created: Option<Timestamp>,
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
    /// The restore-test CronJob, when `verify` is set.
    pub verify_cron_job: Option<CronJob>,
    /// The CronJob of each copy (`spec.copies`).
    pub copy_cron_jobs: Vec<CronJob>,
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
    /// The recovery windows to write on the schedule's PostgresBackups, where they
    /// changed.
    pub backup_windows: Vec<(String, crate::api::RecoveryWindow)>,
    /// Events to publish.
    pub events: Vec<Note>,
}

/// The next step for `schedule`.
pub fn plan(
    schedule: &BackupSchedule,
    observed: &Observed,
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let old = schedule.status.clone().unwrap_or_default();
    let stamp = Stamp {
        generation: schedule.metadata.generation,
        now,
    };
    let mut status = BackupScheduleStatus {
        observed_generation: stamp.generation,
        ..old.clone()
    };
    let mut events = Vec::new();
    backup_history(&mut status, &observed.backups);
    conditions::last_backup(&mut status, &old, observed, &stamp, &mut events);
    let host = match check(schedule, observed) {
        Ok(host) => host,
        Err(problem) => {
            conditions::refused(&mut status, &old, &problem, &stamp, &mut events);
            return Plan {
                owned: None,
                remove_archiver: false,
                expire: Vec::new(),
                status,
                backup_windows: Vec::new(),
                events,
            };
        }
    };
    status.cron_job_name = Some(build::cron_job_name(schedule));
    status.last_schedule_time = observed
        .cron_job
        .as_ref()
        .and_then(|c| c.status.as_ref()?.last_schedule_time.clone())
        .or(status.last_schedule_time.take());
    conditions::ready(schedule, &mut status, &old, &stamp, &mut events);
    verification::verification_status(
        schedule,
        observed.verify_job.as_ref(),
        &mut status,
        &Time(now),
        &mut events,
    );
    copies::copy_status(
        schedule,
        &observed.copy_jobs,
        &mut status,
        &Time(now),
        &mut events,
    );
    wal_archiving_status(schedule, observed, &mut status, now, &mut events, &old);
    let expire = expired(schedule, &observed.backups, now);
    let kept: Vec<ScheduledBackup> = observed
        .backups
        .iter()
        .filter(|b| !expire.contains(&b.name))
        .cloned()
        .collect();
    let owned = owned(schedule, observed, settings, &host, &kept);
    let (covered_until, proven) = archive_coverage(observed, &old);
    status.recovery_window = recovery_window(schedule, &kept, covered_until, proven.as_ref());
    let backup_windows = backup_windows(status.recovery_window.as_ref(), &kept);
    if !expire.is_empty() {
        events.push(Note::normal(
            "Retention",
            format!("retention drops {}", expire.join(", ")),
        ));
    }
    Plan {
        remove_archiver: owned.archiver.is_none(),
        owned: Some(owned),
        expire,
        status,
        backup_windows,
        events,
    }
}

/// The objects a schedule that can be carried out owns: the trigger's RBAC and CronJob,
/// the archiver, the verify and copy CronJobs.
fn owned(
    schedule: &BackupSchedule,
    observed: &Observed,
    settings: &Settings,
    host: &str,
    kept: &[ScheduledBackup],
) -> Owned {
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
            schedule, archiving, settings, repository, host, major,
        )),
        _ => None,
    };
    let newest_recorded = kept
        .iter()
        .filter(|b| b.phase == Some(crate::api::BackupPhase::Completed) && !b.deleting)
        .filter_map(|b| Some((b.completed_at?, b.recorded.as_ref()?)))
        .max_by_key(|(completed, _)| *completed)
        .map(|(_, (id, sha))| (id.as_str(), sha.as_str()));
    let verify_cron_job = match (&schedule.spec.verify, &schedule.spec.template.repository) {
        (Some(verify), Some(repository)) => Some(build::verify_cron_job(
            schedule,
            verify,
            settings,
            repository,
            major,
            newest_recorded,
        )),
        _ => None,
    };
    let copy_cron_jobs = schedule
        .spec
        .template
        .repository
        .as_ref()
        .map(|repository| copies::cron_jobs(schedule, settings, repository, major))
        .unwrap_or_default();
    Owned {
        account,
        role,
        binding,
        cron_job,
        archiver,
        verify_cron_job,
        copy_cron_jobs,
    }
}

/// Up to when the archive holds every transaction, and the window the archiver proved: from
/// its report, or — when it does not answer — the window as last seen.
fn archive_coverage(
    observed: &Observed,
    old: &BackupScheduleStatus,
) -> (Option<Timestamp>, Option<ProvenWindow>) {
    match &observed.archiver {
        Some(Ok(report)) => (report.covered_until, report.window),
        _ => {
            let window = old.recovery_window.as_ref();
            let point = |t: Option<&Time>| t.map(|t| t.0);
            let proven = window
                .filter(|w| w.proven_by.as_deref() == Some("walArchive"))
                .and_then(|w| {
                    Some(ProvenWindow {
                        from: point(w.first_recoverability_point.as_ref()),
                        until: point(w.last_recoverability_point.as_ref()),
                        timeline: 0,
                        checked_at: point(w.checked_at.as_ref())?,
                    })
                });
            (
                window.and_then(|w| point(w.last_recoverability_point.as_ref())),
                proven,
            )
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
