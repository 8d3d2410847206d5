//! The decisions of a PostgresBackup reconcile (pure): given the object and what was
//! observed, whether to start the Job, the next status, and the Event to tell users.

use jiff::Timestamp;
use k8s_openapi::{api::batch::v1::Job, apimachinery::pkg::apis::meta::v1::Time};
use kube::ResourceExt;

pub(crate) use super::spec_rules::check_physical;
pub use super::spec_rules::validate;
use super::{build, status::Next, verification};
use crate::{
    api::{
        BackupPhase, CONDITION_PROGRESSING, CONDITION_READY, PostgresBackup, PostgresBackupStatus,
        STATUS_FALSE, STATUS_TRUE,
    },
    controllers::{
        Note,
        job_state::JobState,
        references::{self, References},
        step_plan::finish_conditions,
    },
    k8s::agent_pod::{self, AgentSettings},
};

/// What the reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The StatefulSet and Secrets the spec refers to.
    pub references: References,
    /// The backup Job, if it exists.
    pub job: Option<JobState>,
    /// The restore-test Job, if it exists.
    pub verify_job: Option<JobState>,
    /// Before the Job is made: the StatefulSet's headless Service, if it exists.
    pub service: Option<k8s_openapi::api::core::v1::Service>,
    /// Before the Job is made: the ConfigMaps its pods use that exist.
    pub config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
}

/// What the reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// A Job to create.
    pub job: Option<Job>,
    /// The ConfigMap that carries the Kubernetes configuration to that Job.
    pub configuration: Option<k8s_openapi::api::core::v1::ConfigMap>,
    /// The status to write.
    pub status: PostgresBackupStatus,
    /// An Event to publish.
    pub event: Option<Note>,
}

/// The backup objects whose incremental backups build on `backup_id` (in the same
/// repository, of the same StatefulSet): while any is there, deleting `backup_id`'s data
/// would leave it unrestorable, so the clean-up waits for them to go first.
pub fn incrementals_on(
    backup: &PostgresBackup,
    backup_id: &str,
    others: &[PostgresBackup],
) -> Vec<String> {
    let mut names: Vec<String> = others
        .iter()
        .filter(|other| {
            other.spec.repository == backup.spec.repository
                && other.spec.target.stateful_set == backup.spec.target.stateful_set
                && other.status.as_ref().and_then(|s| s.parent.as_deref()) == Some(backup_id)
        })
        .map(kube::ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

pub fn plan(
    backup: &PostgresBackup,
    observed: &Observed,
    settings: &AgentSettings,
    now: Timestamp,
) -> Plan {
    let old = backup.status.clone().unwrap_or_default();
    let mut next = Next {
        status: PostgresBackupStatus {
            observed_generation: backup.metadata.generation,
            ..old.clone()
        },
        generation: backup.metadata.generation,
        now: Time(now),
    };
    let job_name = build::backup_job_name(backup);
    let mut job = None;
    let mut configuration = None;

    if matches!(
        old.phase,
        Some(BackupPhase::Completed | BackupPhase::Failed)
    ) {
        // Finished for good: the spec cannot change, so there is nothing more to do.
    } else if let Err(problem) = validate(backup) {
        next.failed(problem.reason, &problem.message);
    } else {
        match &observed.job {
            // The Job was created (its name is recorded only after) and is gone before its
            // result was read: deleted by hand, or by its TTL while the operator was away.
            // Never start another: a second backup behind the user's back is no answer.
            None if old.job_name.is_some() => {
                next.failed(
                    "JobLost",
                    &format!("the backup Job {job_name} was removed before its result was recorded; `pgbackup list` shows what the repository holds"),
                );
            }

            None => {
                (job, configuration) = start(backup, observed, settings, &mut next, &job_name);
            }
            Some(state) => next.follow(state, &job_name),
        }
    }

    let verification = if next.status.phase == Some(BackupPhase::Completed) {
        verification::step(
            backup,
            observed.verify_job.as_ref(),
            &mut next.status,
            settings,
            &next.now,
        )
    } else {
        verification::Step::default()
    };
    job = job.or(verification.job);
    finish_conditions(
        &mut next.status.conditions,
        Some(&backup.spec.target),
        Some(&backup.spec.repository),
        false,
        backup.metadata.generation,
        Time(now),
    );
    let event = transition_note(&old, &next.status).or(verification.event);
    Plan {
        job,
        configuration,
        status: next.status,
        event,
    }
}

/// No Job yet: once the references resolve, the backup Job and the ConfigMap that carries
/// the Kubernetes configuration to it; until then, waiting.
fn start(
    backup: &PostgresBackup,
    observed: &Observed,
    settings: &AgentSettings,
    next: &mut Next,
    job_name: &str,
) -> (Option<Job>, Option<k8s_openapi::api::core::v1::ConfigMap>) {
    let namespace = backup.namespace().unwrap_or_default();
    let spec = &backup.spec;
    let host = match references::check(
        &namespace,
        &spec.target,
        Some(&spec.repository),
        &observed.references,
    ) {
        Ok(host) => host,
        Err(problem) => {
            next.waiting(problem.reason, &problem.message);
            return (None, None);
        }
    };
    let major = observed
        .references
        .stateful_set
        .as_ref()
        .and_then(agent_pod::postgres_major)
        .unwrap_or(settings.default_major);
    let job = build::backup_job(backup, settings, &host, major);
    let configuration = observed.references.stateful_set.as_ref().map(|sts| {
        let document =
            super::configuration::document(sts, observed.service.as_ref(), &observed.config_maps);
        next.status.configuration_sha256 = Some(super::configuration::digest(&document));
        super::configuration::config_map(backup, document)
    });
    next.status.job_name = Some(job_name.to_string());
    next.status.phase = Some(BackupPhase::Pending);
    next.status.message = Some(format!("backup Job {job_name} created"));
    next.condition(
        CONDITION_READY,
        STATUS_FALSE,
        "Pending",
        "the backup Job is starting",
    );
    next.condition(
        CONDITION_PROGRESSING,
        STATUS_TRUE,
        "JobCreated",
        &format!("backup Job {job_name} created"),
    );
    (Some(job), configuration)
}

/// The Event for a change of phase (or of the reason a backup waits).
fn transition_note(old: &PostgresBackupStatus, new: &PostgresBackupStatus) -> Option<Note> {
    let ready_reason = |s: &PostgresBackupStatus| {
        crate::api::find_condition(&s.conditions, CONDITION_READY).map(|c| c.reason.clone())
    };
    if old.phase == new.phase && ready_reason(old) == ready_reason(new) {
        return None;
    }
    let message = new.message.clone().unwrap_or_default();
    match new.phase? {
        BackupPhase::Pending if new.job_name.is_some() && old.job_name.is_none() => {
            Some(Note::normal("Started", message))
        }
        BackupPhase::Pending => Some(Note::warning(&ready_reason(new)?, message)),
        BackupPhase::Running => None,
        BackupPhase::Completed => Some(Note::normal("Completed", message)),
        BackupPhase::Failed => Some(Note::warning(&ready_reason(new)?, message)),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
