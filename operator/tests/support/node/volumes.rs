//! A pod's volumes as directories on the node, and the files every container gets:
//! `emptyDir`, Secret, ConfigMap, downward API, projected service account token
//! (TokenRequest API), `persistentVolumeClaim` and generic `ephemeral` (the bound
//! PersistentVolume's directory) and `hostPath`.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{
            ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
            ServiceAccount, Volume,
        },
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{Api, Client, ResourceExt, api::PostParams};

/// Why a pod cannot start yet (it stays Pending, as with a real kubelet).
pub type NotYet = String;

/// Prepares every volume of `pod` under `dir`; returns each volume's directory by name.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, NotYet> {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let mut paths = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let path = dir.join("volumes").join(&volume.name);
        let path = match prepare_one(client, pod, &namespace, volume, &path, fs_group).await? {
            Some(elsewhere) => elsewhere,
            None => path,
        };
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

/// Prepares one volume at `path`; returns another directory when the volume lives
/// elsewhere (claims, host paths).
async fn prepare_one(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    path: &Path,
    fs_group: Option<u32>,
) -> Result<Option<PathBuf>, NotYet> {
    // A generic ephemeral volume is the claim `<pod>-<volume>` its controller makes.
    let claim_name = match (&volume.persistent_volume_claim, &volume.ephemeral) {
        (Some(claim), _) => Some(claim.claim_name.clone()),
        (None, Some(_)) => Some(format!("{}-{}", pod.name_any(), volume.name)),
        (None, None) => None,
    };
    if let Some(claim) = claim_name {
        let dir = claim_dir(client, namespace, &claim).await?;
        if let Some(group) = fs_group {
            // The kubelet gives the volume to the pod's fsGroup (fsGroupChangePolicy
            // OnRootMismatch).
            chown_tree_group(&dir, group);
        }
        return Ok(Some(dir));
    }
    if let Some(host) = &volume.host_path {
        fs::create_dir_all(&host.path).map_err(|e| format!("hostPath {}: {e}", host.path))?;
        return Ok(Some(PathBuf::from(&host.path)));
    }
    fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let files: Vec<(String, Vec<u8>, u32)> = if volume.empty_dir.is_some() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
        Vec::new()
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, namespace, &name, source.optional).await?;
        key_files(&data, source.items.as_deref(), source.default_mode)
    } else if let Some(source) = &volume.config_map {
        let data = config_map_data(client, namespace, &source.name, source.optional).await?;
        key_files(&data, source.items.as_deref(), source.default_mode)
    } else if let Some(source) = &volume.projected {
        let mut files = Vec::new();
        for projection in source.sources.iter().flatten() {
            if let Some(token) = &projection.service_account_token {
                let text = service_account_token(
                    client,
                    pod,
                    namespace,
                    token.audience.clone(),
                    token.expiration_seconds,
                )
                .await?;
                files.push((token.path.clone(), text.into_bytes(), 0o644));
            }
            if let Some(map) = &projection.config_map {
                let data = config_map_data(client, namespace, &map.name, map.optional).await?;
                files.extend(key_files(&data, map.items.as_deref(), source.default_mode));
            }
            if let Some(secret) = &projection.secret {
                let data = secret_data(client, namespace, &secret.name, secret.optional).await?;
                files.extend(key_files(
                    &data,
                    secret.items.as_deref(),
                    source.default_mode,
                ));
            }
            if let Some(downward) = &projection.downward_api {
                for item in downward.items.iter().flatten() {
                    if let Some(field) = &item.field_ref {
                        let value =
                            super::pods::field_value(pod, &field.field_path, &super::pod_ip(pod));
                        files.push((item.path.clone(), value.into_bytes(), 0o644));
                    }
                }
            }
        }
        files
    } else if let Some(downward) = &volume.downward_api {
        downward
            .items
            .iter()
            .flatten()
            .filter_map(|item| {
                let field = item.field_ref.as_ref()?;
                let value = super::pods::field_value(pod, &field.field_path, &super::pod_ip(pod));
                Some((item.path.clone(), value.into_bytes(), 0o644))
            })
            .collect()
    } else {
        return Err(format!(
            "volume {}: the local node supports emptyDir, secret, configMap, projected, \
             downwardAPI, persistentVolumeClaim and hostPath volumes",
            volume.name
        ));
    };
    for (name, bytes, mode) in files {
        let file = path.join(&name);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let mode = if fs_group.is_some() {
            mode | 0o040
        } else {
            mode
        };
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        if let Some(group) = fs_group {
            let _ = std::os::unix::fs::chown(&file, None, Some(group));
        }
    }
    Ok(None)
}

/// The directory of the PersistentVolume a claim is bound to.
async fn claim_dir(client: &Client, namespace: &str, claim: &str) -> Result<PathBuf, NotYet> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let found = claims
        .get_opt(claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let volume = found
        .spec
        .and_then(|s| s.volume_name)
        .filter(|_| found.status.and_then(|s| s.phase).as_deref() == Some("Bound"))
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get(&volume).await.map_err(|e| e.to_string())?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .map(PathBuf::from)
        .ok_or_else(|| format!("persistentvolume {volume} is not a local directory"))
}

fn chown_tree_group(dir: &Path, group: u32) {
    let owned = fs::metadata(dir).is_ok_and(|m| std::os::unix::fs::MetadataExt::gid(&m) == group);
    if owned {
        return;
    }
    let _ = std::process::Command::new("chgrp")
        .args(["-R", &group.to_string()])
        .arg(dir)
        .status();
    let _ = std::process::Command::new("chmod")
        .args(["g+rwxs"])
        .arg(dir)
        .status();
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, NotYet> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Ok(data)
        }
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

async fn config_map_data(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, NotYet> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match maps.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(map) => {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in map.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            Ok(data)
        }
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

/// The files of a Secret or ConfigMap volume: every key, or the listed items.
fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Vec<(String, Vec<u8>, u32)> {
    let mode = |m: Option<i32>| m.or(default_mode).map_or(0o644, |m| m as u32);
    match items {
        Some(items) => items
            .iter()
            .filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone(), mode(i.mode))))
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), mode(None)))
            .collect(),
    }
}

/// A token of the pod's ServiceAccount bound to the pod, as the kubelet projects it.
async fn service_account_token(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, NotYet> {
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map(|t| t.status.map(|s| s.token).unwrap_or_default())
        .map_err(|e| format!("token of serviceaccount {account}: {e}"))
}

/// `Time` now.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}
