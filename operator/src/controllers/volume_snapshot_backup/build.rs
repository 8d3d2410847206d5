//! The objects and names of a VolumeSnapshotBackup (pure): which claims it snapshots, the
//! VolumeSnapshots themselves, and what is recorded on them and on the StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{apps::v1::StatefulSet, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{
    api::{DeletionPolicy, VolumeSnapshotBackup},
    k8s::{
        LABEL_BACKUP, child_name,
        generated::volume_snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec},
        label_value, labels,
    },
};

/// `app.kubernetes.io/component` of the VolumeSnapshots.
pub const COMPONENT: &str = "volume-snapshot";
/// On each VolumeSnapshot: the name of its VolumeSnapshotBackup.
pub const ANNOTATION_BACKUP: &str = "pgbackup.io/volume-snapshot-backup";
/// On each VolumeSnapshot: the UID of its VolumeSnapshotBackup (a later backup of the same
/// name is another backup).
pub const ANNOTATION_BACKUP_UID: &str = "pgbackup.io/volume-snapshot-backup-uid";
/// On each VolumeSnapshot: the volumeClaimTemplate of the claim it was taken from.
pub const ANNOTATION_CLAIM_TEMPLATE: &str = "pgbackup.io/claim-template";
/// On each VolumeSnapshot: how it was made consistent (`online`, `checkpoint`, `offline`).
pub const ANNOTATION_MODE: &str = "pgbackup.io/mode";
/// On each VolumeSnapshot of an `online` backup: the `backup_label` to restore with.
pub const ANNOTATION_BACKUP_LABEL: &str = "pgbackup.io/backup-label";
/// On each VolumeSnapshot of an `online` backup with tablespaces: the `tablespace_map`.
pub const ANNOTATION_TABLESPACE_MAP: &str = "pgbackup.io/tablespace-map";
/// On each VolumeSnapshot: where WAL replay of a restore starts.
pub const ANNOTATION_BEGIN_LSN: &str = "pgbackup.io/begin-lsn";
/// On each VolumeSnapshot of an `online` backup: where a restore becomes consistent.
pub const ANNOTATION_END_LSN: &str = "pgbackup.io/end-lsn";
/// On each VolumeSnapshot: the server's timeline.
pub const ANNOTATION_TIMELINE: &str = "pgbackup.io/timeline";
pub use super::repository_jobs::{
    COPY_MOUNT, COPY_TTL_SECONDS, forget_job, forget_job_name, record_job, record_job_name,
    snapshot_record,
};
pub use crate::k8s::scale::{ANNOTATION_ORIGINAL_REPLICAS, ANNOTATION_SCALED_DOWN_BY};

/// One volume to snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The StatefulSet's volumeClaimTemplate.
    pub template: String,
    /// The claim of the primary's pod: `<template>-<statefulset>-<ordinal>`.
    pub claim: String,
    /// The VolumeSnapshot's name.
    pub snapshot: String,
}

/// The pod whose volumes are snapshotted: `target.pod`, else ordinal 0.
pub fn primary_pod(backup: &VolumeSnapshotBackup) -> String {
    let target = &backup.spec.target;
    target
        .pod
        .clone()
        .unwrap_or_else(|| format!("{}-0", target.stateful_set))
}

/// The ordinal of `pod` in StatefulSet `stateful_set`; `None` when the pod is not one of its.
pub fn ordinal(stateful_set: &str, pod: &str) -> Option<u32> {
    let suffix = pod.strip_prefix(stateful_set)?.strip_prefix('-')?;
    if suffix.starts_with('+') || (suffix.len() > 1 && suffix.starts_with('0')) {
        return None;
    }
    suffix.parse().ok()
}

/// The volumes to snapshot, data volume first; `None` when the pod is not the StatefulSet's.
pub fn volumes(backup: &VolumeSnapshotBackup) -> Option<Vec<Volume>> {
    let target = &backup.spec.target;
    let ordinal = ordinal(&target.stateful_set, &primary_pod(backup))?;
    let mut templates = vec![target.data_volume_claim_template.clone()];
    for extra in &backup.spec.snapshot.include_volumes {
        if !templates.contains(extra) {
            templates.push(extra.clone());
        }
    }
    Some(
        templates
            .into_iter()
            .map(|template| Volume {
                claim: format!("{template}-{}-{ordinal}", target.stateful_set),
                snapshot: child_name(&backup.name_any(), &template),
                template,
            })
            .collect(),
    )
}

/// The label selector of the VolumeSnapshots of `backup` (a label value may be cut short:
/// check [`ANNOTATION_BACKUP`] too).
pub fn selector(backup: &VolumeSnapshotBackup) -> String {
    format!(
        "{}={COMPONENT},{LABEL_BACKUP}={}",
        crate::k8s::LABEL_COMPONENT,
        label_value(&backup.name_any())
    )
}

/// Whether `snapshot` belongs to `backup`: made for this very object (its UID), not for an
/// earlier one of the same name.
pub fn belongs_to(snapshot: &VolumeSnapshot, backup: &VolumeSnapshotBackup) -> bool {
    let annotations = snapshot.annotations();
    annotations.get(ANNOTATION_BACKUP) == Some(&backup.name_any())
        && annotations.get(ANNOTATION_BACKUP_UID) == backup.uid().as_ref()
}

/// The VolumeSnapshot of one volume. With `deletionPolicy: Delete` it is owned by the
/// backup object, so that it goes with it even without the operator.
pub fn volume_snapshot(backup: &VolumeSnapshotBackup, volume: &Volume) -> VolumeSnapshot {
    let name = backup.name_any();
    let mut labels = labels(COMPONENT, &name);
    labels.insert(LABEL_BACKUP.into(), label_value(&name));
    let owner = (backup.spec.deletion_policy == DeletionPolicy::Delete)
        .then(|| owner_reference(backup))
        .flatten();
    VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(volume.snapshot.clone()),
            namespace: backup.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_BACKUP.into(), name),
                (
                    ANNOTATION_BACKUP_UID.into(),
                    backup.uid().unwrap_or_default(),
                ),
                (ANNOTATION_CLAIM_TEMPLATE.into(), volume.template.clone()),
                (ANNOTATION_MODE.into(), mode_name(backup).into()),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(volume.claim.clone()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: backup.spec.snapshot.volume_snapshot_class_name.clone(),
        },
        status: None,
    }
}

fn owner_reference(backup: &VolumeSnapshotBackup) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: VolumeSnapshotBackup::api_version(&()).into(),
        kind: VolumeSnapshotBackup::kind(&()).into(),
        name: backup.name_any(),
        uid: backup.uid()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The mode as the spec spells it.
pub fn mode_name(backup: &VolumeSnapshotBackup) -> &'static str {
    match backup.spec.snapshot.mode {
        crate::api::SnapshotMode::Online => "online",
        crate::api::SnapshotMode::Checkpoint => "checkpoint",
        crate::api::SnapshotMode::Offline => "offline",
    }
}

/// The value of [`ANNOTATION_SCALED_DOWN_BY`] for `backup`.
pub fn scaled_down_by(backup: &VolumeSnapshotBackup) -> String {
    format!("VolumeSnapshotBackup/{}", backup.name_any())
}

/// Replicas the StatefulSet asks for (Kubernetes' default is 1).
pub fn replicas(stateful_set: &StatefulSet) -> i32 {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// The pods of `stateful_set` among `pods`: those named `<statefulset>-<ordinal>`.
pub fn pods_of<'a>(stateful_set: &StatefulSet, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let name = stateful_set.name_any();
    pods.iter()
        .filter(|pod| ordinal(&name, &pod.name_any()).is_some())
        .collect()
}

/// Whether a pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_read_from_pod_names_of_the_stateful_set() {
        assert_eq!(ordinal("pg", "pg-0"), Some(0));
        assert_eq!(ordinal("pg", "pg-12"), Some(12));
        assert_eq!(ordinal("pg", "pg-a-0"), None);
        assert_eq!(ordinal("pg", "pgx-0"), None);
        assert_eq!(ordinal("pg", "pg-01"), None);
        assert_eq!(ordinal("pg", "pg-+1"), None);
        assert_eq!(ordinal("pg-a", "pg-a-3"), Some(3));
    }
}
