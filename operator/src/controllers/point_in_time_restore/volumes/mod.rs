//! In place from a volume snapshot (pure): ordinal 0's claims are replaced by claims of the
//! same names made from the snapshots. Nothing is lost on the way: each volume a claim was
//! bound to is recorded in status, then set to reclaim policy `Retain`, and only then is
//! its claim deleted; a rollback deletes the new claims and binds every kept volume back to
//! a claim of its old name; once the restore is proven the kept volumes are released as
//! `spec.previousVolumes` says.
//!
//! Here: what the swap sees of claims, volumes and the pods that mount them. Replacing the
//! claims is in `swap`, binding the kept volumes back and releasing them in `give_back`.

mod give_back;
mod swap;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;

use super::build;

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
