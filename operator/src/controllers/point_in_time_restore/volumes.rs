//! In place from a volume snapshot (pure): ordinal 0's claims are replaced by claims of the
//! same names made from the snapshots. Nothing is lost on the way: each volume a claim was
//! bound to is recorded in status, then set to reclaim policy `Retain`, and only then is
//! its claim deleted; a rollback deletes the new claims and binds every kept volume back to
//! a claim of its old name; once the restore is proven the kept volumes are released as
//! `spec.previousVolumes` says.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolume, PersistentVolumeClaim},
};
use kube::ResourceExt;

use super::{
    build::{self, SnapshotVolume},
    plan::{Next, SourceObject, Step},
};
use crate::api::{PreviousVolumes, ReplacedVolume, STATUS_FALSE, STATUS_TRUE};

/// Annotation on a volume an in-place snapshot restore replaced: `<namespace>/<restore>`.
pub const ANNOTATION_REPLACED_BY: &str = "pgbackup.io/replaced-by-restore";

/// Ordinal 0's claims of the snapshotted volumes, and the volumes of interest.
#[derive(Clone, Debug, Default)]
pub struct VolumesSeen {
    /// Claims by name.
    pub claims: BTreeMap<String, ClaimSeen>,
    /// PersistentVolumes by name: those the claims are bound to and those recorded.
    pub persistent: BTreeMap<String, VolumeSeen>,
    /// The operator may not read PersistentVolumes (a namespace-scoped install).
    pub forbidden: bool,
    /// Pods that mount each claim, finished ones too (they hold a claim being deleted).
    pub users: BTreeMap<String, Vec<ClaimUser>>,
}

/// A pod that mounts a claim.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimUser {
    /// The pod.
    pub pod: String,
    /// The Job it belongs to, when pgbackup made that Job and the pod has finished: the
    /// Job can go (its outcome is recorded by whoever made it).
    pub finished_job: Option<String>,
}

impl ClaimUser {
    /// The claims `pod` mounts, each with what it is to them.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, Self)> {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ours = pod
            .labels()
            .get(crate::k8s::LABEL_MANAGED_BY)
            .is_some_and(|m| m == "pgbackup");
        let job = pod.labels().get(crate::k8s::LABEL_JOB_NAME).cloned();
        let user = Self {
            pod: pod.name_any(),
            finished_job: job.filter(|_| finished && ours),
        };
        pod.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| (c.claim_name.clone(), user.clone()))
            .collect()
    }
}

/// A claim, as far as the swap cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimSeen {
    /// The PersistentVolume it is bound to, if any.
    pub volume: Option<String>,
    /// Made by this restore (it carries the restore's UID).
    pub ours: bool,
    /// Being deleted.
    pub deleting: bool,
    /// `status.phase` is `Bound`.
    pub bound: bool,
    /// Its storage class.
    pub storage_class_name: Option<String>,
    /// Its requested size.
    pub storage: Option<String>,
}

impl ClaimSeen {
    /// What `claim` shows to the restore whose UID is `restore_uid`.
    pub fn of(claim: &PersistentVolumeClaim, restore_uid: &str) -> Self {
        let spec = claim.spec.clone().unwrap_or_default();
        Self {
            volume: spec.volume_name.clone().filter(|v| !v.is_empty()),
            ours: claim
                .labels()
                .get(build::LABEL_RESTORE_UID)
                .map(String::as_str)
                == Some(restore_uid),
            deleting: claim.metadata.deletion_timestamp.is_some(),
            bound: claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
            storage_class_name: spec.storage_class_name.clone(),
            storage: spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone()),
        }
    }
}

/// A PersistentVolume, as far as the swap cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeSeen {
    /// `spec.persistentVolumeReclaimPolicy`.
    pub reclaim_policy: String,
    /// The UID its claim reference names, if any (none: free, or pre-bound by name).
    pub claim_uid: Option<String>,
    /// [`ANNOTATION_REPLACED_BY`].
    pub replaced_by: Option<String>,
}

impl VolumeSeen {
    /// What `volume` shows.
    pub fn of(volume: &PersistentVolume) -> Self {
        let spec = volume.spec.clone().unwrap_or_default();
        Self {
            reclaim_policy: spec
                .persistent_volume_reclaim_policy
                .unwrap_or_else(|| "Delete".into()),
            claim_uid: spec.claim_ref.and_then(|r| r.uid),
            replaced_by: volume.annotations().get(ANNOTATION_REPLACED_BY).cloned(),
        }
    }
}

fn reclaim_policy(policy: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"persistentVolumeReclaimPolicy": policy}})
}

impl Next<'_> {
    /// Whether the restore is in place from a volume snapshot.
    pub(super) fn in_place_snapshot(&self) -> bool {
        self.restore.spec.mode == crate::api::RestoreMode::InPlace
            && matches!(self.observed.source, SourceObject::Snapshot(_))
    }

    /// Ordinal 0's claims to make from the snapshots, with the snapshot of each.
    fn snapshot_claims(&self) -> Vec<(String, SnapshotVolume)> {
        let snapshots = match &self.observed.source {
            SourceObject::Snapshot(Some(snapshot)) => {
                super::snapshot_source::snapshot_volumes(snapshot).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        snapshots
            .into_iter()
            .map(|s| (build::claim_name_of(self.restore, &s.template, 0), s))
            .collect()
    }

    /// Takes the next step of replacing ordinal 0's claims by claims made from the
    /// snapshots: `Ok(None)` once every one is in place, else what it waits for (reason,
    /// message); `Err` (reason, message) when a claim cannot be replaced without losing
    /// what it holds.
    pub(super) fn swap_volumes(
        &mut self,
        stateful_set: &StatefulSet,
    ) -> Result<Option<(&'static str, String)>, (&'static str, String)> {
        let mut in_place = 0;
        let mut waiting = None;
        let wanted = self.snapshot_claims();
        for (claim, snapshot) in &wanted {
            let seen = self.observed.volumes.claims.get(claim).cloned();
            let recorded = self
                .status
                .replaced_volumes
                .iter()
                .find(|r| r.claim == *claim)
                .cloned();
            match (seen, recorded) {
                (Some(seen), _) if seen.ours => in_place += 1,
                (Some(seen), _) if seen.deleting => {}
                // First the record: the status is written before anything is changed.
                (Some(seen), None) => {
                    let Some(volume) = seen.volume.clone() else {
                        return Err((
                            "ClaimNotBound",
                            format!(
                                "claim {claim} is bound to no volume: there is nothing to keep aside, and nothing to replace"
                            ),
                        ));
                    };
                    let Some(persistent) = self.observed.volumes.persistent.get(&volume) else {
                        return Err((
                            "VolumeNotFound",
                            format!(
                                "claim {claim} names PersistentVolume {volume}, which does not exist"
                            ),
                        ));
                    };
                    self.status.replaced_volumes.push(ReplacedVolume {
                        claim: claim.clone(),
                        persistent_volume: volume,
                        reclaim_policy: persistent.reclaim_policy.clone(),
                        storage_class_name: seen.storage_class_name.clone(),
                        storage: seen.storage.clone(),
                        snapshot: snapshot.snapshot.clone(),
                    });
                }
                // Recorded: the pods that mount the claim go first (finished pgbackup Jobs:
                // their pods would hold it while deleted), else it is waited for.
                (Some(_), Some(_)) if let Some(why) = self.free(claim)? => waiting = Some(why),
                // Then the volume is kept, then the claim goes.
                (Some(_), Some(record)) => {
                    let retained = self
                        .observed
                        .volumes
                        .persistent
                        .get(&record.persistent_volume)
                        .is_some_and(|v| v.reclaim_policy == "Retain");
                    if !retained {
                        self.steps.push(Step::PatchVolume(
                            record.persistent_volume.clone(),
                            reclaim_policy("Retain"),
                        ));
                    }
                    self.steps.push(Step::DeleteClaim(claim.clone()));
                }
                (None, record) => {
                    if let Some(record) = &record
                        && !self
                            .observed
                            .volumes
                            .persistent
                            .contains_key(&record.persistent_volume)
                    {
                        return Err((
                            "VolumeLost",
                            format!(
                                "PersistentVolume {} that claim {claim} was bound to is gone: it was kept with reclaim policy Retain, something else deleted it",
                                record.persistent_volume
                            ),
                        ));
                    }
                    let made = build::replacement_claim(
                        self.restore,
                        stateful_set,
                        snapshot,
                        record.as_ref(),
                    )
                    .ok_or_else(|| {
                        (
                            "ClaimTemplateNotFound",
                            format!(
                                "the StatefulSet has no volumeClaimTemplate {}",
                                snapshot.template
                            ),
                        )
                    })?;
                    self.steps.push(Step::CreateClaim(Box::new(made)));
                }
            }
        }
        if in_place == wanted.len() {
            return Ok(None);
        }
        Ok(Some(waiting.unwrap_or((
            "ReplacingClaims",
            "keeping the volumes of ordinal 0's claims (reclaim policy Retain) and replacing the claims by ones made from the snapshots".into(),
        ))))
    }

    /// What `claim` waits for before it can be deleted: no pod may mount it. Finished Jobs
    /// of pgbackup's that do are deleted; any other pod is waited for until the phase's
    /// time limit.
    fn free(
        &mut self,
        claim: &str,
    ) -> Result<Option<(&'static str, String)>, (&'static str, String)> {
        let users = self
            .observed
            .volumes
            .users
            .get(claim)
            .cloned()
            .unwrap_or_default();
        if users.is_empty() {
            return Ok(None);
        }
        let others: Vec<String> = users
            .iter()
            .filter(|u| u.finished_job.is_none())
            .map(|u| u.pod.clone())
            .collect();
        for job in users.iter().filter_map(|u| u.finished_job.clone()) {
            if !self.steps.contains(&Step::DeleteJob(job.clone())) {
                self.steps.push(Step::DeleteJob(job));
            }
        }
        if !others.is_empty() && self.overdue() {
            return Err((
                "ClaimInUse",
                format!(
                    "claim {claim} is still mounted by pod(s) {}: nothing was replaced",
                    others.join(", ")
                ),
            ));
        }
        if others.is_empty() {
            return Ok(Some((
                "ReplacingClaims",
                format!("deleting the finished Jobs of pgbackup's whose pods mount claim {claim}"),
            )));
        }
        Ok(Some((
            "ClaimInUse",
            format!(
                "claim {claim} is mounted by pod(s) {}: waiting for them to go before it is replaced",
                others.join(", ")
            ),
        )))
    }

    /// Takes the next step of binding every kept volume back to a claim of its old name;
    /// whether they are all back. What cannot be put back is said in a condition.
    pub(super) fn put_volumes_back(&mut self) -> bool {
        let mut back = 0;
        let namespace = self.restore.namespace().unwrap_or_default();
        let records = self.status.replaced_volumes.clone();
        for record in &records {
            let seen = self.observed.volumes.claims.get(&record.claim).cloned();
            let volume = self
                .observed
                .volumes
                .persistent
                .get(&record.persistent_volume)
                .cloned();
            match (seen, volume) {
                (_, None) => {
                    self.condition(
                        "VolumesPutBack",
                        STATUS_FALSE,
                        "VolumeLost",
                        &format!(
                            "PersistentVolume {} of claim {} is gone: nothing to put back",
                            record.persistent_volume, record.claim
                        ),
                    );
                    back += 1;
                }
                (Some(seen), _) if seen.ours => {
                    // The failed restore's finished pods would hold it while it is deleted.
                    let _ = self.free(&record.claim);
                    if !seen.deleting {
                        self.steps.push(Step::DeleteClaim(record.claim.clone()));
                    }
                }
                (Some(seen), Some(volume))
                    if seen.volume.as_deref() == Some(record.persistent_volume.as_str()) =>
                {
                    if seen.bound {
                        if volume.reclaim_policy != record.reclaim_policy {
                            self.steps.push(Step::PatchVolume(
                                record.persistent_volume.clone(),
                                reclaim_policy(&record.reclaim_policy),
                            ));
                        }
                        back += 1;
                    }
                }
                (Some(seen), Some(_)) if seen.deleting => {}
                (Some(_), Some(_)) => {
                    self.condition(
                        "VolumesPutBack",
                        STATUS_FALSE,
                        "ClaimTaken",
                        &format!(
                            "claim {} was made again by someone else; PersistentVolume {} keeps the old data (reclaim policy Retain): bind it by hand",
                            record.claim, record.persistent_volume
                        ),
                    );
                    back += 1;
                }
                (None, Some(volume)) => {
                    // Pre-bound by name (no UID), then claimed by a claim that names it.
                    if volume.claim_uid.is_some() {
                        self.steps.push(Step::PatchVolume(
                            record.persistent_volume.clone(),
                            serde_json::json!({"spec": {"claimRef": {
                                "uid": null, "resourceVersion": null,
                                "namespace": namespace, "name": record.claim}}}),
                        ));
                    }
                    if let Some(stateful_set) = self.observed.references.stateful_set.as_ref()
                        && let Some(claim) = build::claim_back(self.restore, stateful_set, record)
                    {
                        self.steps.push(Step::CreateClaim(Box::new(claim)));
                    }
                }
            }
        }
        back == records.len()
    }

    /// Once the restore is proven: the kept volumes go as `spec.previousVolumes` says.
    pub(super) fn release_volumes(&mut self) {
        let by = format!(
            "{}/{}",
            self.restore.namespace().unwrap_or_default(),
            self.restore.name_any()
        );
        let records = self.status.replaced_volumes.clone();
        let mut names = Vec::new();
        for record in &records {
            let Some(volume) = self
                .observed
                .volumes
                .persistent
                .get(&record.persistent_volume)
                .cloned()
            else {
                continue;
            };
            names.push(record.persistent_volume.clone());
            match self.restore.spec.previous_volumes {
                PreviousVolumes::Keep if volume.replaced_by.as_deref() != Some(&by) => {
                    self.steps.push(Step::PatchVolume(
                        record.persistent_volume.clone(),
                        serde_json::json!({"metadata": {"annotations": {ANNOTATION_REPLACED_BY: by}}}),
                    ));
                }
                PreviousVolumes::Delete if volume.reclaim_policy != record.reclaim_policy => {
                    self.steps.push(Step::PatchVolume(
                        record.persistent_volume.clone(),
                        reclaim_policy(&record.reclaim_policy),
                    ));
                }
                _ => {}
            }
        }
        if names.is_empty() {
            return;
        }
        let (reason, message) = match self.restore.spec.previous_volumes {
            PreviousVolumes::Keep => (
                "Kept",
                format!(
                    "the volumes the restore replaced are kept, released with reclaim policy Retain: {} (delete them when no longer needed)",
                    names.join(", ")
                ),
            ),
            PreviousVolumes::Delete => (
                "Released",
                format!(
                    "the volumes the restore replaced have their own reclaim policy again: {}",
                    names.join(", ")
                ),
            ),
        };
        self.condition("PreviousVolumes", STATUS_TRUE, reason, &message);
    }
}
