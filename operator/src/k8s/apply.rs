//! Writes: server-side apply with the operator's field manager, status patches, deletes.

use kube::{
    Api, Resource,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use serde::{Serialize, de::DeserializeOwned};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{FIELD_MANAGER, LABEL_INSTANCE, LABEL_MANAGED_BY};

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
    /// An object of the name exists and is not the one this owner made: it is left alone.
    #[error(
        "{kind} {name} exists and is not {owner}'s; rename or delete it (pgbackup does not take over objects it did not make)"
    )]
    NotOurs {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// Who the operator would have made it for (`BackupSchedule nightly`).
        owner: String,
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

    /// What the user has to fix, as a condition reason and a message: the API's refusal of
    /// the object as invalid (HTTP 422: a bad time zone, a bad cron expression, …) in its
    /// own words, or a name taken by an object pgbackup did not make.
    pub fn user_fixable(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } if status.code == 422 => Some((
                "InvalidSpec",
                format!("the Kubernetes API refused it: {}", status.message),
            )),
            Self::NotOurs { .. } => Some(("NameTaken", self.to_string())),
            _ => None,
        }
    }
}

/// Server-side applies `object` (which must carry its name) and returns what the API holds.
/// An object of that name that this owner did not make ([`made_by_same_owner`]) is never
/// applied over: forcing the apply would take it over, and the garbage collector would later
/// delete it with the owner.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    if let Some(existing) = get_opt(api, &name).await?
        && !made_by_same_owner(existing.meta(), object.meta())
    {
        return Err(ApplyError::NotOurs {
            kind: K::kind(&()).into_owned(),
            name,
            owner: owner_of(object.meta()),
        });
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| ApplyError::new::<K>("apply", &name, e))
}

/// Whether `existing` is the object the operator made for the owner of `desired`: it has
/// the same controller (owner UID), or, for objects made without an owner reference (a Job
/// that must outlive its owner), pgbackup's labels with the same instance.
pub fn made_by_same_owner(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    match controller(desired) {
        Some(ours) => controller(existing).is_some_and(|theirs| theirs.uid == ours.uid),
        None => {
            label(existing, LABEL_MANAGED_BY) == Some("pgbackup")
                && label(desired, LABEL_INSTANCE).is_some()
                && label(existing, LABEL_INSTANCE) == label(desired, LABEL_INSTANCE)
        }
    }
}

/// `<Kind> <name>` of the controller of `meta`, else of its instance label.
fn owner_of(meta: &ObjectMeta) -> String {
    match controller(meta) {
        Some(o) => format!("{} {}", o.kind, o.name),
        None => label(meta, LABEL_INSTANCE)
            .unwrap_or("pgbackup")
            .to_string(),
    }
}

/// The owner reference of `meta` that is its controller.
fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// The value of label `key` of `meta`.
fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner_uid: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "pgbackup.io/v1alpha1".into(),
                    kind: "BackupSchedule".into(),
                    name: "nightly".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_same_owners_object_is_applied_over() {
        let ours = meta(Some("u1"), &[]);
        assert!(made_by_same_owner(&meta(Some("u1"), &[]), &ours));
        assert!(
            !made_by_same_owner(&meta(Some("u2"), &[]), &ours),
            "another owner"
        );
        assert!(!made_by_same_owner(&meta(None, &[]), &ours), "no owner");
    }

    #[test]
    fn objects_without_an_owner_are_told_apart_by_pgbackups_labels() {
        let labels = [(LABEL_MANAGED_BY, "pgbackup"), (LABEL_INSTANCE, "nightly")];
        let desired = meta(None, &labels);
        assert!(made_by_same_owner(&meta(None, &labels), &desired));
        let helm = [(LABEL_MANAGED_BY, "Helm"), (LABEL_INSTANCE, "nightly")];
        assert!(!made_by_same_owner(&meta(None, &helm), &desired));
        let other = [(LABEL_MANAGED_BY, "pgbackup"), (LABEL_INSTANCE, "weekly")];
        assert!(!made_by_same_owner(&meta(None, &other), &desired));
        assert!(!made_by_same_owner(&meta(None, &[]), &meta(None, &[])));
    }
}
