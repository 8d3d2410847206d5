//! What a restore reads before it plans: the StatefulSet, its pods, claims and volumes, limits, storage, other restores, the Jobs.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{Api, ResourceExt, api::ListParams};

use super::plan::{Observed, SourceObject};

use crate::controllers::{Context, Error, job_state::JobState, jobs::observe_job, references};
use crate::{
    api::{PointInTimeRestore, RestoreMode, RestorePhase, VolumeSnapshotBackup},
    k8s::{LABEL_JOB_NAME, get_opt, scale},
};

use super::observe_source::{observe_source, stored_stateful_set_of};
use super::server::{target_cluster, verify};
use super::{build, claim_limits, kube_error, snapshot_source, volumes};

pub(super) async fn observe(
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
pub(super) async fn observe_volumes(
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
pub(super) fn unless_forbidden<T>(
    read: Result<Option<T>, kube::Error>,
) -> Result<Option<T>, kube::Error> {
    match read {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        other => other,
    }
}

/// The LimitRanges and ResourceQuotas of the namespace; `None` where the operator may not
/// read them.
pub(super) async fn observe_claim_limits(
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
pub(super) async fn observe_snapshot_storage(
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

/// Restores of the same StatefulSet, not finished, made before this one.
pub(super) async fn rivals(
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

pub(super) async fn list_pods(
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
