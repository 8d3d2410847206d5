//! The PostgresBackup reconciler: observe (StatefulSet, Secrets, the Job and its pods) →
//! plan (pure, [`plan`]) → create the Job → write the status; and, on deletion, the
//! finalizer that deletes the backup's data when `deletionPolicy` (or retention) says so.

pub mod build;
pub mod configuration;
pub mod plan;
mod spec_rules;
mod status;
mod verification;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Service},
};
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::{
    Context, Error, RESYNC,
    job_state::JobState,
    jobs::observe_job,
    one_shot::{self, Purpose},
    references, reset_backoff,
};
use crate::{
    agent::backup::BackupReport,
    api::{BackupPhase, PostgresBackup, same_status},
    k8s::{apply, apply_status, delete_in_foreground, finalizer, get_opt},
};

/// The finalizer that holds a backup object until its data is dealt with.
pub const FINALIZER: &str = "pgbackup.io/backup-data";

/// Reconciles one PostgresBackup.
pub async fn reconcile(backup: Arc<PostgresBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("PostgresBackup");
    let namespace = backup.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let ours = backup.finalizers().iter().any(|f| f == FINALIZER);
    let action = if backup.metadata.deletion_timestamp.is_some() && !ours {
        // Done already, or the user removed our finalizer to give up: leave it be.
        Action::await_change()
    } else if backup.metadata.deletion_timestamp.is_some() {
        match cleanup(&backup, &ctx, &namespace).await? {
            Some(action) => action,
            None => {
                finalizer::remove(&api, &*backup, FINALIZER).await?;
                Action::await_change()
            }
        }
    } else {
        finalizer::add(&api, &*backup, FINALIZER).await?;
        apply_spec(&backup, &ctx, &namespace, &api).await?
    };
    reset_backoff(&*backup, &ctx);
    Ok(action)
}

/// The StatefulSet's headless Service and the ConfigMaps its pods use, as they exist.
async fn read_configuration(
    ctx: &Context,
    namespace: &str,
    stateful_set: &k8s_openapi::api::apps::v1::StatefulSet,
) -> Result<(Option<Service>, Vec<ConfigMap>), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let service_name = stateful_set
        .spec
        .as_ref()
        .map(|s| s.service_name.clone().unwrap_or_default())
        .filter(|name| !name.is_empty());
    let service = match service_name {
        Some(name) => get_opt(&services, &name).await?,
        None => None,
    };
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let mut config_maps = Vec::new();
    for name in configuration::referenced_config_maps(stateful_set) {
        config_maps.extend(get_opt(&maps, &name).await?);
    }
    Ok((service, config_maps))
}

async fn apply_spec(
    backup: &PostgresBackup,
    ctx: &Context,
    namespace: &str,
    api: &Api<PostgresBackup>,
) -> Result<Action, Error> {
    let finished = matches!(
        backup.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed | BackupPhase::Failed)
    );
    let status = backup.status.clone().unwrap_or_default();
    let observed = if finished {
        plan::Observed {
            verify_job: if verification::pending(backup, &status) {
                observe_job(ctx, namespace, &build::verify_job_name(backup)).await?
            } else {
                None
            },
            ..plan::Observed::default()
        }
    } else {
        let references = references::fetch(
            &ctx.client,
            namespace,
            &backup.spec.target,
            Some(&backup.spec.repository),
        )
        .await?;
        let job = observe_job(ctx, namespace, &build::backup_job_name(backup)).await?;
        // What the backup stores of the database's Kubernetes objects, read only when its
        // Job is about to be made.
        let (service, config_maps) = match &references.stateful_set {
            Some(sts) if job.is_none() && status.job_name.is_none() => {
                read_configuration(ctx, namespace, sts).await?
            }
            _ => (None, Vec::new()),
        };
        plan::Observed {
            references,
            job,
            verify_job: None,
            service,
            config_maps,
        }
    };
    let plan = plan::plan(backup, &observed, &ctx.settings.agent, Timestamp::now());
    if let (Some(map), Some(_)) = (&plan.configuration, &plan.job) {
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        // Without it the backup still runs (the Job's volume is optional), only without
        // its Kubernetes configuration.
        if let Err(err) = apply(&maps, map).await {
            tracing::warn!(namespace, name = %backup.name_any(), "the backup's Kubernetes configuration is not stored: {err}");
        }
    }
    if let Some(job) = &plan.job {
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        apply(&jobs, job).await?;
    }
    let old = backup.status.clone().unwrap_or_default();
    if !same_status(&old, &plan.status) {
        apply_status(api, &backup.name_any(), &plan.status).await?;
    }
    if let Some(note) = &plan.event {
        tracing::info!(namespace, name = %backup.name_any(), reason = %note.reason, "{}", note.message);
        ctx.publish(backup, note).await;
    }
    record_metrics(backup, &plan.status, ctx);
    Ok(match plan.status.phase {
        Some(BackupPhase::Completed | BackupPhase::Failed) => Action::await_change(),
        // Waiting for a StatefulSet or Secret the operator does not watch.
        Some(BackupPhase::Pending) if plan.job.is_none() && observed.job.is_none() => {
            Action::requeue(Duration::from_secs(30))
        }
        // A Job whose pod is never made changes nothing the controller watches: look again
        // when it would be overdue ([`super::job_start`]).
        _ => Action::requeue(RESYNC.min(ctx.settings.pod_start_timeout)),
    })
}

fn record_metrics(
    backup: &PostgresBackup,
    status: &crate::api::PostgresBackupStatus,
    ctx: &Context,
) {
    if status.phase == Some(BackupPhase::Completed) {
        super::record_backup_metrics(
            ctx,
            backup,
            (status.started_at.as_ref(), status.completed_at.as_ref()),
            status.stored_size.unwrap_or_default(),
        );
    }
}

/// Deals with the data of a deleted backup. `None` when done (the finalizer may go);
/// otherwise when to look again.
async fn cleanup(
    backup: &PostgresBackup,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<Action>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    // A backup still running is stopped, and waited for: until its pod has gone it may
    // still write its manifest.
    let backup_job = observe_job(ctx, namespace, &build::backup_job_name(backup)).await?;
    if let Some(JobState::Active { .. }) = backup_job {
        delete_in_foreground(&jobs, &build::backup_job_name(backup)).await?;
        return Ok(Some(Action::requeue(Duration::from_secs(5))));
    }
    // A backup that finished just before its object was deleted: its id is in the Job's
    // report even when the status never recorded it.
    let reported = match &backup_job {
        Some(JobState::Succeeded { result, .. }) => result
            .as_deref()
            .and_then(|r| serde_json::from_str::<BackupReport>(r).ok())
            .map(|r| r.backup_id),
        _ => None,
    };
    let backup_id = backup
        .status
        .as_ref()
        .and_then(|s| s.backup_id.clone())
        .or(reported);
    let Some(backup_id) =
        backup_id.filter(|_| super::deletes_data(backup, backup.spec.deletion_policy))
    else {
        return Ok(None);
    };
    // Incremental backups built on this one go first (a schedule deletes a chain newest
    // first; by hand, deleting them all at once resolves in that order too).
    let all: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let others = all
        .list(&Default::default())
        .await
        .map_err(|source| Error::Kube {
            what: "listing the backups of the namespace".into(),
            source,
        })?
        .items;
    let dependents = plan::incrementals_on(backup, &backup_id, &others);
    if !dependents.is_empty() {
        let note = format!(
            "backup {backup_id} stays until the incremental backups built on it are deleted: {}",
            dependents.join(", ")
        );
        ctx.publish(backup, &super::Note::normal("WaitingForIncrementals", note))
            .await;
        return Ok(Some(Action::requeue(Duration::from_secs(15))));
    }
    let purpose = Purpose {
        doing: format!("deleting backup {backup_id} from the repository"),
        reasons: ["DeletingData", "DataDeleted", "DeleteDataFailed"],
        give_up: format!("Remove the finalizer {FINALIZER} to give up and keep the data"),
        done: format!("backup {backup_id} deleted from the repository"),
        left: format!(
            "backup {backup_id} stays in the repository (`pgbackup prune --backup-id {backup_id} --delete` removes it)"
        ),
    };
    let job = build::delete_job(backup, &ctx.settings.agent, &backup_id);
    one_shot::run_to_success(
        ctx,
        backup,
        &build::delete_job_name(backup),
        &purpose,
        async || Ok(Ok(job)),
    )
    .await
}
