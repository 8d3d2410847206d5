//! Storage on the local node: a default StorageClass whose claims a provisioner backs with
//! directories (also from a VolumeSnapshot `dataSource`), a VolumeSnapshotClass whose
//! VolumeSnapshots a snapshotter cuts by copying the claim's directory while the pods that
//! use it are frozen (so a snapshot is crash-consistent, as a CSI snapshot is), and the
//! clean-up a `Delete` reclaim or deletion policy asks for.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    discovery::ApiResource,
};
use pgbackup::k8s::generated::volume_snapshot::VolumeSnapshot;

/// The provisioner and snapshot driver name.
pub const DRIVER: &str = "local.node.pgbackup.io";
/// The default StorageClass and the VolumeSnapshotClass.
pub const CLASS: &str = "local";

const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";

/// The StorageClass (the default) and the VolumeSnapshotClass of the node.
pub fn classes() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        }),
        serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": CLASS},
            "driver": DRIVER, "deletionPolicy": "Delete",
        }),
    ]
}

/// Backs pending claims of the node's class with directories under `root`.
pub async fn provision(client: &Client, root: &Path) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for claim in claims.list(&ListParams::default()).await?.items {
        let asks_us = claim
            .annotations()
            .get(PROVISIONER_ANNOTATION)
            .is_some_and(|p| p == DRIVER);
        let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if !asks_us || !pending || claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = claim.uid().unwrap_or_default();
        let name = format!("pvc-{uid}");
        if volumes.get_opt(&name).await?.is_some() {
            continue;
        }
        let namespace = claim.namespace().unwrap_or_default();
        let spec = claim.spec.clone().unwrap_or_default();
        let dir = root.join("volumes").join(&name);
        if let Some(source) = spec
            .data_source
            .as_ref()
            .filter(|s| s.kind == "VolumeSnapshot")
        {
            let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &namespace);
            let Some(snapshot) = snapshots.get_opt(&source.name).await? else {
                continue;
            };
            if !snapshot
                .status
                .as_ref()
                .and_then(|s| s.ready_to_use)
                .unwrap_or(false)
            {
                continue;
            }
            let content = snapshot_dir(root, &snapshot.uid().unwrap_or_default());
            copy_tree(&content, &dir);
        } else {
            fs::create_dir_all(&dir).expect("volume dir");
        }
        // As local-path provisioners do: any pod user may write the volume's root.
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o777));
        let reclaim = "Delete";
        let volume = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: DRIVER}},
            "spec": {
                "capacity": {"storage": spec.resources.as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage")).map_or("1Gi".to_string(), |q| q.0.clone())},
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": spec.storage_class_name.clone().unwrap_or_else(|| CLASS.into()),
                "volumeMode": "Filesystem",
                "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": namespace, "name": claim.name_any(), "uid": uid},
            },
        });
        volumes
            .create(
                &PostParams::default(),
                &serde_json::from_value(volume).expect("volume"),
            )
            .await?;
    }
    // Released volumes of ours with the Delete policy go, with their data.
    for volume in volumes.list(&ListParams::default()).await?.items {
        let ours = volume
            .annotations()
            .get(PROVISIONED_BY)
            .is_some_and(|p| p == DRIVER);
        let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete");
        if ours && released && delete {
            if let Some(path) = volume.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
                let _ = fs::remove_dir_all(&path.path);
            }
            volumes
                .delete(&volume.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    Ok(())
}

/// Where the content of the snapshot with `uid` is kept.
pub fn snapshot_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("snapshots").join(uid)
}

/// Copies a directory tree with owners, modes and times (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).expect("parent");
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn content_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotContent".into(),
        plural: "volumesnapshotcontents".into(),
    }
}

/// The namespace annotation with which a test makes the storage slow: while it is
/// `"true"`, no VolumeSnapshot of the namespace is cut.
pub const PAUSE_ANNOTATION: &str = "node.pgbackup.io/snapshots-paused";

/// Whether snapshots in `namespace` wait (see [`PAUSE_ANNOTATION`]).
async fn paused(client: &Client, namespace: &str) -> Result<bool, kube::Error> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = namespaces.get_opt(namespace).await?;
    Ok(namespace
        .is_some_and(|n| n.annotations().get(PAUSE_ANNOTATION).map(String::as_str) == Some("true")))
}

/// Pauses (`true`) or resumes the cutting of snapshots in `namespace`.
pub async fn pause_snapshots(client: &Client, namespace: &str, pause: bool) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let value = if pause { "true" } else { "false" };
    let patch = serde_json::json!({"metadata": {"annotations": {PAUSE_ANNOTATION: value}}});
    namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate the namespace");
}

/// Cuts the VolumeSnapshots of the node's driver that are not cut yet; `freeze` stops
/// and restarts the processes of the pods using a volume around the copy.
pub async fn snapshot(
    client: &Client,
    root: &Path,
    freeze: &mut dyn FnMut(&Path, bool),
) -> Result<(), kube::Error> {
    let snapshots: Api<VolumeSnapshot> = Api::all(client.clone());
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &content_resource());
    let all = snapshots.list(&ListParams::default()).await?.items;
    for snapshot in &all {
        let cut = snapshot
            .status
            .as_ref()
            .is_some_and(|s| s.ready_to_use == Some(true));
        let Some(claim_name) = snapshot.spec.source.persistent_volume_claim_name.clone() else {
            continue;
        };
        if cut || snapshot.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespace = snapshot.namespace().unwrap_or_default();
        if paused(client, &namespace).await? {
            continue;
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        let Some(claim) = claims.get_opt(&claim_name).await? else {
            continue;
        };
        let Some(volume_name) = claim.spec.and_then(|s| s.volume_name) else {
            continue;
        };
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        let volume = volumes.get(&volume_name).await?;
        let Some(source) = volume
            .spec
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
        else {
            continue;
        };
        let uid = snapshot.uid().unwrap_or_default();
        let target = snapshot_dir(root, &uid);
        freeze(&source, true);
        let created = jiff::Timestamp::now();
        copy_tree(&source, &target);
        freeze(&source, false);
        let size = dir_size(&target);
        let content_name = format!("snapcontent-{uid}");
        let content = serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name},
            "spec": {
                "driver": DRIVER, "deletionPolicy": "Delete",
                "source": {"snapshotHandle": target.display().to_string()},
                "volumeSnapshotClassName": snapshot.spec.volume_snapshot_class_name.clone().unwrap_or_else(|| CLASS.into()),
                "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                      "namespace": namespace, "name": snapshot.name_any(), "uid": uid},
            },
        });
        if contents.get_opt(&content_name).await?.is_none() {
            contents
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(content).expect("content"),
                )
                .await?;
        }
        let status = serde_json::json!({"status": {
            "boundVolumeSnapshotContentName": content_name,
            "creationTime": created.to_string(),
            "readyToUse": true,
            "restoreSize": size.to_string(),
        }});
        Api::<VolumeSnapshot>::namespaced(client.clone(), &namespace)
            .patch_status(
                &snapshot.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await?;
    }
    // Contents whose snapshot is gone go, with their data (deletionPolicy Delete).
    let live: Vec<String> = all.iter().filter_map(|s| s.uid()).collect();
    for content in contents.list(&ListParams::default()).await?.items {
        let uid = content.data["spec"]["volumeSnapshotRef"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if content.data["spec"]["driver"] == DRIVER && !live.contains(&uid) {
            let _ = fs::remove_dir_all(snapshot_dir(root, &uid));
            contents
                .delete(&content.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let output = std::process::Command::new("du")
        .args(["-sb"])
        .arg(dir)
        .output();
    output
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
