//! What a VolumeSnapshotBackup needs before anything is touched (pure), and the facts
//! about its snapshots and StatefulSet that every stage and the cleanup share.

use kube::ResourceExt;

use super::{
    build,
    plan::{Observed, Step},
    session::{REASON_SESSION_LOST, REASON_UNREACHABLE},
};
use crate::{
    api::{SnapshotMode, VolumeSnapshotBackup, VolumeSnapshotOptions},
    controllers::references::{self, Problem},
};

/// Rules of the snapshot options the schema cannot say (shared with schedules' templates).
pub fn validate_options(options: &VolumeSnapshotOptions) -> Result<(), Problem> {
    if options.mode == SnapshotMode::Checkpoint && !options.include_volumes.is_empty() {
        return Err(Problem::new(
            "InvalidSpec",
            "checkpoint snapshots of several volumes are cut at different moments of a running server and are not consistent with each other: use mode online (with WAL archiving) or offline with includeVolumes",
        ));
    }
    Ok(())
}

/// Checks before anything is touched; the first problem found.
pub fn check(backup: &VolumeSnapshotBackup, observed: &Observed) -> Result<(), Problem> {
    let spec = &backup.spec;
    let namespace = backup.namespace().unwrap_or_default();
    let target = &spec.target;
    let offline = spec.snapshot.mode == SnapshotMode::Offline;
    validate_options(&spec.snapshot)?;
    let Some(stateful_set) = &observed.references.stateful_set else {
        return Err(Problem::new(
            "StatefulSetNotFound",
            format!(
                "StatefulSet {namespace}/{} does not exist (target.statefulSet)",
                target.stateful_set
            ),
        ));
    };
    if offline && let Some(message) = crate::k8s::scale::claims_deleted_when_scaled(stateful_set) {
        return Err(Problem::new(
            crate::k8s::scale::REASON_CLAIMS_DELETED_WHEN_SCALED,
            message,
        ));
    }
    if !offline {
        references::check(
            &namespace,
            target,
            spec.repository.as_ref(),
            &observed.references,
        )?;
    } else if let Some(repository) = &spec.repository {
        // The database is stopped for nothing if its record cannot be written.
        references::check_repository(&namespace, target, repository, &observed.references)?;
        let given = target.data_sub_path.trim_matches('/');
        if let Some(expected) = crate::k8s::database_pod::expected_data_sub_path(
            stateful_set,
            &target.data_volume_claim_template,
        ) && !given.is_empty()
            && expected != given
        {
            return Err(Problem::new(
                "DataSubPathMismatch",
                format!(
                    "the database container keeps PGDATA in {expected:?} of its data volume, but target.dataSubPath is {given:?}: the record would read the wrong directory; set target.dataSubPath: {expected:?}"
                ),
            ));
        }
    }
    let pod = build::primary_pod(backup);
    let Some(volumes) = build::volumes(backup) else {
        return Err(Problem::new(
            "InvalidSpec",
            format!(
                "target.pod {pod} is not a pod of StatefulSet {} (its pods are named {}-<ordinal>)",
                target.stateful_set, target.stateful_set
            ),
        ));
    };
    let templates = crate::k8s::scale::claim_templates(stateful_set);
    for volume in &volumes {
        if !templates.contains(&volume.template) {
            return Err(Problem::new(
                "ClaimTemplateNotFound",
                format!(
                    "StatefulSet {namespace}/{} has no volumeClaimTemplate {:?} (it has: {}); set target.dataVolumeClaimTemplate or includeVolumes",
                    target.stateful_set,
                    volume.template,
                    if templates.is_empty() {
                        "none".to_string()
                    } else {
                        templates.join(", ")
                    }
                ),
            ));
        }
        if !observed.claims.contains(&volume.claim) {
            return Err(Problem::new(
                "ClaimNotFound",
                format!(
                    "PersistentVolumeClaim {namespace}/{} does not exist (volumeClaimTemplate {} of pod {pod})",
                    volume.claim, volume.template
                ),
            ));
        }
    }
    if observed.class_found == Some(false) {
        return Err(Problem::new(
            "VolumeSnapshotClassNotFound",
            format!(
                "VolumeSnapshotClass {} does not exist (volumeSnapshotClassName); `kubectl get volumesnapshotclass` lists those there are",
                spec.snapshot
                    .volume_snapshot_class_name
                    .as_deref()
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(by) = stateful_set
        .annotations()
        .get(build::ANNOTATION_SCALED_DOWN_BY)
        && *by != build::scaled_down_by(backup)
    {
        return Err(Problem::new(
            "StatefulSetBusy",
            format!(
                "StatefulSet {namespace}/{} is scaled down by {by}; waiting until it is back",
                target.stateful_set
            ),
        ));
    }
    if let Some(taken) = observed.foreign_snapshots.first() {
        return Err(Problem::new(
            "SnapshotNameTaken",
            format!(
                "VolumeSnapshot {namespace}/{taken} exists and is not this backup's (an earlier backup of the same name?); delete it or give this backup another name"
            ),
        ));
    }
    if !offline {
        let ready = observed
            .pods
            .iter()
            .find(|p| p.name_any() == pod)
            .is_some_and(build::pod_ready);
        if !ready {
            return Err(Problem::new(
                "PodNotReady",
                format!(
                    "pod {namespace}/{pod} is not ready; the database must run for an {} snapshot",
                    build::mode_name(backup)
                ),
            ));
        }
    }
    Ok(())
}

/// The step that puts an `offline` StatefulSet back, if this backup scaled it down and it
/// is not back yet. Only the record on the StatefulSet counts (written in the same patch
/// as the scale), so a StatefulSet someone else scaled to 0 is never started.
pub fn scale_back(backup: &VolumeSnapshotBackup, observed: &Observed) -> Option<Step> {
    let stateful_set = observed.references.stateful_set.as_ref()?;
    let annotations = stateful_set.annotations();
    if annotations.get(build::ANNOTATION_SCALED_DOWN_BY) != Some(&build::scaled_down_by(backup)) {
        return None;
    }
    let original = annotations
        .get(build::ANNOTATION_ORIGINAL_REPLICAS)
        .and_then(|r| r.parse().ok())
        .or(backup.status.as_ref().and_then(|s| s.original_replicas))
        .unwrap_or(1);
    Some(Step::Scale {
        replicas: original,
        original: None,
    })
}

/// Names of the backup's snapshots not yet being deleted.
pub fn live_snapshots(observed: &Observed) -> Vec<String> {
    observed
        .snapshots
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| s.name_any())
        .collect()
}

/// Whether a failure with this reason is worth another attempt.
pub fn retryable(reason: &str) -> bool {
    reason == REASON_SESSION_LOST || reason == REASON_UNREACHABLE
}
