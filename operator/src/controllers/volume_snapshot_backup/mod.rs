//! The VolumeSnapshotBackup reconciler: observe (StatefulSet, Secrets, pods, claims, the
//! snapshot class, the VolumeSnapshots, the database session) → plan (pure, [`plan`]) →
//! make the Kubernetes changes → write the status → act on the session. On deletion the
//! finalizer leaves nothing half-done: backup mode ended, half-made snapshots deleted, an
//! `offline` StatefulSet scaled back; and the snapshots deleted when `deletionPolicy` (or
//! retention) says so.

pub mod build;
pub mod check;
mod next;
mod observe;
pub mod plan;
mod repository_jobs;
pub mod session;
mod stages;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job};
use kube::{
    Api, ResourceExt,
    api::{Patch, PostParams},
    runtime::controller::Action,
};

use self::{
    observe::{connection, kube_error, observe},
    plan::Step,
    session::SessionKind,
};
use super::{
    Context, Error,
    job_state::JobState,
    one_shot::{self, Purpose},
    reset_backoff,
};
use crate::{
    api::{BackupPhase, VolumeSnapshotBackup, same_status},
    k8s::{
        apply, apply_status, delete_if_exists, delete_in_foreground, finalizer,
        generated::volume_snapshot::VolumeSnapshot,
    },
    postgres::PgConnection,
};

/// The finalizer that holds a VolumeSnapshotBackup until nothing is left half-done.
pub const FINALIZER: &str = "pgbackup.io/volume-snapshots";

/// Reconciles one VolumeSnapshotBackup.
pub async fn reconcile(
    backup: Arc<VolumeSnapshotBackup>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled("VolumeSnapshotBackup");
    let namespace = backup.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<VolumeSnapshotBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let ours = backup.finalizers().iter().any(|f| f == FINALIZER);
    let action = if backup.metadata.deletion_timestamp.is_some() {
        match ours {
            true => match cleanup(&backup, &ctx, &namespace).await? {
                Some(action) => action,
                None => {
                    finalizer::remove(&api, &*backup, FINALIZER).await?;
                    Action::await_change()
                }
            },
            false => Action::await_change(),
        }
    } else {
        finalizer::add(&api, &*backup, FINALIZER).await?;
        apply_spec(&backup, &ctx, &namespace, &api).await?
    };
    reset_backoff(&*backup, &ctx);
    Ok(action)
}

/// Leaves nothing half-done, deletes the snapshots (and the record in the repository) when
/// asked. `None` when done; otherwise when to look again.
async fn cleanup(
    backup: &VolumeSnapshotBackup,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<Action>, Error> {
    let observed = observe(backup, ctx, namespace).await?;
    let deletes = super::deletes_data(backup, backup.spec.deletion_policy);
    let (steps, _) = plan::cleanup(backup, &observed, deletes);
    execute(backup, ctx, namespace, &steps, None).await?;
    if !deletes {
        return Ok(None);
    }
    // A record may be being written: stop its Job first, then forget what it wrote (its
    // id follows from the start time).
    let record_job = build::record_job_name(backup);
    if let Some(JobState::Active { .. }) = &observed.record_job {
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        delete_in_foreground(&jobs, &record_job).await?;
        return Ok(Some(Action::requeue(std::time::Duration::from_secs(5))));
    }
    let status = backup.status.clone().unwrap_or_default();
    let recorded = status.backup_id.clone().or_else(|| {
        observed
            .record_job
            .as_ref()
            .and_then(|_| build::snapshot_record(backup, &status).ok())
            .map(|r| r.backup_id)
    });
    let Some(backup_id) = recorded else {
        return Ok(None);
    };
    let Some(job) = build::forget_job(backup, &ctx.settings.agent, &backup_id) else {
        return Ok(None);
    };
    let purpose = Purpose {
        doing: format!("deleting the record of snapshot backup {backup_id} from the repository"),
        reasons: ["DeletingRecord", "RecordDeleted", "DeleteRecordFailed"],
        give_up: format!("Remove the finalizer {FINALIZER} to give up and keep the record"),
        done: format!("the record of snapshot backup {backup_id} deleted from the repository"),
        left: format!(
            "the record of snapshot backup {backup_id} stays in the repository (`pgbackup prune --backup-id {backup_id} --delete` removes it)"
        ),
    };
    one_shot::run_to_success(
        ctx,
        backup,
        &build::forget_job_name(backup),
        &purpose,
        async || Ok(Ok(job)),
    )
    .await
}

async fn apply_spec(
    backup: &VolumeSnapshotBackup,
    ctx: &Context,
    namespace: &str,
    api: &Api<VolumeSnapshotBackup>,
) -> Result<Action, Error> {
    let finished = matches!(
        backup.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed | BackupPhase::Failed)
    );
    if finished {
        return Ok(Action::await_change());
    }
    let observed = observe(backup, ctx, namespace).await?;
    let plan = plan::plan(backup, &observed, &ctx.settings.agent, Timestamp::now());
    // Credentials are read before anything is written, so that a session that cannot be
    // started leaves the status as it was.
    let connection = match plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::StartSession(_)))
    {
        true => Some(connection(ctx, namespace, backup, &observed).await?),
        false => None,
    };
    let (session_steps, object_steps): (Vec<Step>, Vec<Step>) =
        plan.steps.iter().cloned().partition(Step::is_session);
    execute(backup, ctx, namespace, &object_steps, None).await?;
    let old = backup.status.clone().unwrap_or_default();
    if !same_status(&old, &plan.status) {
        apply_status(api, &backup.name_any(), &plan.status).await?;
    }
    execute(backup, ctx, namespace, &session_steps, connection).await?;
    if let Some(note) = &plan.event {
        tracing::info!(namespace, name = %backup.name_any(), reason = %note.reason, "{}", note.message);
        ctx.publish(backup, note).await;
    }
    record_metrics(backup, &plan.status, ctx);
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

fn record_metrics(
    backup: &VolumeSnapshotBackup,
    status: &crate::api::VolumeSnapshotBackupStatus,
    ctx: &Context,
) {
    if status.phase == Some(BackupPhase::Completed) {
        // The data is in the storage's snapshots: no size of its own here.
        super::record_backup_metrics(
            ctx,
            backup,
            (status.started_at.as_ref(), status.completed_at.as_ref()),
            0,
        );
    }
}

/// Makes the steps, in order.
async fn execute(
    backup: &VolumeSnapshotBackup,
    ctx: &Context,
    namespace: &str,
    steps: &[Step],
    mut connection: Option<PgConnection>,
) -> Result<(), Error> {
    let uid = backup.uid().unwrap_or_default();
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    for step in steps {
        match step {
            Step::StartSession(kind) => {
                if let Some(connection) = connection.take() {
                    start_session(ctx, backup, &uid, connection, kind.clone());
                }
            }
            Step::StopSession => ctx.sessions.stop(&uid),
            Step::EndSession => ctx.sessions.end(&uid),
            Step::CreateSnapshots(objects) => {
                for object in objects {
                    match snapshots.create(&PostParams::default(), object).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(source) => {
                            return Err(Error::Kube {
                                what: format!("create VolumeSnapshot {}", object.name_any()),
                                source,
                            });
                        }
                    }
                }
            }
            Step::AnnotateSnapshots(annotations) => {
                let patch = serde_json::json!({"metadata": {"annotations": annotations}});
                for volume in build::volumes(backup).unwrap_or_default() {
                    match snapshots
                        .patch(
                            &volume.snapshot,
                            &crate::k8s::scale::merge_params(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(_) => {}
                        // Gone: the next look fails the backup with SnapshotDeleted.
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(source) => {
                            return Err(Error::Kube {
                                what: format!("annotate VolumeSnapshot {}", volume.snapshot),
                                source,
                            });
                        }
                    }
                }
            }
            Step::DeleteSnapshots(names) => {
                for name in names {
                    delete_if_exists(&snapshots, name).await?;
                }
            }
            Step::CreateRecordJob(job) => {
                let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
                apply(&jobs, &**job).await?;
            }
            Step::Scale { replicas, original } => {
                scale(ctx, namespace, backup, *replicas, *original).await?;
            }
        }
    }
    Ok(())
}

fn start_session(
    ctx: &Context,
    backup: &VolumeSnapshotBackup,
    uid: &str,
    connection: PgConnection,
    kind: SessionKind,
) {
    tracing::info!(
        namespace = backup.namespace().unwrap_or_default(),
        name = %backup.name_any(),
        target = %connection.target(),
        "starting the database session ({kind:?})"
    );
    let deadline = crate::repository::parse_duration(&backup.spec.snapshot.deadline).unwrap_or(600);
    let max_hold = std::time::Duration::from_secs(u64::try_from(deadline).unwrap_or(600) + 300);
    ctx.sessions.start(uid, connection, kind, max_hold);
}

/// Scales the target StatefulSet, recording (or removing the record of) the replicas to go
/// back to.
async fn scale(
    ctx: &Context,
    namespace: &str,
    backup: &VolumeSnapshotBackup,
    replicas: i32,
    original: Option<i32>,
) -> Result<(), Error> {
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let name = &backup.spec.target.stateful_set;
    let by = build::scaled_down_by(backup);
    crate::k8s::scale::scale(
        &stateful_sets,
        name,
        replicas,
        original.map(|o| (o, by.as_str())),
    )
    .await
    .map_err(kube_error(format!(
        "scale StatefulSet {namespace}/{name} to {replicas}"
    )))
}
