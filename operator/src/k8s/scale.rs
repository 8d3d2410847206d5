//! Scaling a database's StatefulSet for work that needs it stopped (an offline snapshot,
//! an in-place restore), with the count to go back to recorded on the StatefulSet itself
//! in the same patch: whoever scaled it down, and to how many it returns, survive any
//! restart of the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

use super::FIELD_MANAGER;

/// On a StatefulSet scaled down by pgbackup: the replicas to go back to.
pub const ANNOTATION_ORIGINAL_REPLICAS: &str = "pgbackup.io/original-replicas";
/// On a StatefulSet scaled down by pgbackup: by which object (`<Kind>/<name>`).
pub const ANNOTATION_SCALED_DOWN_BY: &str = "pgbackup.io/scaled-down-by";

/// The names of `stateful_set`'s volume claim templates (the claim of pod `n` for template
/// `t` is `t-<statefulset>-n`).
pub fn claim_templates(stateful_set: &StatefulSet) -> Vec<String> {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .map(|t| t.iter().map(|c| c.name_any()).collect())
        .unwrap_or_default()
}

/// The condition reason of work refused because scaling would delete the claims.
pub const REASON_CLAIMS_DELETED_WHEN_SCALED: &str = "ClaimsDeletedWhenScaled";

/// Why `stateful_set` must not be scaled down, if it must not: with
/// `persistentVolumeClaimRetentionPolicy.whenScaled: Delete` the StatefulSet controller
/// deletes the claims of the pods it removes (and with a `Delete` reclaim policy, their
/// disks), so scaling to 0 would destroy the very data being snapshotted or restored.
/// Refusing is the safe answer: changing the policy for the user would fight whoever owns
/// the spec (Helm, Argo CD, Flux), and a failed or interrupted operation would leave it
/// changed.
pub fn claims_deleted_when_scaled(stateful_set: &StatefulSet) -> Option<String> {
    let policy = stateful_set
        .spec
        .as_ref()?
        .persistent_volume_claim_retention_policy
        .as_ref()?;
    (policy.when_scaled.as_deref() == Some("Delete")).then(|| {
        format!(
            "StatefulSet {}/{} has persistentVolumeClaimRetentionPolicy.whenScaled: Delete, so scaling it to 0 would delete its claims and their data: set whenScaled: Retain (kubectl patch statefulset {} -p '{{\"spec\":{{\"persistentVolumeClaimRetentionPolicy\":{{\"whenScaled\":\"Retain\"}}}}}}'), or use what does not scale it (a restore into a clone, an online or checkpoint snapshot)",
            stateful_set.namespace().unwrap_or_default(),
            stateful_set.name_any(),
            stateful_set.name_any(),
        )
    })
}

/// Merge patches under the operator's field manager.
pub fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The replicas recorded on `stateful_set` by `by`, when `by` scaled it down.
pub fn recorded_by(stateful_set: &StatefulSet, by: &str) -> Option<i32> {
    let annotations = stateful_set.annotations();
    if annotations
        .get(ANNOTATION_SCALED_DOWN_BY)
        .map(String::as_str)
        != Some(by)
    {
        return None;
    }
    annotations
        .get(ANNOTATION_ORIGINAL_REPLICAS)
        .and_then(|r| r.parse().ok())
}

/// Scales StatefulSet `name` to `replicas`; with `record` (the count to go back to and
/// who scaled it) the record is written, without it removed.
pub async fn scale(
    api: &Api<StatefulSet>,
    name: &str,
    replicas: i32,
    record: Option<(i32, &str)>,
) -> Result<(), kube::Error> {
    let annotations: BTreeMap<&str, Option<String>> = BTreeMap::from([
        (
            ANNOTATION_ORIGINAL_REPLICAS,
            record.map(|(original, _)| original.to_string()),
        ),
        (
            ANNOTATION_SCALED_DOWN_BY,
            record.map(|(_, by)| by.to_string()),
        ),
    ]);
    let patch = serde_json::json!({
        "metadata": {"annotations": annotations},
        "spec": {"replicas": replicas},
    });
    tracing::info!(statefulset = %name, replicas, "scaling");
    api.patch(name, &merge_params(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// The pods of `stateful_set`: those its `matchLabels` select (every pod, for a selector
/// of expressions only), named `<statefulset>-<n>`.
pub async fn pods_of(pods: &Api<Pod>, stateful_set: &StatefulSet) -> Result<Vec<Pod>, kube::Error> {
    let labels = stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .filter(|l| !l.is_empty());
    let params = match labels {
        Some(labels) => ListParams::default().labels(
            &labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        None => ListParams::default(),
    };
    let name = stateful_set.name_any();
    Ok(pods
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.name_any()
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|ordinal| ordinal.parse::<u32>().is_ok())
        })
        .collect())
}
