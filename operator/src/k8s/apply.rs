//! Writes: server-side apply with the operator's field manager, status patches, deletes.

use kube::{
    Api, Resource,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use serde::{Serialize, de::DeserializeOwned};

use super::FIELD_MANAGER;

/// A write to the Kubernetes API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API refused or failed the request.
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        /// What was attempted.
        verb: &'static str,
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    fn new<K: Resource<DynamicType = ()>>(
        verb: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Self {
        Self::Api {
            verb,
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
            source,
        }
    }

    /// The namespace is being deleted: nothing new can be created in it.
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Self::Api { source: kube::Error::Api(status), .. }
            if status.code == 403 && status.message.contains("being terminated"))
    }

    /// The API's own words when it refused the object as invalid (HTTP 422), which are worth
    /// showing the user as they are (a bad time zone, a bad cron expression, …).
    pub fn invalid_reason(&self) -> Option<&str> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } if status.code == 422 => Some(status.message.as_str()),
            _ => None,
        }
    }
}

/// Server-side applies `object` (which must carry its name) and returns what the API holds.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| ApplyError::new::<K>("apply", &name, e))
}

/// Server-side applies the status subresource of `name`.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| ApplyError::new::<K>("update status of", name, e))
}

/// Reads an object; `None` when it does not exist.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| ApplyError::new::<K>("get", name, e))
}

/// Deletes an object and its dependents in the background; absent is fine.
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_with(api, name, PropagationPolicy::Background).await
}

/// Deletes an object that stays readable until its dependents are gone (a Job until its
/// pods have stopped); absent is fine.
pub async fn delete_in_foreground<K>(api: &Api<K>, name: &str) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_with(api, name, PropagationPolicy::Foreground).await
}

async fn delete_with<K>(
    api: &Api<K>,
    name: &str,
    propagation: PropagationPolicy,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(ApplyError::new::<K>("delete", name, e)),
    }
}
