//! Making the changes a restore's plan asks for (writes only).

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolume, PersistentVolumeClaim},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::plan::Step;

use crate::controllers::{Context, Error};
use crate::{
    api::PointInTimeRestore,
    k8s::{apply, delete_if_exists, delete_in_foreground, scale},
};

use super::{build, kube_error};

pub(super) async fn execute(
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
pub(super) async fn create_if_absent<K>(api: &Api<K>, object: &K) -> Result<(), Error>
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
