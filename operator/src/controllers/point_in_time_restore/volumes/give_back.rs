//! After a rollback, binding every kept volume back to a claim of its old name; once the
//! restore is proven, releasing the kept volumes as `spec.previousVolumes` says.

use kube::ResourceExt;

use super::super::{
    build,
    plan::{Next, Step},
};
use super::{ANNOTATION_REPLACED_BY, reclaim_policy};
use crate::api::{PreviousVolumes, STATUS_FALSE, STATUS_TRUE};

impl Next<'_> {
    /// Takes the next step of binding every kept volume back to a claim of its old name;
    /// whether they are all back. What cannot be put back is said in a condition.
    pub(in crate::controllers::point_in_time_restore) fn put_volumes_back(&mut self) -> bool {
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
    pub(in crate::controllers::point_in_time_restore) fn release_volumes(&mut self) {
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
