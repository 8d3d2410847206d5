//! The Kubernetes configuration stored with each backup (pure): the StatefulSet as it was
//! declared, its headless Service and the ConfigMaps its pods use, as one YAML stream that
//! `pgbackup configuration` prints for `kubectl apply -f -` in a new cluster. Secrets go in
//! by name only: whoever may create a backup object must not carry Secrets they may not
//! read off to a bucket of their choosing, and their values belong in the secret store
//! they came from.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, PodSpec, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};

use crate::{
    api::PostgresBackup,
    k8s::{child_name, labels},
};

/// The key of the document in its ConfigMap, and the file the agent reads.
pub const DOCUMENT_KEY: &str = "kubernetes.yaml";

/// Largest document kept whole (a ConfigMap holds at most 1 MiB): above it the ConfigMaps'
/// contents are left out and the document says so.
const DOCUMENT_LIMIT: usize = 768 * 1024;

/// Name of the ConfigMap that carries the document to the backup Job.
pub fn config_map_name(backup: &PostgresBackup) -> String {
    child_name(&backup.name_any(), "configuration")
}

/// The ConfigMaps the StatefulSet's pods use (volumes, projected volumes, `envFrom`,
/// `valueFrom`), by name.
pub fn referenced_config_maps(stateful_set: &StatefulSet) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(pod) = pod_spec(stateful_set) else {
        return names;
    };
    for volume in pod.volumes.iter().flatten() {
        names.extend(volume.config_map.as_ref().map(|c| c.name.clone()));
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            names.extend(source.config_map.as_ref().map(|c| c.name.clone()));
        }
    }
    for container in containers(pod) {
        for from in container.env_from.iter().flatten() {
            names.extend(from.config_map_ref.as_ref().map(|c| c.name.clone()));
        }
        for var in container.env.iter().flatten() {
            let reference = var
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref());
            names.extend(reference.map(|r| r.name.clone()));
        }
    }
    names
}

/// The Secrets the StatefulSet's pods use, by name, with the keys named (empty: all).
pub fn referenced_secrets(stateful_set: &StatefulSet) -> BTreeMap<String, BTreeSet<String>> {
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Some(pod) = pod_spec(stateful_set) else {
        return secrets;
    };
    for volume in pod.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.entry(name).or_default();
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(secret) = &source.secret {
                secrets.entry(secret.name.clone()).or_default();
            }
        }
    }
    for container in containers(pod) {
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                secrets.entry(secret.name.clone()).or_default();
            }
        }
        for var in container.env.iter().flatten() {
            let reference = var
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            if let Some(reference) = reference {
                secrets
                    .entry(reference.name.clone())
                    .or_default()
                    .insert(reference.key.clone());
            }
        }
    }
    for pull in pod.image_pull_secrets.iter().flatten() {
        secrets.entry(pull.name.clone()).or_default();
    }
    secrets
}

/// The YAML stream: a comment naming the Secrets to create first, then the StatefulSet,
/// its Service and the ConfigMaps, each as declared (no status, no server-set fields, no
/// namespace: `kubectl apply -n <namespace> -f -` puts them where they go).
pub fn document(
    stateful_set: &StatefulSet,
    service: Option<&Service>,
    config_maps: &[ConfigMap],
) -> String {
    let secrets = referenced_secrets(stateful_set);
    let mut head = format!(
        "# The Kubernetes objects of StatefulSet {} when this backup was taken.\n# Apply into a new cluster with `kubectl apply -n <namespace> -f -`.\n",
        stateful_set.name_any()
    );
    if !secrets.is_empty() {
        head.push_str(
            "# Secrets it uses, not stored (create them from your secret store first):\n",
        );
        for (name, keys) in &secrets {
            if keys.is_empty() {
                head.push_str(&format!("#   {name}\n"));
            } else {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                head.push_str(&format!("#   {name} (keys {})\n", keys.join(", ")));
            }
        }
    }
    let mut objects = vec![yaml(&declared_stateful_set(stateful_set))];
    objects.extend(service.map(|s| yaml(&declared_service(s))));
    let maps: Vec<String> = config_maps
        .iter()
        .map(|c| yaml(&declared_config_map(c)))
        .collect();
    let whole: usize = objects.iter().chain(&maps).map(String::len).sum();
    if whole + head.len() > DOCUMENT_LIMIT {
        let names: Vec<String> = config_maps.iter().map(ResourceExt::name_any).collect();
        head.push_str(&format!(
            "# ConfigMaps it uses, too large to store with the backup: {}\n",
            names.join(", ")
        ));
    } else {
        objects.extend(maps);
    }
    let mut text = head;
    for object in objects {
        text.push_str("---\n");
        text.push_str(&object);
    }
    text
}

/// The ConfigMap that carries `document` to the backup Job, owned by the backup.
pub fn config_map(backup: &PostgresBackup, document: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(backup)),
            namespace: backup.namespace(),
            labels: Some(labels("configuration", &backup.name_any())),
            owner_references: backup.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([(DOCUMENT_KEY.to_string(), document)].into()),
        ..ConfigMap::default()
    }
}

/// The hex SHA-256 of a document.
pub fn digest(document: &str) -> String {
    use sha2::Digest;
    crate::repository::hex_digest(&sha2::Sha256::digest(document.as_bytes()))
}

/// The StatefulSet of a stored document, if the document still has the digest recorded
/// when it was written (a ConfigMap anyone may have edited since must not become the pod
/// template of a clone), placed in `namespace`.
pub fn stored_stateful_set(
    document: &str,
    recorded: &str,
    namespace: &str,
) -> Result<StatefulSet, String> {
    if digest(document) != recorded {
        return Err(
            "its ConfigMap was changed after the backup recorded it: it is not used".into(),
        );
    }
    for part in document.split("\n---\n").skip(1) {
        let value: serde_json::Value =
            serde_yaml::from_str(part).map_err(|e| format!("it cannot be read: {e}"))?;
        if value["kind"] == "StatefulSet" {
            let mut stateful_set: StatefulSet = serde_json::from_value(value)
                .map_err(|e| format!("its StatefulSet cannot be read: {e}"))?;
            stateful_set.metadata.namespace = Some(namespace.to_string());
            return Ok(stateful_set);
        }
    }
    Err("it holds no StatefulSet".into())
}

fn pod_spec(stateful_set: &StatefulSet) -> Option<&PodSpec> {
    stateful_set.spec.as_ref()?.template.spec.as_ref()
}

fn containers(pod: &PodSpec) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

/// The metadata a user declares: name, labels, annotations (without kubectl's copy of the
/// last applied object).
fn declared_meta(meta: &ObjectMeta) -> ObjectMeta {
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.remove("deployment.kubernetes.io/revision");
    ObjectMeta {
        name: meta.name.clone(),
        labels: meta.labels.clone().filter(|l| !l.is_empty()),
        annotations: Some(annotations).filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    }
}

fn declared_stateful_set(stateful_set: &StatefulSet) -> StatefulSet {
    let mut spec = stateful_set.spec.clone();
    for claim in spec
        .as_mut()
        .and_then(|s| s.volume_claim_templates.as_mut())
        .into_iter()
        .flatten()
    {
        claim.status = None;
        claim.metadata = declared_meta(&claim.metadata);
    }
    StatefulSet {
        metadata: declared_meta(&stateful_set.metadata),
        spec,
        status: None,
    }
}

fn declared_service(service: &Service) -> Service {
    let mut spec = service.spec.clone();
    if let Some(spec) = spec.as_mut() {
        // Addresses the cluster gave are the old cluster's; "None" (headless) is declared.
        if spec.cluster_ip.as_deref() != Some("None") {
            spec.cluster_ip = None;
        }
        spec.cluster_ips = None;
        spec.health_check_node_port = None;
        for port in spec.ports.iter_mut().flatten() {
            port.node_port = None;
        }
    }
    Service {
        metadata: declared_meta(&service.metadata),
        spec,
        status: None,
    }
}

fn declared_config_map(config_map: &ConfigMap) -> ConfigMap {
    ConfigMap {
        metadata: declared_meta(&config_map.metadata),
        data: config_map.data.clone(),
        binary_data: config_map.binary_data.clone(),
        immutable: config_map.immutable,
    }
}

/// `object` as YAML with its `apiVersion` and `kind`.
fn yaml<K: Resource<DynamicType = ()> + serde::Serialize>(object: &K) -> String {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    serde_yaml::to_string(&value).unwrap_or_default()
}

#[cfg(test)]
#[path = "configuration_tests.rs"]
mod tests;
