//! The VolumeSnapshotBackup reconciler: observe (StatefulSet, Secrets, pods, claims, the
//! snapshot class, the VolumeSnapshots, the database session) → plan (pure, [`plan`]) →
//! make the Kubernetes changes → write the status → act on the session. On deletion the
//! finalizer leaves nothing half-done: backup mode ended, half-made snapshots deleted, an
//! `offline` StatefulSet scaled back; and the snapshots deleted when `deletionPolicy` (or
//! retention) says so.

pub mod build;
pub mod plan;
pub mod session;

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::Job,
        core::v1::{PersistentVolumeClaim, Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    },
    runtime::controller::Action,
};

use self::{
    plan::{Observed, Step},
    session::SessionKind,
};
use super::{
    Context, Error,
    one_shot::{self, Purpose},
    references, reset_backoff,
};
use crate::{
    api::{BackupPhase, DatabaseTarget, DeletionPolicy, VolumeSnapshotBackup, same_conditions},
    k8s::{
        ANNOTATION_DELETE_DATA, FIELD_MANAGER, apply, apply_status, delete_if_exists, finalizer,
        generated::volume_snapshot::VolumeSnapshot, get_opt,
    },
    postgres::{ConnectionArgs, PgConnection},
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
    let deletes = deletes_data(backup);
    let (steps, _) = plan::cleanup(backup, &observed, deletes);
    execute(backup, ctx, namespace, &steps, None).await?;
    let recorded = backup.status.as_ref().and_then(|s| s.backup_id.clone());
    let (Some(backup_id), true) = (recorded, deletes) else {
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

/// Whether deleting the object deletes its snapshots.
pub fn deletes_data(backup: &VolumeSnapshotBackup) -> bool {
    backup.spec.deletion_policy == DeletionPolicy::Delete
        || backup
            .annotations()
            .get(ANNOTATION_DELETE_DATA)
            .is_some_and(|v| v == "true")
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

/// Statuses equal but for condition times.
fn same_status(
    a: &crate::api::VolumeSnapshotBackupStatus,
    b: &crate::api::VolumeSnapshotBackupStatus,
) -> bool {
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    a2.conditions.clear();
    b2.conditions.clear();
    a2 == b2 && same_conditions(&a.conditions, &b.conditions)
}

fn record_metrics(
    backup: &VolumeSnapshotBackup,
    status: &crate::api::VolumeSnapshotBackupStatus,
    ctx: &Context,
) {
    if status.phase != Some(BackupPhase::Completed) {
        return;
    }
    let (Some(Time(start)), Some(Time(end))) = (&status.started_at, &status.completed_at) else {
        return;
    };
    let series = backup
        .annotations()
        .get(crate::k8s::ANNOTATION_SCHEDULE)
        .cloned()
        .unwrap_or_else(|| backup.name_any());
    let end_seconds = end.as_millisecond() as f64 / 1000.0;
    let seconds = (end.as_millisecond() - start.as_millisecond()) as f64 / 1000.0;
    ctx.metrics.backup_completed(
        &backup.namespace().unwrap_or_default(),
        &series,
        end_seconds,
        seconds,
        0,
    );
}

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

/// The VolumeSnapshotClass API, read as a dynamic object (its kind has no spec to type).
fn class_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
    ))
}

async fn observe(
    backup: &VolumeSnapshotBackup,
    ctx: &Context,
    namespace: &str,
) -> Result<Observed, Error> {
    let target = &backup.spec.target;
    let references = references::fetch(
        &ctx.client,
        namespace,
        target,
        backup.spec.repository.as_ref(),
    )
    .await?;
    let pods = match &references.stateful_set {
        Some(stateful_set) => list_pods(ctx, namespace, stateful_set).await?,
        None => Vec::new(),
    };
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let mut claims = Vec::new();
    for volume in build::volumes(backup).unwrap_or_default() {
        if get_opt(&claims_api, &volume.claim).await?.is_some() {
            claims.push(volume.claim);
        }
    }
    let class_found = match &backup.spec.snapshot.volume_snapshot_class_name {
        Some(class) => {
            let classes: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &class_resource());
            let found = classes
                .get_opt(class)
                .await
                .map_err(kube_error(format!("get VolumeSnapshotClass {class}")))?;
            Some(found.is_some())
        }
        None => None,
    };
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let snapshots = snapshots
        .list(&ListParams::default().labels(&build::selector(backup)))
        .await
        .map_err(kube_error(format!(
            "list VolumeSnapshots in {namespace} (is the snapshot.storage.k8s.io/v1 API installed?)"
        )))?
        .items
        .into_iter()
        .filter(|s| build::belongs_to(s, backup))
        .collect();
    let record_job =
        super::postgres_backup::observe_job(ctx, namespace, &build::record_job_name(backup))
            .await?;
    Ok(Observed {
        record_job,
        references,
        pods,
        claims,
        class_found,
        session: ctx.sessions.state(&backup.uid().unwrap_or_default()),
        snapshots,
    })
}

async fn list_pods(
    ctx: &Context,
    namespace: &str,
    stateful_set: &StatefulSet,
) -> Result<Vec<Pod>, Error> {
    let selector = stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(format!(
            "list pods of StatefulSet {}",
            stateful_set.name_any()
        )))?;
    Ok(list.items)
}

/// The connection to the database, with the credentials (and CA) read from the Secrets.
async fn connection(
    ctx: &Context,
    namespace: &str,
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
) -> Result<PgConnection, Error> {
    let target = &backup.spec.target;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let creds = &target.credentials_secret;
    let secret = secrets.get(&creds.name).await.map_err(kube_error(format!(
        "read Secret {namespace}/{}",
        creds.name
    )))?;
    let user = secret_bytes(&secret, &creds.username_key);
    let password = secret_bytes(&secret, &creds.password_key);
    let ca = match &target.ssl_root_cert {
        Some(ca) => {
            let secret = secrets
                .get(&ca.name)
                .await
                .map_err(kube_error(format!("read Secret {namespace}/{}", ca.name)))?;
            secret_bytes(&secret, &ca.key)
        }
        None => None,
    };
    let host = operator_host(target, observed, namespace);
    let args = ConnectionArgs {
        pg_host: host,
        pg_port: u16::try_from(target.port).unwrap_or(5432),
        pg_user: user
            .and_then(|u| String::from_utf8(u).ok())
            .unwrap_or_else(|| "postgres".into()),
        pg_database: target.database.clone(),
        pg_sslmode: target.ssl_mode.as_libpq().into(),
        pg_sslrootcert: None,
        pg_connect_timeout: 10,
    };
    Ok(PgConnection::with_secrets(
        args,
        password.and_then(|p| String::from_utf8(p).ok()),
        ca,
    ))
}

fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

/// The host the operator connects to: `target.host` as given, else the primary pod's DNS
/// name qualified with the namespace (the operator runs in a namespace of its own).
fn operator_host(target: &DatabaseTarget, observed: &Observed, namespace: &str) -> String {
    let host = observed
        .references
        .stateful_set
        .as_ref()
        .and_then(|s| crate::k8s::agent_pod::database_host(target, s))
        .unwrap_or_default();
    if target.host.as_ref().is_some_and(|h| !h.is_empty()) {
        host
    } else {
        format!("{host}.{namespace}.svc")
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
                    snapshots
                        .patch(
                            &volume.snapshot,
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                        .map_err(kube_error(format!(
                            "annotate VolumeSnapshot {}",
                            volume.snapshot
                        )))?;
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
    ctx.sessions.start(uid, connection, kind);
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
    let annotations: BTreeMap<&str, Option<String>> = BTreeMap::from([
        (
            build::ANNOTATION_ORIGINAL_REPLICAS,
            original.map(|o| o.to_string()),
        ),
        (
            build::ANNOTATION_SCALED_DOWN_BY,
            original.map(|_| build::scaled_down_by(backup)),
        ),
    ]);
    let patch = serde_json::json!({
        "metadata": {"annotations": annotations},
        "spec": {"replicas": replicas},
    });
    tracing::info!(namespace, statefulset = %name, replicas, "scaling for an offline snapshot");
    stateful_sets
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(kube_error(format!(
            "scale StatefulSet {namespace}/{name} to {replicas}"
        )))?;
    Ok(())
}
