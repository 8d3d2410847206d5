//! The objects and names of a VolumeSnapshotBackup (pure): which claims it snapshots, the
//! VolumeSnapshots themselves, and what is recorded on them and on the StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::Job,
        core::v1::{
            EphemeralVolumeSource, PersistentVolumeClaimTemplate, Pod, Volume as PodVolume,
            VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{
    agent::record_snapshot::SnapshotRecord,
    api::{
        DeletionPolicy, JobOptions, SnapshotMode, VolumeSnapshotBackup, VolumeSnapshotBackupStatus,
    },
    k8s::{
        LABEL_BACKUP,
        agent_pod::{self, AgentSettings},
        child_name, database_pod,
        generated::volume_snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec},
        label_value, labels,
    },
    repository::{SnapshotDetails, VolumeSnapshotEntry, new_backup_id},
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

/// Name of the Job that records the backup in `repository`.
pub fn record_job_name(backup: &VolumeSnapshotBackup) -> String {
    child_name(&backup.name_any(), "record")
}

/// `server_version_num` from `server_version` (`16.4` → 160004).
fn version_num(version: &str) -> Option<u32> {
    let mut parts = version.split(['.', ' ']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

/// What the record Job writes, from the status of a backup whose snapshots are ready. An
/// `offline` backup's positions, version and cluster are left for the Job to read from a
/// copy of its data snapshot.
pub fn snapshot_record(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
) -> Result<SnapshotRecord, String> {
    let missing = |what: &str| format!("cannot record the backup: its {what} is not known");
    let begin_time = status
        .started_at
        .as_ref()
        .ok_or_else(|| missing("start time"))?
        .0;
    let end_time = status
        .snapshots
        .iter()
        .filter_map(|s| s.creation_time.as_ref().map(|t| t.0))
        .max()
        .unwrap_or(begin_time);
    let details = SnapshotDetails {
        namespace: backup.namespace().unwrap_or_default(),
        name: backup.name_any(),
        stateful_set: backup.spec.target.stateful_set.clone(),
        mode: mode_name(backup).into(),
        volume_snapshots: status
            .snapshots
            .iter()
            .map(|s| VolumeSnapshotEntry {
                name: s.name.clone(),
                claim_name: s.claim_name.clone(),
                restore_size: s.restore_size.clone(),
            })
            .collect(),
        backup_label: status.backup_label.clone(),
        tablespace_map: status.tablespace_map.clone(),
    };
    let mut record = SnapshotRecord {
        backup_id: new_backup_id(begin_time),
        begin_time,
        end_time,
        server_version: String::new(),
        server_version_num: 0,
        system_identifier: None,
        wal_segment_size: 0,
        timeline: 0,
        begin_lsn: String::new(),
        end_lsn: None,
        details,
    };
    if backup.spec.snapshot.mode == SnapshotMode::Offline {
        return Ok(record);
    }
    let server_version = status
        .server_version
        .clone()
        .ok_or_else(|| missing("server version"))?;
    record.server_version_num =
        version_num(&server_version).ok_or_else(|| missing("server version"))?;
    record.server_version = server_version;
    record.system_identifier = status.system_identifier.clone();
    record.wal_segment_size = status
        .wal_segment_size
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| missing("WAL segment size"))?;
    record.timeline = status
        .timeline
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| missing("timeline"))?;
    record.begin_lsn = status
        .begin_lsn
        .clone()
        .ok_or_else(|| missing("begin LSN"))?;
    record.end_lsn = status.end_lsn.clone();
    Ok(record)
}

/// Where the record Job of an `offline` backup mounts the copy of its data snapshot.
pub const COPY_MOUNT: &str = "/var/lib/pgbackup/copy";

/// The copy of an `offline` backup's data snapshot the record Job reads the positions
/// from: a generic ephemeral volume (its claim goes with the Job's pod), mounted read-only
/// as the database's user; and the data directory in it.
fn data_copy(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
    stateful_set: &StatefulSet,
) -> Result<(PodVolume, VolumeMount, String), String> {
    let data = volumes(backup)
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| "cannot record the backup: it names no data volume".to_string())?;
    let restore_size = status
        .snapshots
        .iter()
        .find(|s| s.name == data.snapshot)
        .and_then(|s| s.restore_size.as_deref());
    let spec = database_pod::claim_spec(
        stateful_set,
        &data.template,
        Some((&data.snapshot, restore_size)),
    )
    .ok_or_else(|| {
        format!(
            "cannot record the backup: StatefulSet {} has no volumeClaimTemplate {} to make a copy of the snapshot like",
            backup.spec.target.stateful_set, data.template
        )
    })?;
    let sub_path = database_pod::expected_data_sub_path(stateful_set, &data.template)
        .unwrap_or_else(|| {
            backup
                .spec
                .target
                .data_sub_path
                .trim_matches('/')
                .to_string()
        });
    let pgdata = if sub_path.is_empty() {
        COPY_MOUNT.to_string()
    } else {
        format!("{COPY_MOUNT}/{sub_path}")
    };
    let volume = PodVolume {
        name: "copy".into(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: None,
                spec,
            }),
        }),
        ..PodVolume::default()
    };
    let mount = VolumeMount {
        name: "copy".into(),
        mount_path: COPY_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Ok((volume, mount, pgdata))
}

/// The Job that records the backup in `repository` with `pgbackup record-snapshot`; for
/// an `offline` backup it reads the positions from a copy of the data snapshot.
pub fn record_job(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
    settings: &AgentSettings,
    stateful_set: Option<&StatefulSet>,
) -> Result<Job, String> {
    let repository = backup
        .spec
        .repository
        .as_ref()
        .ok_or_else(|| "no repository to record the backup in".to_string())?;
    let record = snapshot_record(backup, status)?;
    let namespace = backup.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &backup.spec.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let record_json = serde_json::to_string(&record).map_err(|e| e.to_string())?;
    let mut env = vec![agent_pod::env("PGBACKUP_SNAPSHOT_RECORD", record_json)];
    let mut settings = settings.clone();
    let mut major = record.server_version_num / 10000;
    let mut copy = None;
    if backup.spec.snapshot.mode == SnapshotMode::Offline {
        let stateful_set = stateful_set.ok_or_else(|| {
            format!(
                "cannot record the backup: StatefulSet {} is gone, and with it what a copy of the snapshot is made like",
                backup.spec.target.stateful_set
            )
        })?;
        let (volume, mount, pgdata) = data_copy(backup, status, stateful_set)?;
        env.push(agent_pod::env("PGBACKUP_CONTROL_DATA", pgdata));
        major = agent_pod::postgres_major(stateful_set).unwrap_or(settings.default_major);
        if let Some((uid, _, _)) = database_pod::database_user(stateful_set) {
            // The control file is the database user's alone.
            settings.run_as_user = uid;
        }
        copy = Some((volume, mount));
    }
    let mut container = agent_pod::repository_container(
        "record",
        settings.image_for(major),
        &["record-snapshot"],
        &wiring,
        env,
    );
    container.volumes.extend(copy);
    container.resources = resources(backup);
    Ok(agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: record_job_name(backup),
            component: "record",
            ownership: agent_pod::Ownership::Owned,
            options: &JobOptions {
                placement: backup.spec.placement.clone(),
                ..JobOptions::default()
            },
            backoff_limit: 3,
        },
        &settings,
        container,
    ))
}

/// Name of the Job that deletes the record from `repository`.
pub fn forget_job_name(backup: &VolumeSnapshotBackup) -> String {
    child_name(&backup.name_any(), "forget")
}

/// The Job that deletes the record `backup_id` from `repository` (the snapshots are
/// deleted with the object), with the WAL only it needed.
pub fn forget_job(
    backup: &VolumeSnapshotBackup,
    settings: &AgentSettings,
    backup_id: &str,
) -> Option<Job> {
    let repository = backup.spec.repository.as_ref()?;
    let namespace = backup.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &backup.spec.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let major = backup
        .status
        .as_ref()
        .and_then(|s| s.server_version.as_deref())
        .and_then(version_num)
        .map_or(settings.default_major, |n| n / 10000);
    let mut container = agent_pod::repository_container(
        "forget",
        settings.image_for(major),
        &["prune", "--backup-id", backup_id, "--delete"],
        &wiring,
        Vec::new(),
    );
    container.resources = resources(backup);
    Some(agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: forget_job_name(backup),
            component: "delete",
            ownership: agent_pod::Ownership::Free,
            options: &JobOptions {
                placement: backup.spec.placement.clone(),
                ..JobOptions::default()
            },
            backoff_limit: 3,
        },
        settings,
        container,
    ))
}

/// CPU and memory of the record and forget containers: the spec's, else a small default.
fn resources(backup: &VolumeSnapshotBackup) -> k8s_openapi::api::core::v1::ResourceRequirements {
    agent_pod::resources_or(backup.spec.resources.as_ref(), ("50m", "64Mi", "256Mi"))
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
    fn version_numbers_are_derived() {
        assert_eq!(version_num("16.4"), Some(160004));
        assert_eq!(version_num("18.0"), Some(180000));
        assert_eq!(version_num("17beta1"), None);
        assert_eq!(version_num("15"), Some(150000));
    }

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
