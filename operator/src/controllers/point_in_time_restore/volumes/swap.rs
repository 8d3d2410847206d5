//! Replacing ordinal 0's claims by claims made from the snapshots, once no pod mounts them,
//! keeping each old volume (reclaim policy `Retain`) and recording it in status.

use k8s_openapi::api::apps::v1::StatefulSet;

use super::super::{
    build::{self, SnapshotVolume},
    plan::{Next, SourceObject, Step},
};
use super::reclaim_policy;
use crate::api::ReplacedVolume;

impl Next<'_> {
    /// Whether the restore is in place from a volume snapshot.
    pub(in crate::controllers::point_in_time_restore) fn in_place_snapshot(&self) -> bool {
        self.restore.spec.mode == crate::api::RestoreMode::InPlace
            && matches!(self.observed.source, SourceObject::Snapshot(_))
    }

    /// Ordinal 0's claims to make from the snapshots, with the snapshot of each.
    fn snapshot_claims(&self) -> Vec<(String, SnapshotVolume)> {
        let snapshots = match &self.observed.source {
            SourceObject::Snapshot(Some(snapshot)) => {
                super::super::snapshot_source::snapshot_volumes(snapshot).unwrap_or_default()
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
    pub(in crate::controllers::point_in_time_restore) fn swap_volumes(
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
    pub(super) fn free(
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
}
