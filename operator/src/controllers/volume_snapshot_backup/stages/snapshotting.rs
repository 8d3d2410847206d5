//! The Snapshotting stage: creating the VolumeSnapshots, following them until every one is
//! cut, and marking them with what the backup recorded.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::super::{build, check::scale_back, next::Next, plan::Step, session::SessionState};
use crate::{
    api::{SnapshotMode, SnapshotStage, SnapshotStatus},
    k8s::generated::volume_snapshot::VolumeSnapshot,
    postgres::StoppedBackup,
};

impl Next<'_> {
    pub(super) fn create_snapshots(&mut self, why: &str) {
        let snapshots: Vec<VolumeSnapshot> = self
            .volumes()
            .iter()
            .map(|v| build::volume_snapshot(self.backup, v))
            .collect();
        let names: Vec<String> = snapshots.iter().map(|s| s.name_any()).collect();
        self.steps.push(Step::CreateSnapshots(snapshots));
        self.running(
            SnapshotStage::Snapshotting,
            &format!("{why}; VolumeSnapshot(s) {} created", names.join(", ")),
        );
    }

    /// Reads the snapshots into status; whether every one is cut, and the first error.
    pub(super) fn follow_snapshots(&mut self) -> (bool, bool, Option<String>) {
        let mut all_cut = true;
        let mut all_ready = true;
        let mut error = None;
        let mut statuses = Vec::new();
        for volume in self.volumes() {
            let found = self.observed.snapshots.iter().find(|s| {
                s.name_any() == volume.snapshot && s.metadata.deletion_timestamp.is_none()
            });
            let status = found.and_then(|s| s.status.as_ref());
            let creation_time = status
                .and_then(|s| s.creation_time.as_deref())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(Time);
            let ready = status.and_then(|s| s.ready_to_use).unwrap_or(false);
            all_cut &= creation_time.is_some();
            all_ready &= ready;
            if error.is_none()
                && let Some(e) = status.and_then(|s| s.error.as_ref())
            {
                error = Some(format!(
                    "VolumeSnapshot {}: {}",
                    volume.snapshot,
                    e.message.as_deref().unwrap_or("error without a message")
                ));
            }
            if found.is_none() {
                all_cut = false;
                all_ready = false;
            }
            statuses.push(SnapshotStatus {
                name: volume.snapshot.clone(),
                claim_name: volume.claim.clone(),
                ready_to_use: ready,
                restore_size: status.and_then(|s| s.restore_size.clone()),
                creation_time,
            });
        }
        self.status.snapshots = statuses;
        (all_cut, all_ready, error)
    }

    pub(crate) fn snapshotting(&mut self) {
        let (all_cut, _, error) = self.follow_snapshots();
        let missing: Vec<VolumeSnapshot> = self
            .volumes()
            .iter()
            .filter(|v| {
                !self
                    .observed
                    .snapshots
                    .iter()
                    .any(|s| s.name_any() == v.snapshot)
            })
            .map(|v| build::volume_snapshot(self.backup, v))
            .collect();
        if !missing.is_empty() {
            self.steps.push(Step::CreateSnapshots(missing));
        }
        if let Some(taken) = self.observed.foreign_snapshots.first() {
            return self.roll_back(
                "SnapshotNameTaken",
                &format!("VolumeSnapshot {taken} was made by someone else meanwhile"),
            );
        }
        match (self.mode(), &self.observed.session) {
            (SnapshotMode::Online, SessionState::InBackup { .. }) => {}
            (SnapshotMode::Online, SessionState::Failed { reason, message }) => {
                return self.roll_back(reason, &message.clone());
            }
            (SnapshotMode::Online, _) => return self.session_lost(),
            (SnapshotMode::Offline, _) => {
                let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
                    return self.stateful_set_gone();
                };
                if build::replicas(stateful_set) != 0 {
                    return self.roll_back(
                        "ScaledUpDuringSnapshot",
                        "the StatefulSet was scaled up while its volumes were being snapshotted (by a person, or by Argo CD or Flux syncing replicas back: pause the sync for offline snapshots)",
                    );
                }
            }
            (SnapshotMode::Checkpoint, _) => {}
        }
        if all_cut {
            return self.cut();
        }
        if self.deadline_passed() {
            return self.deadline_exceeded_with(error);
        }
        let message = match error {
            Some(error) => format!("waiting for the snapshot(s) to be cut; last error: {error}"),
            None => "waiting for the snapshot(s) to be cut".to_string(),
        };
        self.running(SnapshotStage::Snapshotting, &message);
    }

    /// Every snapshot is cut: release the database.
    pub(super) fn cut(&mut self) {
        match self.mode() {
            SnapshotMode::Online => {
                self.steps.push(Step::StopSession);
                self.running(
                    SnapshotStage::Releasing,
                    "snapshot(s) cut; leaving backup mode",
                );
            }
            SnapshotMode::Checkpoint => {
                self.annotate_snapshots(None);
                self.released("snapshot(s) cut");
            }
            SnapshotMode::Offline => {
                if let Some(step) = scale_back(self.backup, self.observed) {
                    self.steps.push(step);
                }
                self.annotate_snapshots(None);
                let original = self.status.original_replicas.unwrap_or(1);
                self.released(&format!(
                    "snapshot(s) cut; StatefulSet scaled back to {original}"
                ));
            }
        }
    }

    pub(super) fn annotate_snapshots(&mut self, stopped: Option<&StoppedBackup>) {
        let mut annotations = BTreeMap::new();
        if let Some(stopped) = stopped {
            annotations.insert(
                build::ANNOTATION_BACKUP_LABEL.to_string(),
                stopped.label_file.clone(),
            );
            if !stopped.tablespace_map.is_empty() {
                annotations.insert(
                    build::ANNOTATION_TABLESPACE_MAP.to_string(),
                    stopped.tablespace_map.clone(),
                );
            }
            annotations.insert(
                build::ANNOTATION_END_LSN.to_string(),
                stopped.end_lsn.clone(),
            );
        }
        if let Some(lsn) = &self.status.begin_lsn {
            annotations.insert(build::ANNOTATION_BEGIN_LSN.to_string(), lsn.clone());
        }
        if let Some(timeline) = self.status.timeline {
            annotations.insert(build::ANNOTATION_TIMELINE.to_string(), timeline.to_string());
        }
        if !annotations.is_empty() {
            self.steps.push(Step::AnnotateSnapshots(annotations));
        }
    }
}
