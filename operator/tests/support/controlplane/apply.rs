//! `kubectl apply --server-side` for the tests: YAML documents of any kind, resolved
//! through the API server's discovery, applied with one field manager — or sent with
//! `dryRun=All`, which runs the whole admission chain (schema, CEL, webhooks) and stores
//! nothing.

use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{self, Scope},
};
use serde::Deserialize;

/// The field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "pgbackup-tests";

/// Whether to store what is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store it.
    Apply,
    /// Admit it and store nothing (`--dry-run=server`).
    DryRun,
}

/// The non-empty YAML documents of `text`.
pub fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).expect("YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Applies each document of `text` that `keep` accepts, in order.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    mode: Mode,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let mut applied = Vec::new();
    for doc in documents(text).iter().filter(|d| keep(d)) {
        applied.push(apply(client, doc, mode).await?);
    }
    Ok(applied)
}

/// Applies one object, in its own namespace (or `default` if it names none).
pub async fn apply(
    client: &Client,
    doc: &serde_json::Value,
    mode: Mode,
) -> Result<DynamicObject, kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap_or_default());
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            doc["metadata"]["namespace"].as_str().unwrap_or("default"),
            &resource,
        ),
    };
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if mode == Mode::DryRun {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(doc)).await
}
