//! A VolumeSnapshotBackup as a restore's source (pure): what it can restore to, the
//! claims it becomes, and — from a BackupSchedule of volume snapshots — which of the
//! schedule's snapshots restores the target fastest.

use kube::ResourceExt;

use super::{
    build::{self, Source},
    phases::Verdict,
    plan::Next,
};
use crate::{
    api::{BackupPhase, RecoveryTarget, RestoreMode, SnapshotMode, VolumeSnapshotBackup},
    k8s::agent_pod,
};

/// What the storage says of a snapshot and of the class its claim would be made in;
/// `None` where the operator may not look (a namespace-scoped install).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotStorage {
    /// The VolumeSnapshot.
    pub snapshot: String,
    /// The CSI driver that cut it (its VolumeSnapshotContent's).
    pub driver: Option<String>,
    /// The volume mode of the volume it was cut from, when the storage records it.
    pub source_volume_mode: Option<String>,
    /// The StorageClass the claim made from it would have (the default class when none is
    /// named), and that class's provisioner.
    pub class: Option<(String, String)>,
}

/// Refuses a snapshot the storage could not make the claim of `template` from: another
/// driver than the class's provisioner, or another volume mode than the template's.
fn check_storage(
    volume: &build::SnapshotVolume,
    storage: &SnapshotStorage,
    template_mode: &str,
) -> Result<(), Verdict> {
    if let (Some(driver), Some((class, provisioner))) = (&storage.driver, &storage.class)
        && driver != provisioner
    {
        return Err(Verdict::Refuse(
            "StorageMismatch",
            format!(
                "VolumeSnapshot {} was cut by CSI driver {driver}, but claims of volumeClaimTemplate {} are made in StorageClass {class}, whose provisioner is {provisioner}: it cannot make a volume from that snapshot",
                volume.snapshot, volume.template
            ),
        ));
    }
    if let Some(mode) = &storage.source_volume_mode
        && mode != template_mode
    {
        return Err(Verdict::Refuse(
            "VolumeModeMismatch",
            format!(
                "VolumeSnapshot {} is of a {mode} volume, but volumeClaimTemplate {} asks for volumeMode {template_mode}",
                volume.snapshot, volume.template
            ),
        ));
    }
    Ok(())
}

impl Next<'_> {
    /// The storage checks of every volume of a snapshot source.
    fn check_snapshot_storage(&self, volumes: &[build::SnapshotVolume]) -> Result<(), Verdict> {
        let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
            return Ok(());
        };
        for volume in volumes {
            let Some(storage) = self
                .observed
                .snapshot_storage
                .iter()
                .find(|s| s.snapshot == volume.snapshot)
            else {
                continue;
            };
            let mode = template_volume_mode(stateful_set, &volume.template);
            check_storage(volume, storage, &mode)?;
        }
        Ok(())
    }

    /// A VolumeSnapshotBackup as the source, restored into claims made from its snapshots
    /// (a clone's, or in place ordinal 0's, see [`super::volumes`]): an online one from the backup label a repository records; a
    /// checkpoint or offline one from the checkpoint in the copy, replaying the WAL it
    /// holds. A later target needs a repository's archived WAL.
    pub(super) fn snapshot_source(
        &self,
        snapshot: &VolumeSnapshotBackup,
        namespace: &str,
    ) -> Result<Source, Verdict> {
        let name = snapshot.name_any();
        if self.restore.spec.mode == RestoreMode::InPlace && self.observed.volumes.forbidden {
            return Err(Verdict::Refuse(
                "VolumesNotAllowed",
                format!(
                    "restoring VolumeSnapshotBackup {name} in place replaces the StatefulSet's claims and keeps their PersistentVolumes, which the operator may not read or change (a namespace-scoped install without the chart's persistentVolumes rule): restore into a clone, or grant it"
                ),
            ));
        }
        if self.restore.spec.source.copy.is_some() {
            return Err(Verdict::Refuse(
                "InvalidSpec",
                "source.copy reads a schedule's second copy of its backups; volume snapshots have none".into(),
            ));
        }
        let status = snapshot.status.clone().unwrap_or_default();
        match status.phase {
            Some(BackupPhase::Completed) => {}
            Some(BackupPhase::Failed) => {
                return Err(Verdict::Refuse(
                    "SourceFailed",
                    format!(
                        "VolumeSnapshotBackup {name} failed: {}",
                        status.message.unwrap_or_default()
                    ),
                ));
            }
            _ => {
                return Err(Verdict::Wait(
                    "SourceNotReady",
                    format!("VolumeSnapshotBackup {name} has not completed yet"),
                ));
            }
        }
        let mode = snapshot.spec.snapshot.mode;
        let recorded = snapshot
            .spec
            .repository
            .clone()
            .zip(status.backup_id.clone());
        if mode == SnapshotMode::Online && (recorded.is_none() || status.backup_label.is_none()) {
            return Err(Verdict::Refuse(
                "SnapshotNotRecorded",
                format!(
                    "VolumeSnapshotBackup {name} is an online snapshot with no backup label recorded in a repository (spec.repository): it cannot be made consistent"
                ),
            ));
        }
        let as_taken = self.restore.spec.recovery_target.immediate == Some(true);
        if recorded.is_none() && !as_taken {
            return Err(Verdict::Refuse(
                "NoWalArchive",
                format!(
                    "VolumeSnapshotBackup {name} is recorded in no repository, so there is no archived WAL to take it further: restore it as it was taken (recoveryTarget: {{immediate: true}}), or take snapshots with spec.repository"
                ),
            ));
        }
        let snapshots = snapshot_volumes(snapshot).ok_or_else(|| {
            Verdict::Refuse(
                "SnapshotNotRecorded",
                format!(
                    "VolumeSnapshotBackup {name} does not list a VolumeSnapshot for every volume it took"
                ),
            )
        })?;
        self.check_snapshot_storage(&snapshots)?;
        self.check_claim_limits(&snapshots)?;
        let (repository, backup) = match recorded {
            Some((repository, id)) => (Some(repository), Some(id)),
            None => (None, None),
        };
        let server = match &repository {
            Some(repository) => {
                agent_pod::server_name(repository, namespace, &snapshot.spec.target)
            }
            None => "none".into(),
        };
        Ok(Source {
            server,
            repository,
            backup,
            snapshots,
            sha256: None,
        })
    }
}

/// The snapshots of a completed VolumeSnapshotBackup by the volumeClaimTemplate each
/// stands for, data volume first; `None` when one is missing from its status.
pub(super) fn snapshot_volumes(
    backup: &VolumeSnapshotBackup,
) -> Option<Vec<build::SnapshotVolume>> {
    let taken = backup.status.as_ref()?.snapshots.clone();
    crate::controllers::volume_snapshot_backup::build::volumes(backup)?
        .into_iter()
        .map(|volume| {
            let found = taken.iter().find(|s| s.name == volume.snapshot)?;
            Some(build::SnapshotVolume {
                template: volume.template,
                snapshot: found.name.clone(),
                restore_size: found.restore_size.clone(),
            })
        })
        .collect()
}

/// What a snapshot of each mode restores to (condition `SnapshotGuarantee`).
pub(super) fn snapshot_guarantee(mode: SnapshotMode) -> (&'static str, &'static str) {
    match mode {
        SnapshotMode::Online => (
            "Online",
            "online snapshot: consistent, as a base backup is, from the end of its backup mode; archived WAL takes it to the target",
        ),
        SnapshotMode::Checkpoint => (
            "Checkpoint",
            "checkpoint snapshot: crash-consistent; recovery replays the WAL it holds from its checkpoint, as after a crash (every transaction committed durably before the cut is there), then archived WAL to the target; no target before the cut",
        ),
        SnapshotMode::Offline => (
            "Offline",
            "offline snapshot: the database was shut down cleanly for it and starts as it was; archived WAL, if any, takes it further",
        ),
    }
}

/// The volume mode the StatefulSet's volumeClaimTemplate `template` asks for.
pub fn template_volume_mode(
    stateful_set: &k8s_openapi::api::apps::v1::StatefulSet,
    template: &str,
) -> String {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.iter().find(|t| t.name_any() == template))
        .and_then(|t| t.spec.as_ref()?.volume_mode.clone())
        .unwrap_or_else(|| "Filesystem".into())
}

/// The StorageClass the claims of `template` are made in: the one it names, else the
/// cluster's default (`None` when neither is known).
pub fn template_class(
    stateful_set: &k8s_openapi::api::apps::v1::StatefulSet,
    template: &str,
    classes: &[k8s_openapi::api::storage::v1::StorageClass],
) -> Option<(String, String)> {
    let named = stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.iter().find(|t| t.name_any() == template))
        .and_then(|t| t.spec.as_ref()?.storage_class_name.clone());
    let class = match named {
        Some(name) => classes.iter().find(|c| c.name_any() == name),
        None => classes.iter().find(|c| {
            c.annotations()
                .get("storageclass.kubernetes.io/is-default-class")
                .is_some_and(|v| v == "true")
        }),
    }?;
    Some((class.name_any(), class.provisioner.clone()))
}

/// When the storage cut `snapshot` (the last of its volumes), else when it completed.
fn cut_at(snapshot: &VolumeSnapshotBackup) -> Option<jiff::Timestamp> {
    let status = snapshot.status.as_ref()?;
    status
        .snapshots
        .iter()
        .filter_map(|s| s.creation_time.as_ref().map(|t| t.0))
        .max()
        .or(status.completed_at.as_ref().map(|t| t.0))
}

/// Whether archived WAL can take `snapshot` further: a repository records it (and, for an
/// online one, its backup label).
fn recorded(snapshot: &VolumeSnapshotBackup) -> bool {
    let status = snapshot.status.clone().unwrap_or_default();
    snapshot.spec.repository.is_some()
        && status.backup_id.is_some()
        && (snapshot.spec.snapshot.mode != SnapshotMode::Online || status.backup_label.is_some())
}

/// Of a schedule's VolumeSnapshotBackups, the one that restores `target` fastest: the
/// newest completed one that can reach it (the least WAL to replay); or why none can.
pub fn pick_snapshot<'a>(
    schedule: &str,
    snapshots: &'a [VolumeSnapshotBackup],
    target: &RecoveryTarget,
) -> Result<&'a VolumeSnapshotBackup, String> {
    let (_, words) = build::target_args(target);
    let lsn = |s: &VolumeSnapshotBackup| {
        let status = s.status.as_ref()?;
        crate::postgres::parse_lsn(status.end_lsn.as_deref().or(status.begin_lsn.as_deref())?)
    };
    let reaches = |s: &VolumeSnapshotBackup| -> bool {
        if target.immediate == Some(true) {
            return true;
        }
        if !recorded(s) {
            return false;
        }
        if let Some(time) = &target.time {
            return cut_at(s).is_some_and(|cut| cut <= time.0);
        }
        if let Some(at) = target.lsn.as_deref().and_then(crate::postgres::parse_lsn) {
            return lsn(s).is_some_and(|l| l <= at);
        }
        true
    };
    if target.xid.is_some() || target.name.is_some() {
        return Err(format!(
            "where {words} lies is only known once WAL is replayed, so no snapshot of BackupSchedule {schedule} can be picked for it: name one in source.volumeSnapshotBackup"
        ));
    }
    snapshots
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| s.status.as_ref().and_then(|st| st.phase) == Some(BackupPhase::Completed))
        .filter(|s| reaches(s))
        .max_by_key(|s| (cut_at(s), s.name_any()))
        .ok_or_else(|| {
            format!(
                "BackupSchedule {schedule} has no completed VolumeSnapshotBackup that can be restored to {words}{}",
                if target.immediate == Some(true) {
                    ""
                } else {
                    " (one recorded in its repository, taken before it)"
                }
            )
        })
}

#[cfg(test)]
#[path = "snapshot_source_tests.rs"]
mod tests;
