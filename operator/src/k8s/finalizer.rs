//! Finalizers: ours is added before any work and removed only when the cleanup says it is
//! done. (kube's own helper removes it as soon as cleanup returns; deleting a backup's data
//! takes a Job, so cleanup must be able to say "not yet" without failing.)

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;

use super::ApplyError;

/// Adds `finalizer` to the object unless present. The patch carries the resourceVersion
/// read, so a concurrent change makes it fail rather than drop another finalizer.
pub async fn add<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if object.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(finalizer.to_string());
    set(api, object, finalizers).await
}

/// Removes `finalizer` from the object.
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if !object.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let finalizers = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    set(api, object, finalizers).await
}

async fn set<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": object.resource_version(),
            "finalizers": finalizers,
        }
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|source| ApplyError::Api {
            verb: "update finalizers of",
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}
