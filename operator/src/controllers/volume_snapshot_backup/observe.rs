//! What a VolumeSnapshotBackup reconcile reads: the StatefulSet, Secrets' keys, pods,
//! claims, the snapshot class, the backup's own VolumeSnapshots and Jobs, its database
//! session; and the connection for a new session, with the credentials from the Secrets.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolumeClaim, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};

use super::{build, plan::Observed};
use crate::{
    api::VolumeSnapshotBackup,
    controllers::{Context, Error, database, jobs::observe_job, references},
    k8s::{generated::volume_snapshot::VolumeSnapshot, get_opt},
    postgres::PgConnection,
};

/// A kube error as the reconcile reports it.
pub(super) fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
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

pub(super) async fn observe(
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
    let class = match &backup.spec.snapshot.volume_snapshot_class_name {
        Some(class) => {
            let classes: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &class_resource());
            match classes.get_opt(class).await {
                Ok(found) => Some(found),
                // A namespace-scoped install may not read cluster-scoped classes: the
                // snapshot's own status then says whether the class exists.
                Err(kube::Error::Api(e)) if e.code == 403 => None,
                Err(source) => {
                    return Err(Error::Kube {
                        what: format!("get VolumeSnapshotClass {class}"),
                        source,
                    });
                }
            }
        }
        None => None,
    };
    let class_found = class.as_ref().map(Option::is_some);
    let class_retains = class
        .flatten()
        .is_some_and(|c| c.data["deletionPolicy"] == "Retain");
    let snapshot_api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let (mut snapshots, mut foreign_snapshots) = (Vec::new(), Vec::new());
    for volume in build::volumes(backup).unwrap_or_default() {
        let found = snapshot_api.get_opt(&volume.snapshot).await.map_err(kube_error(format!(
            "get VolumeSnapshot {namespace}/{} (is the snapshot.storage.k8s.io/v1 API installed?)",
            volume.snapshot
        )))?;
        match found {
            Some(snapshot) if build::belongs_to(&snapshot, backup) => snapshots.push(snapshot),
            Some(_) => foreign_snapshots.push(volume.snapshot),
            None => {}
        }
    }
    let record_job = observe_job(ctx, namespace, &build::record_job_name(backup)).await?;
    Ok(Observed {
        record_job,
        foreign_snapshots,
        references,
        pods,
        claims,
        class_found,
        class_retains,
        session: ctx.sessions.state(&backup.uid().unwrap_or_default()),
        snapshots,
    })
}

async fn list_pods(
    ctx: &Context,
    namespace: &str,
    stateful_set: &StatefulSet,
) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    crate::k8s::scale::pods_of(&pods, stateful_set)
        .await
        .map_err(kube_error(format!(
            "list pods of StatefulSet {}",
            stateful_set.name_any()
        )))
}

/// The connection to the primary, with the credentials (and CA) read from the Secrets.
pub(super) async fn connection(
    ctx: &Context,
    namespace: &str,
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
) -> Result<PgConnection, Error> {
    let target = &backup.spec.target;
    let service = observed
        .references
        .stateful_set
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.service_name.as_deref());
    let host = database::operator_host(target, &build::primary_pod(backup), service, namespace)
        .unwrap_or_default();
    database::connection(ctx, namespace, target, host).await
}
