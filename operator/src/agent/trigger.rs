//! `pgbackup trigger`: what a BackupSchedule's CronJob runs. Creates the next backup object
//! from the schedule's template (a PostgresBackup, or a VolumeSnapshotBackup), so a
//! scheduled backup is an object with a status like a manual one, and carries out the
//! schedule's `concurrencyPolicy` against the backups still running.

use clap::Args;
use jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::AgentError;
use crate::{
    api::{
        BackupMethod, BackupPhase, BackupSchedule, ConcurrencyPolicy, PostgresBackup,
        PostgresBackupSpec, ScheduleMethod, VolumeSnapshotBackup, VolumeSnapshotBackupSpec,
    },
    k8s::{
        ANNOTATION_ROW_COUNTS, ANNOTATION_SCHEDULE, LABEL_MANAGED_BY, LABEL_SCHEDULE,
        delete_if_exists, label_value,
    },
};

/// Options of `pgbackup trigger`.
#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// The BackupSchedule whose next backup to create.
    #[arg(long, env = "PGBACKUP_SCHEDULE")]
    pub schedule: String,
    /// Its namespace. Default: the pod's own.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
}

/// What a trigger run does.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Create the next backup object (after deleting these running ones, for `Replace`).
    Create {
        /// Running backups to stop first.
        stop: Vec<String>,
        /// Name of the new object.
        name: String,
    },
    /// Skip this run, and why.
    Skip(String),
}

/// The name of the backup object a run at `now` creates: `<schedule>-<UTC time>`.
pub fn backup_name(schedule: &str, now: Timestamp) -> String {
    let stamp = now.strftime("%Y%m%d%H%M%S").to_string();
    let head: String = schedule.chars().take(253 - stamp.len() - 1).collect();
    format!("{head}-{stamp}")
}

/// Whether a backup with this phase is still under way.
fn running(phase: Option<BackupPhase>) -> bool {
    matches!(
        phase,
        None | Some(BackupPhase::Pending | BackupPhase::Running)
    )
}

/// Decides a run, given the schedule's backup objects as `(name, phase)`.
pub fn decide(
    schedule: &BackupSchedule,
    backups: &[(String, Option<BackupPhase>)],
    now: Timestamp,
) -> Decision {
    let name = backup_name(&schedule.name_any(), now);
    if backups.iter().any(|(n, _)| *n == name) {
        return Decision::Skip(format!(
            "backup {name} exists already (this run was triggered twice)"
        ));
    }
    let busy: Vec<String> = backups
        .iter()
        .filter(|(_, phase)| running(*phase))
        .map(|(n, _)| n.clone())
        .collect();
    match schedule.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !busy.is_empty() => Decision::Skip(format!(
            "backup {} is still running (concurrencyPolicy: Forbid)",
            busy.join(", ")
        )),
        ConcurrencyPolicy::Replace => Decision::Create { stop: busy, name },
        _ => Decision::Create {
            stop: Vec::new(),
            name,
        },
    }
}

/// The PostgresBackup a logical or physical schedule creates.
pub fn postgres_backup(
    schedule: &BackupSchedule,
    name: &str,
) -> Result<PostgresBackup, AgentError> {
    let template = &schedule.spec.template;
    let method = match schedule.spec.method {
        ScheduleMethod::Logical => BackupMethod::Logical,
        ScheduleMethod::Physical => BackupMethod::Physical,
        ScheduleMethod::VolumeSnapshot => {
            return Err(AgentError::Invalid(
                "a volumeSnapshot schedule creates VolumeSnapshotBackups".into(),
            ));
        }
    };
    let repository = template.repository.clone().ok_or_else(|| {
        AgentError::Invalid(format!(
            "BackupSchedule {} has no template.repository",
            schedule.name_any()
        ))
    })?;
    let spec = PostgresBackupSpec {
        target: template.target.clone(),
        repository,
        method,
        logical: template
            .logical
            .clone()
            .filter(|_| method == BackupMethod::Logical),
        physical: template
            .physical
            .clone()
            .filter(|_| method == BackupMethod::Physical),
        deletion_policy: template.deletion_policy,
        verify: None,
        job: template.job.clone(),
    };
    let mut backup = PostgresBackup::new(name, spec);
    label(&mut backup, schedule);
    if schedule.spec.verify.is_some() {
        // The schedule's restore tests compare rows with the counts its backups record.
        backup
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_ROW_COUNTS.into(), "true".into());
    }
    Ok(backup)
}

/// The VolumeSnapshotBackup a volumeSnapshot schedule creates.
pub fn volume_snapshot_backup(schedule: &BackupSchedule, name: &str) -> VolumeSnapshotBackup {
    let template = &schedule.spec.template;
    let spec = VolumeSnapshotBackupSpec {
        target: template.target.clone(),
        snapshot: template.volume_snapshot.clone().unwrap_or_default(),
        deletion_policy: template.deletion_policy,
        repository: template.repository.clone(),
        // The schedule's template.job places every pod it runs.
        placement: template.job.placement.clone(),
        resources: template.job.resources.clone(),
    };
    let mut backup = VolumeSnapshotBackup::new(name, spec);
    label(&mut backup, schedule);
    backup
}

/// Backup objects are labelled with their schedule but not owned by it: deleting a
/// schedule must not delete its backups.
fn label<K: Resource>(object: &mut K, schedule: &BackupSchedule) {
    let labels = object
        .meta_mut()
        .labels
        .get_or_insert_with(Default::default);
    labels.insert(LABEL_SCHEDULE.into(), label_value(&schedule.name_any()));
    labels.insert(LABEL_MANAGED_BY.into(), "pgbackup".into());
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_SCHEDULE.into(), schedule.name_any());
    object.meta_mut().namespace = schedule.namespace();
}

/// Runs the trigger in the pod.
pub async fn run(args: &TriggerArgs) -> Result<String, AgentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .map_err(|e| AgentError::Invalid(format!("cannot reach the Kubernetes API: {e}")))?;
    trigger(client, &args.namespace, &args.schedule, Timestamp::now()).await
}

/// What failed, in the API server's own words for a refusal (not the whole response).
pub(crate) fn api_error(what: String) -> impl FnOnce(kube::Error) -> AgentError {
    move |e| match e {
        kube::Error::Api(status) => {
            AgentError::Invalid(format!("{what}: {} ({})", status.message, status.reason))
        }
        other => AgentError::Invalid(format!("{what}: {other}")),
    }
}

/// One trigger run against the API: reads the schedule, applies its concurrency policy,
/// creates the backup object. Returns what it did, one line.
pub async fn trigger(
    client: Client,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<String, AgentError> {
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let schedule = schedules
        .get_opt(name)
        .await
        .map_err(api_error(format!("read BackupSchedule {namespace}/{name}")))?
        .ok_or_else(|| {
            AgentError::Invalid(format!("BackupSchedule {namespace}/{name} does not exist"))
        })?;
    match schedule.spec.method {
        ScheduleMethod::VolumeSnapshot => {
            let api: Api<VolumeSnapshotBackup> = Api::namespaced(client, namespace);
            let existing = phases(&api, name, |b: &VolumeSnapshotBackup| {
                b.status.as_ref().and_then(|s| s.phase)
            })
            .await?;
            carry_out(&api, &schedule, &existing, now, |n| {
                Ok(volume_snapshot_backup(&schedule, n))
            })
            .await
        }
        _ => {
            let api: Api<PostgresBackup> = Api::namespaced(client, namespace);
            let existing = phases(&api, name, |b: &PostgresBackup| {
                b.status.as_ref().and_then(|s| s.phase)
            })
            .await?;
            carry_out(&api, &schedule, &existing, now, |n| {
                postgres_backup(&schedule, n)
            })
            .await
        }
    }
}

async fn phases<K>(
    api: &Api<K>,
    schedule: &str,
    phase: impl Fn(&K) -> Option<BackupPhase>,
) -> Result<Vec<(String, Option<BackupPhase>)>, AgentError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(&crate::k8s::schedule_selector(schedule)))
        .await
        .map_err(api_error(format!("list the backups of {schedule}")))?;
    Ok(list
        .items
        .iter()
        .filter(|b| b.meta().deletion_timestamp.is_none())
        .map(|b| (b.name_any(), phase(b)))
        .collect())
}

async fn carry_out<K>(
    api: &Api<K>,
    schedule: &BackupSchedule,
    existing: &[(String, Option<BackupPhase>)],
    now: Timestamp,
    build: impl FnOnce(&str) -> Result<K, AgentError>,
) -> Result<String, AgentError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match decide(schedule, existing, now) {
        Decision::Skip(why) => {
            tracing::info!(schedule = %schedule.name_any(), "skipped: {why}");
            Ok(format!("skipped: {why}"))
        }
        Decision::Create { stop, name } => {
            for running in &stop {
                delete_if_exists(api, running)
                    .await
                    .map_err(|e| AgentError::Invalid(e.to_string()))?;
                tracing::info!(backup = %running, "stopped {running} (concurrencyPolicy: Replace)");
            }
            let object = build(&name)?;
            api.create(&PostParams::default(), &object)
                .await
                .map_err(api_error(format!("create {} {name}", K::kind(&()))))?;
            tracing::info!(backup = %name, "created {} {name}", K::kind(&()));
            Ok(format!("created {} {name}", K::kind(&())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::schedule;

    fn at() -> Timestamp {
        "2026-11-21T02:30:00Z".parse().expect("time")
    }

    #[test]
    fn names_carry_the_schedule_and_the_time() {
        assert_eq!(backup_name("nightly", at()), "nightly-20261121023000");
        assert!(backup_name(&"n".repeat(300), at()).len() <= 253);
    }

    #[test]
    fn forbid_skips_while_a_backup_runs_and_replace_stops_it() {
        let mut schedule = schedule();
        let busy = vec![
            ("nightly-1".to_string(), Some(BackupPhase::Completed)),
            ("nightly-2".to_string(), Some(BackupPhase::Running)),
        ];
        assert!(
            matches!(decide(&schedule, &busy, at()), Decision::Skip(why) if why.contains("nightly-2"))
        );
        assert_eq!(
            decide(&schedule, &busy[..1], at()),
            Decision::Create {
                stop: vec![],
                name: "nightly-20261121023000".into()
            }
        );
        schedule.spec.concurrency_policy = ConcurrencyPolicy::Replace;
        assert_eq!(
            decide(&schedule, &busy, at()),
            Decision::Create {
                stop: vec!["nightly-2".into()],
                name: "nightly-20261121023000".into()
            }
        );
        schedule.spec.concurrency_policy = ConcurrencyPolicy::Allow;
        assert_eq!(
            decide(&schedule, &busy, at()),
            Decision::Create {
                stop: vec![],
                name: "nightly-20261121023000".into()
            }
        );
    }

    #[test]
    fn the_backup_object_comes_from_the_template() {
        let schedule = schedule();
        let backup = postgres_backup(&schedule, "nightly-20261121023000").expect("backup");
        assert_eq!(backup.spec.method, BackupMethod::Physical);
        assert_eq!(backup.spec.target, schedule.spec.template.target);
        assert_eq!(
            Some(&backup.spec.repository),
            schedule.spec.template.repository.as_ref()
        );
        assert_eq!(backup.labels()[LABEL_SCHEDULE], "nightly");
        assert_eq!(backup.namespace().as_deref(), Some("shop"));
        assert!(
            backup.metadata.owner_references.is_none(),
            "backups outlive their schedule"
        );
    }

    #[test]
    fn a_schedule_with_restore_tests_asks_its_backups_for_row_counts() {
        let mut schedule = schedule();
        let plain = postgres_backup(&schedule, "nightly-1").expect("backup");
        assert!(!plain.annotations().contains_key(ANNOTATION_ROW_COUNTS));
        schedule.spec.verify = Some(crate::api::ScheduledVerify {
            schedule: "0 6 * * 0".into(),
        });
        let counted = postgres_backup(&schedule, "nightly-2").expect("backup");
        assert_eq!(
            counted
                .annotations()
                .get(ANNOTATION_ROW_COUNTS)
                .map(String::as_str),
            Some("true")
        );
        assert!(
            counted.spec.verify.is_none(),
            "the schedule runs the tests, not each backup"
        );
    }
}
