//! The PointInTimeRestore reconciler: observe (the StatefulSet, its pods and claims, the
//! source, other restores, the restore's Jobs, the clone, and — while verifying — the
//! restored server itself) → plan (pure, [`plan`]) → make the changes → write the status.
//! Deleting a restore that is under way rolls it back first (finalizer), so a StatefulSet
//! is never left scaled down or on half-restored data.

pub mod build;
mod claim_limits;
pub mod logical;
mod phases;
pub mod plan;
mod snapshot_source;
mod volumes;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    batch::v1::Job,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};

pub use phases::{SETTLE_SECONDS, gitops_manager, parse_postgres_time};
use plan::{Observed, ServerState, SourceObject, Step};

use super::{
    Context, Error, database, job_state::JobState, jobs::observe_job, references, reset_backoff,
};
use crate::{
    api::{
        BackupSchedule, PointInTimeRestore, PostgresBackup, RestoreMode, RestorePhase,
        VolumeSnapshotBackup, same_status,
    },
    k8s::{
        LABEL_JOB_NAME, apply, apply_status, delete_if_exists, delete_in_foreground, finalizer,
        get_opt, scale,
    },
    postgres::ServerInfo,
};

/// The finalizer that holds a restore until the StatefulSet is safe.
pub const FINALIZER: &str = "pgbackup.io/restore";

/// Reconciles one PointInTimeRestore.
pub async fn reconcile(
    restore: Arc<PointInTimeRestore>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled("PointInTimeRestore");
    let namespace = restore.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PointInTimeRestore> = Api::namespaced(ctx.client.clone(), &namespace);
    let ours = restore.finalizers().iter().any(|f| f == FINALIZER);
    let action = if restore.metadata.deletion_timestamp.is_some() {
        if ours {
            match undo_before_deletion(&restore, &ctx, &namespace, &api).await? {
                Some(action) => action,
                None => {
                    finalizer::remove(&api, &*restore, FINALIZER).await?;
                    Action::await_change()
                }
            }
        } else {
            Action::await_change()
        }
    } else {
        finalizer::add(&api, &*restore, FINALIZER).await?;
        step(&restore, &ctx, &namespace, &api).await?
    };
    reset_backoff(&*restore, &ctx);
    Ok(action)
}

/// A restore deleted while it holds the StatefulSet is rolled back first.
async fn undo_before_deletion(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<Option<Action>, Error> {
    let status = restore.status.clone().unwrap_or_default();
    // A logical restore holds nothing: deleting it stops its Job (a partial restore runs
    // in one transaction, which then rolls back).
    let holding = restore.spec.mode == RestoreMode::InPlace
        && restore.spec.logical.is_none()
        && matches!(
            status.phase,
            Some(
                RestorePhase::ScalingDown
                    | RestorePhase::Restoring
                    | RestorePhase::ScalingUp
                    | RestorePhase::Verifying
                    | RestorePhase::RollingBack
            )
        );
    if !holding {
        return Ok(None);
    }
    let mut deleting = restore.clone();
    let mut next = status;
    if next.phase != Some(RestorePhase::RollingBack) {
        next.phase = Some(RestorePhase::RollingBack);
        next.failure_reason = Some("Deleted".into());
        next.message = Some("the restore was deleted while under way".into());
    }
    deleting.status = Some(next);
    let (_, phase) = step_to(&deleting, ctx, namespace, api).await?;
    let done = matches!(
        phase,
        Some(RestorePhase::RolledBack | RestorePhase::Completed | RestorePhase::Failed)
    );
    Ok((!done).then(|| Action::requeue(plan::POLL)))
}

async fn step(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<Action, Error> {
    Ok(step_to(restore, ctx, namespace, api).await?.0)
}

/// One reconcile step; the action and the phase it left the restore in.
async fn step_to(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<(Action, Option<RestorePhase>), Error> {
    let finished = matches!(
        restore.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack)
    );
    if finished {
        return Ok((
            Action::await_change(),
            restore.status.as_ref().and_then(|s| s.phase),
        ));
    }
    let mut observed = observe(restore, ctx, namespace).await?;
    let mut plan = plan::plan(restore, &observed, &ctx.settings.agent, Timestamp::now());
    for step in plan.steps.clone() {
        match execute(restore, ctx, namespace, &step).await {
            Ok(()) => {}
            // Refused for good (invalid, or forbidden by admission or quota): the restore
            // says so and rolls back rather than retrying for ever with nothing in status.
            Err(err) => {
                let Some(words) = refused_for_good(&err) else {
                    return Err(err);
                };
                observed.refused = Some(words);
                plan = plan::plan(restore, &observed, &ctx.settings.agent, Timestamp::now());
                for step in &plan.steps {
                    execute(restore, ctx, namespace, step).await?;
                }
                break;
            }
        }
    }
    let old = restore.status.clone().unwrap_or_default();
    if !same_status(&old, &plan.status) {
        apply_status(api, &restore.name_any(), &plan.status).await?;
    }
    if let Some(note) = &plan.event {
        tracing::info!(namespace, name = %restore.name_any(), reason = %note.reason, "{}", note.message);
        ctx.publish(restore, note).await;
    }
    Ok((
        plan.requeue
            .map_or_else(Action::await_change, Action::requeue),
        plan.status.phase,
    ))
}

/// What the API server said when it refused to make an object for a reason retrying does
/// not change: invalid (400, 422) or forbidden (403: admission, a quota).
fn refused_for_good(err: &Error) -> Option<String> {
    match err {
        Error::Kube {
            what,
            source: kube::Error::Api(status),
        } if matches!(status.code, 400 | 403 | 422) => {
            Some(format!("to {what}: {}", status.message))
        }
        _ => None,
    }
}

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

async fn execute(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    step: &Step,
) -> Result<(), Error> {
    let client = &ctx.client;
    match step {
        Step::CreateJob(job) => {
            apply(&Api::<Job>::namespaced(client.clone(), namespace), &**job).await?;
        }
        Step::DeleteJob(name) => {
            delete_in_foreground(&Api::<Job>::namespaced(client.clone(), namespace), name).await?;
        }
        Step::Scale { replicas, record } => {
            let name = &restore.spec.target.stateful_set;
            let by = build::scaled_down_by(restore);
            scale::scale(
                &Api::namespaced(client.clone(), namespace),
                name,
                *replicas,
                record.map(|r| (r, by.as_str())),
            )
            .await
            .map_err(kube_error(format!(
                "scale StatefulSet {namespace}/{name} to {replicas}"
            )))?;
        }
        Step::CreateClaim(claim) => {
            create_if_absent(&Api::namespaced(client.clone(), namespace), &**claim).await?;
        }
        Step::CreateClone(service, stateful_set) => {
            create_if_absent(&Api::namespaced(client.clone(), namespace), &**service).await?;
            create_if_absent(&Api::namespaced(client.clone(), namespace), &**stateful_set).await?;
        }
        Step::DeleteClaim(name) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
            delete_if_exists(&claims, name).await?;
        }
        Step::PatchVolume(name, patch) => {
            let volumes: Api<PersistentVolume> = Api::all(client.clone());
            volumes
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(kube_error(format!("patch PersistentVolume {name}")))?;
        }
    }
    Ok(())
}

/// Creates `object`; one already there is left as it is.
async fn create_if_absent<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("create {} {}", K::kind(&()), object.name_any()),
            source,
        }),
    }
}

async fn observe(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<Observed, Error> {
    let client = &ctx.client;
    let spec = &restore.spec;
    let (source, snapshot_pick) = observe_source(restore, ctx, namespace).await?;
    let repository = match &source {
        SourceObject::Backup(Some(b)) => Some(b.spec.repository.clone()),
        SourceObject::Schedule(Some(s)) => s.repository_for(spec.source.copy.as_deref()).ok(),
        SourceObject::Snapshot(Some(v)) => v.spec.repository.clone(),
        _ => None,
    };
    let mut references =
        references::fetch(client, namespace, &spec.target, repository.as_ref()).await?;
    // A clone of a StatefulSet that is gone is made from the one stored with the backup.
    let mut stored_stateful_set = None;
    if spec.mode == RestoreMode::Clone
        && references.stateful_set.is_none()
        && let SourceObject::Backup(Some(backup)) = &source
    {
        match stored_stateful_set_of(ctx, namespace, backup).await? {
            Ok(stored) => {
                references.stateful_set = Some(stored);
                stored_stateful_set = Some(Ok(backup.name_any()));
            }
            Err(why) => stored_stateful_set = Some(Err(why)),
        }
    }
    let pods = list_pods(ctx, namespace, references.stateful_set.as_ref()).await?;
    let status = restore.status.clone().unwrap_or_default();
    let replicas = status
        .original_replicas
        .or_else(|| references.stateful_set.as_ref()?.spec.as_ref()?.replicas)
        .unwrap_or(1)
        .max(1) as u32;
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut claims = Vec::new();
    for ordinal in 0..replicas {
        let claim = build::claim_name(restore, ordinal);
        if get_opt(&claims_api, &claim).await?.is_some() {
            claims.push(claim);
        }
    }
    let mut jobs = BTreeMap::new();
    let steps = ["validate", "restore", "discard", "put-back"]
        .map(String::from)
        .into_iter()
        .chain((1..replicas).map(|o| format!("reinit-{o}")));
    for step in steps {
        let name = build::job_name(restore, &step);
        if let Some(state) = observe_job(ctx, namespace, &name).await? {
            jobs.insert(name, state);
        }
    }
    let validated = matches!(
        jobs.get(&build::job_name(restore, "validate")),
        Some(JobState::Succeeded { .. })
    );
    let target_cluster =
        if validated && status.base_backup.is_none() && !spec.source.allow_other_cluster {
            Some(target_cluster(restore, ctx, namespace, references.stateful_set.as_ref()).await)
        } else {
            None
        };
    let (clone, clone_pods) = match spec.mode {
        RestoreMode::Clone => {
            let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let clone = get_opt(&sets, &build::restored_stateful_set(restore)).await?;
            let pods = list_pods(ctx, namespace, clone.as_ref()).await?;
            (clone, pods)
        }
        RestoreMode::InPlace => (None, Vec::new()),
    };
    let verification = match status.phase {
        Some(RestorePhase::Verifying) if status.verified_at.is_none() => {
            Some(verify(restore, ctx, namespace, references.stateful_set.as_ref()).await)
        }
        _ => None,
    };
    let restore_pods = {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let selector = format!("{LABEL_JOB_NAME}={}", build::job_name(restore, "restore"));
        pods.list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_error(format!(
                "list the restore Job's pods in {namespace}"
            )))?
            .items
            .iter()
            // Finished pods stay until their Job goes; only running ones touch the data.
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .count()
    };
    let volumes = match (&source, spec.mode) {
        (SourceObject::Snapshot(Some(snapshot)), RestoreMode::InPlace) => {
            observe_volumes(restore, ctx, namespace, snapshot, &status).await?
        }
        _ => volumes::VolumesSeen::default(),
    };
    // The storage is checked before anything changes: not looked at again on every poll
    // of a restore under way.
    let validating = matches!(status.phase, None | Some(RestorePhase::Validating));
    let snapshot_storage = match &source {
        SourceObject::Snapshot(Some(snapshot)) if validating => {
            observe_snapshot_storage(
                restore,
                ctx,
                namespace,
                snapshot,
                references.stateful_set.as_ref(),
                &volumes,
            )
            .await?
        }
        _ => Vec::new(),
    };
    let claim_limits = match &source {
        SourceObject::Snapshot(Some(_)) if validating => {
            observe_claim_limits(ctx, namespace).await?
        }
        _ => None,
    };
    Ok(Observed {
        snapshot_storage,
        claim_limits,
        snapshot_pick,
        volumes,
        restore_pods,
        references,
        pods,
        claims,
        source,
        rivals: rivals(restore, ctx, namespace).await?,
        jobs,
        clone,
        clone_pods,
        verification,
        target_cluster,
        refused: None,
        stored_stateful_set,
    })
}

/// In place from a snapshot: ordinal 0's claims of the snapshotted volumes, the volumes
/// they are bound to and those the status recorded. A namespace-scoped install may not read
/// PersistentVolumes: that is said, not failed on.
async fn observe_volumes(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    snapshot: &VolumeSnapshotBackup,
    status: &crate::api::PointInTimeRestoreStatus,
) -> Result<volumes::VolumesSeen, Error> {
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let uid = restore.uid().unwrap_or_default();
    let mut seen = volumes::VolumesSeen::default();
    let templates = crate::controllers::volume_snapshot_backup::build::volumes(snapshot)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.template);
    for template in templates {
        let name = build::claim_name_of(restore, &template, 0);
        if let Some(claim) = get_opt(&claims_api, &name).await? {
            seen.claims
                .insert(name, volumes::ClaimSeen::of(&claim, &uid));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default())
        .await
        .map_err(kube_error(format!("list pods in {namespace}")))?;
    for (claim, user) in listed.items.iter().flat_map(volumes::ClaimUser::of) {
        if seen.claims.contains_key(&claim) {
            seen.users.entry(claim).or_default().push(user);
        }
    }
    let names: std::collections::BTreeSet<String> = seen
        .claims
        .values()
        .filter_map(|c| c.volume.clone())
        .chain(
            status
                .replaced_volumes
                .iter()
                .map(|r| r.persistent_volume.clone()),
        )
        .collect();
    let volumes_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for name in names {
        match volumes_api.get_opt(&name).await {
            Ok(Some(volume)) => {
                seen.persistent
                    .insert(name, volumes::VolumeSeen::of(&volume));
            }
            Ok(None) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => seen.forbidden = true,
            Err(source) => {
                return Err(Error::Kube {
                    what: format!("get PersistentVolume {name}"),
                    source,
                });
            }
        }
    }
    Ok(seen)
}

/// What was read; a refusal to look (403) as nothing seen; any other error as it is.
fn unless_forbidden<T>(read: Result<Option<T>, kube::Error>) -> Result<Option<T>, kube::Error> {
    match read {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        other => other,
    }
}

/// The LimitRanges and ResourceQuotas of the namespace; `None` where the operator may not
/// read them.
async fn observe_claim_limits(
    ctx: &Context,
    namespace: &str,
) -> Result<Option<claim_limits::NamespaceLimits>, Error> {
    let ranges: Api<k8s_openapi::api::core::v1::LimitRange> =
        Api::namespaced(ctx.client.clone(), namespace);
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(ctx.client.clone(), namespace);
    let ranges = unless_forbidden(ranges.list(&ListParams::default()).await.map(Some))
        .map_err(kube_error("list LimitRanges".into()))?;
    let quotas = unless_forbidden(quotas.list(&ListParams::default()).await.map(Some))
        .map_err(kube_error("list ResourceQuotas".into()))?;
    Ok(ranges
        .zip(quotas)
        .map(|(ranges, quotas)| claim_limits::NamespaceLimits {
            limit_ranges: ranges.items,
            quotas: quotas.items,
        }))
}

/// What the storage says of a snapshot source: the driver and source volume mode of each
/// snapshot's content, and the class its claim would be made in (in place, the replaced
/// claim's). Left empty where the operator may not look (a namespace-scoped install).
async fn observe_snapshot_storage(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    snapshot: &VolumeSnapshotBackup,
    stateful_set: Option<&StatefulSet>,
    volumes: &volumes::VolumesSeen,
) -> Result<Vec<snapshot_source::SnapshotStorage>, Error> {
    let (Some(stateful_set), Some(taken)) =
        (stateful_set, snapshot_source::snapshot_volumes(snapshot))
    else {
        return Ok(Vec::new());
    };
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(ctx.client.clone());
    let classes = unless_forbidden(classes.list(&ListParams::default()).await.map(Some))
        .map_err(kube_error("list StorageClasses".into()))?
        .map(|l| l.items)
        .unwrap_or_default();
    let snapshots: Api<crate::k8s::generated::volume_snapshot::VolumeSnapshot> =
        Api::namespaced(ctx.client.clone(), namespace);
    let contents: Api<kube::api::DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &kube::discovery::ApiResource {
            group: "snapshot.storage.k8s.io".into(),
            version: "v1".into(),
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshotContent".into(),
            plural: "volumesnapshotcontents".into(),
        },
    );
    let mut seen = Vec::new();
    for volume in taken {
        let mut storage = snapshot_source::SnapshotStorage {
            snapshot: volume.snapshot.clone(),
            ..Default::default()
        };
        let bound = get_opt(&snapshots, &volume.snapshot)
            .await?
            .and_then(|s| s.status?.bound_volume_snapshot_content_name);
        if let Some(name) = bound {
            let content = unless_forbidden(contents.get_opt(&name).await)
                .map_err(kube_error(format!("get VolumeSnapshotContent {name}")))?;
            if let Some(content) = content {
                let field = |key: &str| content.data["spec"][key].as_str().map(String::from);
                storage.driver = field("driver");
                storage.source_volume_mode = field("sourceVolumeMode");
            }
        }
        let claim = build::claim_name_of(restore, &volume.template, 0);
        storage.class = match volumes
            .claims
            .get(&claim)
            .and_then(|c| c.storage_class_name.clone())
        {
            Some(name) => classes
                .iter()
                .find(|c| c.name_any() == name)
                .map(|c| (name, c.provisioner.clone())),
            None => snapshot_source::template_class(stateful_set, &volume.template, &classes),
        };
        seen.push(storage);
    }
    Ok(seen)
}

/// The StatefulSet stored with `backup` (its ConfigMap `<backup>-configuration`, owned by
/// it and still of the digest its status recorded), or why it cannot be used.
async fn stored_stateful_set_of(
    ctx: &Context,
    namespace: &str,
    backup: &PostgresBackup,
) -> Result<Result<StatefulSet, String>, Error> {
    use crate::controllers::postgres_backup::configuration;
    let name = backup.name_any();
    let Some(recorded) = backup
        .status
        .as_ref()
        .and_then(|s| s.configuration_sha256.clone())
    else {
        return Ok(Err(format!(
            "PostgresBackup {name} records no Kubernetes configuration"
        )));
    };
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.client.clone(), namespace);
    let map_name = configuration::config_map_name(backup);
    let Some(map) = get_opt(&maps, &map_name).await? else {
        return Ok(Err(format!("ConfigMap {map_name} is gone")));
    };
    let owned = map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == backup.metadata.uid.as_ref() && o.controller == Some(true));
    if !owned {
        return Ok(Err(format!(
            "ConfigMap {map_name} is not the one PostgresBackup {name} made"
        )));
    }
    let document = map
        .data
        .as_ref()
        .and_then(|d| d.get(configuration::DOCUMENT_KEY))
        .cloned()
        .unwrap_or_default();
    Ok(
        configuration::stored_stateful_set(&document, &recorded, namespace)
            .map_err(|why| format!("the configuration stored with PostgresBackup {name}: {why}")),
    )
}

/// The system identifier of the cluster the target StatefulSet runs: its database's
/// answer, or else the newest completed backup of it that records one. Only what is bound
/// to the StatefulSet's own pods counts: neither a `target.host` of the restore nor
/// backups that named a host of their own.
async fn target_cluster(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<String, String> {
    let target = &restore.spec.target;
    let asked = match target.host.as_deref().filter(|h| !h.is_empty()) {
        Some(host) => Err(format!(
            "target.host {host} is not the StatefulSet's own pod"
        )),
        None => ask_cluster(ctx, namespace, target, stateful_set).await,
    };
    let why = match asked {
        Ok(id) => return Ok(id),
        Err(why) => why,
    };
    let backups: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = backups
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list PostgresBackups: {e}"))?;
    let recorded = listed
        .items
        .iter()
        .filter(|b| {
            b.spec.target.stateful_set == target.stateful_set
                && b.spec.target.host.as_deref().is_none_or(str::is_empty)
        })
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            (status.phase == Some(crate::api::BackupPhase::Completed)).then_some((
                status.completed_at.clone()?,
                status.system_identifier.clone()?,
            ))
        })
        .max_by(|a, b| a.0.0.cmp(&b.0.0));
    recorded.map(|(_, id)| id).ok_or(why)
}

/// The system identifier the target StatefulSet's database gives (ordinal 0).
async fn ask_cluster(
    ctx: &Context,
    namespace: &str,
    target: &crate::api::DatabaseTarget,
    stateful_set: Option<&StatefulSet>,
) -> Result<String, String> {
    let service = stateful_set
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.service_name.as_deref());
    let pod = format!("{}-0", target.stateful_set);
    let host = database::operator_host(target, &pod, service, namespace)
        .ok_or_else(|| "the StatefulSet names no serviceName".to_string())?;
    let connection = database::connection(ctx, namespace, target, host)
        .await
        .map_err(|e| e.to_string())?;
    let query = async {
        let client = connection
            .connect(None)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        let server = ServerInfo::query(&client)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        server
            .system_identifier
            .ok_or_else(|| "its role may not read pg_control_system()".to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// The source object; for a schedule of volume snapshots, the snapshot picked from it (the
/// one this restore picked before, once recorded) or why none can be.
async fn observe_source(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<(SourceObject, Option<String>), Error> {
    let client = &ctx.client;
    let source = &restore.spec.source;
    if let (Some(name), None) = (&source.backup_schedule, &restore.spec.logical) {
        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
        let schedule = get_opt(&api, name).await?;
        if let Some(schedule) = schedule
            .as_ref()
            .filter(|s| s.spec.method == crate::api::ScheduleMethod::VolumeSnapshot)
        {
            return picked_snapshot(restore, ctx, namespace, schedule).await;
        }
        return Ok((SourceObject::Schedule(schedule.map(Box::new)), None));
    }
    Ok((observe_named_source(restore, ctx, namespace).await?, None))
}

/// The snapshot of a schedule of volume snapshots this restore works from.
async fn picked_snapshot(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    schedule: &BackupSchedule,
) -> Result<(SourceObject, Option<String>), Error> {
    let api: Api<VolumeSnapshotBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let recorded = restore
        .status
        .as_ref()
        .and_then(|s| s.volume_snapshot_backup.clone());
    if let Some(name) = recorded {
        let found = get_opt(&api, &name).await?;
        let gone = found.is_none().then(|| {
            format!(
                "VolumeSnapshotBackup {name}, picked from BackupSchedule {}, is gone",
                schedule.name_any()
            )
        });
        return Ok((SourceObject::Snapshot(found.map(Box::new)), gone));
    }
    let selector = crate::k8s::schedule_selector(&schedule.name_any());
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(format!(
            "list the VolumeSnapshotBackups of schedule {} in {namespace}",
            schedule.name_any()
        )))?;
    Ok(
        match snapshot_source::pick_snapshot(
            &schedule.name_any(),
            &listed.items,
            &restore.spec.recovery_target,
        ) {
            Ok(picked) => (SourceObject::Snapshot(Some(Box::new(picked.clone()))), None),
            Err(why) => (SourceObject::Snapshot(None), Some(why)),
        },
    )
}

/// The source `spec.source` names (a backup, a logical schedule's newest backup, a
/// schedule of physical backups, a VolumeSnapshotBackup).
async fn observe_named_source(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<SourceObject, Error> {
    let client = &ctx.client;
    let source = &restore.spec.source;
    Ok(if let Some(name) = &source.postgres_backup {
        let api: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
        SourceObject::Backup(get_opt(&api, name).await?.map(Box::new))
    } else if let (Some(name), Some(_)) = (&source.backup_schedule, &restore.spec.logical) {
        SourceObject::Backup(
            newest_logical_backup(ctx, namespace, name)
                .await?
                .map(Box::new),
        )
    } else if let Some(name) = &source.backup_schedule {
        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
        SourceObject::Schedule(get_opt(&api, name).await?.map(Box::new))
    } else {
        let name = source.volume_snapshot_backup.clone().unwrap_or_default();
        let api: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
        SourceObject::Snapshot(get_opt(&api, &name).await?.map(Box::new))
    })
}

/// The newest completed logical backup of schedule `schedule` (a logical restore's
/// source).
async fn newest_logical_backup(
    ctx: &Context,
    namespace: &str,
    schedule: &str,
) -> Result<Option<PostgresBackup>, Error> {
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = crate::k8s::schedule_selector(schedule);
    let backups = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(format!(
            "list the PostgresBackups of schedule {schedule} in {namespace}"
        )))?;
    Ok(backups
        .items
        .into_iter()
        .filter(|b| b.spec.method == crate::api::BackupMethod::Logical)
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let completed = status.completed_at.as_ref()?.0;
            (status.phase == Some(crate::api::BackupPhase::Completed))
                .then(|| (completed, b.clone()))
        })
        .max_by_key(|(completed, _)| *completed)
        .map(|(_, b)| b))
}

/// Restores of the same StatefulSet, not finished, made before this one.
async fn rivals(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<Vec<String>, Error> {
    let api: Api<PointInTimeRestore> = Api::namespaced(ctx.client.clone(), namespace);
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(kube_error(format!(
            "list PointInTimeRestores in {namespace}"
        )))?;
    let key = |r: &PointInTimeRestore| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    };
    Ok(all
        .items
        .iter()
        .filter(|r| {
            r.name_any() != restore.name_any()
                && r.spec.mode == RestoreMode::InPlace
                && r.spec.target.stateful_set == restore.spec.target.stateful_set
                && !matches!(
                    r.status.as_ref().and_then(|s| s.phase),
                    Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack)
                )
                && key(r) < key(restore)
        })
        .map(|r| r.name_any())
        .collect())
}

async fn list_pods(
    ctx: &Context,
    namespace: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<Vec<Pod>, Error> {
    let Some(stateful_set) = stateful_set else {
        return Ok(Vec::new());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    scale::pods_of(&pods, stateful_set)
        .await
        .map_err(kube_error(format!("list pods in {namespace}")))
}

/// Asks the restored server whether it is up and out of recovery.
async fn verify(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<ServerState, String> {
    let target = &restore.spec.target;
    let restored = build::restored_stateful_set(restore);
    let host = match restore.spec.mode {
        RestoreMode::InPlace => database::operator_host(
            target,
            &format!("{restored}-0"),
            stateful_set
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.service_name.as_deref()),
            namespace,
        ),
        RestoreMode::Clone => Some(format!("{restored}-0.{restored}.{namespace}.svc")),
    }
    .ok_or_else(|| "the StatefulSet names no serviceName: set target.host".to_string())?;
    let connection = database::connection(ctx, namespace, target, host)
        .await
        .map_err(|e| e.to_string())?;
    let query = async {
        let client = match connection.connect(None).await {
            Ok(client) => client,
            // Up, but the restored roles have the passwords of the target time.
            Err(crate::postgres::ConnectionError::Authentication { reason, .. }) => {
                return Ok(ServerState {
                    in_recovery: false,
                    lsn: None,
                    timeline: None,
                    system_identifier: None,
                    note: Some(format!(
                        "the restored server answers but refuses today's login ({reason}): its roles have the passwords of the target time; recovery was checked by the restore Job"
                    )),
                });
            }
            Err(e) => return Err(crate::agent::error_chain(&e)),
        };
        let server = ServerInfo::query(&client)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        let (lsn, timeline) = if server.in_recovery {
            (None, None)
        } else {
            let row = client
                .query_one(
                    "SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())::bigint",
                    &[],
                )
                .await
                .map_err(|e| crate::agent::error_chain(&e))?;
            (Some(row.get::<_, String>(0)), Some(row.get::<_, i64>(1)))
        };
        Ok(ServerState {
            in_recovery: server.in_recovery,
            lsn,
            timeline,
            system_identifier: server.system_identifier,
            note: None,
        })
    };
    tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
}
