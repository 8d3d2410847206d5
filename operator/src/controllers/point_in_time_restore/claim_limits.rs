//! Whether the namespace lets a snapshot restore make the claims it needs (pure): each
//! claim's size against the LimitRanges' bounds for a PersistentVolumeClaim, and the
//! storage and claims it adds against the ResourceQuotas (in all and per class) — looked
//! at before anything changes, so that an in-place restore is not refused its new claim
//! after the old one is gone.

use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use kube::ResourceExt;

use super::{build, phases::Verdict, plan::Next};
use crate::{
    api::RestoreMode,
    k8s::database_pod::{self, quantity_bytes},
};

/// The namespace's LimitRanges and ResourceQuotas (`None` in [`super::plan::Observed`]
/// where the operator may not read them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceLimits {
    pub limit_ranges: Vec<LimitRange>,
    pub quotas: Vec<ResourceQuota>,
}

/// A claim the restore will make.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedClaim {
    /// Its name.
    pub name: String,
    /// The storage class it is made in, when known.
    pub class: Option<String>,
    /// The size it asks for, e.g. `10Gi`.
    pub storage: String,
    /// The size of the claim it replaces (in place), freed before it is made.
    pub replaces: Option<String>,
}

fn bytes(text: &str) -> u128 {
    quantity_bytes(text).unwrap_or(0)
}

/// Refuses claims the namespace's limits would refuse.
pub fn check(planned: &[PlannedClaim], limits: &NamespaceLimits) -> Result<(), Verdict> {
    for claim in planned {
        let size = bytes(&claim.storage);
        for range in &limits.limit_ranges {
            let items = range.spec.as_ref().map(|s| s.limits.as_slice());
            for item in items.unwrap_or_default() {
                if item.type_ != "PersistentVolumeClaim" {
                    continue;
                }
                let bound = |map: &Option<std::collections::BTreeMap<String, _>>| {
                    map.as_ref().and_then(|m| m.get("storage")).map(
                        |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone(),
                    )
                };
                if let Some(max) = bound(&item.max)
                    && size > bytes(&max)
                {
                    return Err(Verdict::Refuse(
                        "ClaimTooLarge",
                        format!(
                            "claim {} needs {} (the snapshot's restore size, at least its template's), but LimitRange {} allows claims of at most {max}: raise the limit",
                            claim.name,
                            claim.storage,
                            range.name_any()
                        ),
                    ));
                }
                if let Some(min) = bound(&item.min)
                    && size < bytes(&min)
                {
                    return Err(Verdict::Refuse(
                        "ClaimTooSmall",
                        format!(
                            "claim {} asks for {}, but LimitRange {} wants claims of at least {min}",
                            claim.name,
                            claim.storage,
                            range.name_any()
                        ),
                    ));
                }
            }
        }
    }
    for quota in &limits.quotas {
        let hard = quota.status.as_ref().and_then(|s| s.hard.clone());
        let used = quota.status.as_ref().and_then(|s| s.used.clone());
        let (Some(hard), used) = (hard, used.unwrap_or_default()) else {
            continue;
        };
        let over = |key: &str, added: u128, freed: u128| {
            let limit = bytes(&hard.get(key)?.0);
            let now = used.get(key).map_or(0, |q| bytes(&q.0));
            (now + added > limit + freed).then(|| {
                format!(
                    "ResourceQuota {} allows {key} {}, {} used, and the restore's claims add {}{}: raise the quota or free some",
                    quota.name_any(),
                    hard[key].0,
                    used.get(key).map_or("0", |q| q.0.as_str()),
                    added,
                    if freed > 0 {
                        format!(" while freeing {freed}")
                    } else {
                        String::new()
                    }
                )
            })
        };
        let total = |claims: &mut dyn Iterator<Item = &PlannedClaim>| {
            claims.fold(
                (0u128, 0u128, 0u128, 0u128),
                |(added, freed, n, gone), c| {
                    (
                        added + bytes(&c.storage),
                        freed + c.replaces.as_deref().map_or(0, bytes),
                        n + 1,
                        gone + u128::from(c.replaces.is_some()),
                    )
                },
            )
        };
        let (added, freed, count, replaced) = total(&mut planned.iter());
        let mut problems = vec![
            over("requests.storage", added, freed),
            over("persistentvolumeclaims", count, replaced),
        ];
        let mut classes: Vec<&str> = planned.iter().filter_map(|c| c.class.as_deref()).collect();
        classes.sort_unstable();
        classes.dedup();
        for class in classes {
            let (added, freed, count, replaced) =
                total(&mut planned.iter().filter(|c| c.class.as_deref() == Some(class)));
            problems.push(over(
                &format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                added,
                freed,
            ));
            problems.push(over(
                &format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                count,
                replaced,
            ));
        }
        if let Some(problem) = problems.into_iter().flatten().next() {
            return Err(Verdict::Refuse("QuotaExceeded", problem));
        }
    }
    Ok(())
}

impl Next<'_> {
    /// The claims a snapshot source becomes, checked against the namespace's limits (when
    /// the operator may read them).
    pub(super) fn check_claim_limits(
        &self,
        volumes: &[build::SnapshotVolume],
    ) -> Result<(), Verdict> {
        let (Some(limits), Some(stateful_set)) = (
            self.observed.claim_limits.as_ref(),
            self.observed.references.stateful_set.as_ref(),
        ) else {
            return Ok(());
        };
        let in_place = self.restore.spec.mode == RestoreMode::InPlace;
        let mut planned = Vec::new();
        for volume in volumes {
            let name = build::claim_name_of(self.restore, &volume.template, 0);
            let Some(mut spec) = database_pod::claim_spec(
                stateful_set,
                &volume.template,
                Some((&volume.snapshot, volume.restore_size.as_deref())),
            ) else {
                continue;
            };
            let old = in_place
                .then(|| self.observed.volumes.claims.get(&name))
                .flatten();
            if let Some(size) = old.and_then(|c| c.storage.as_deref()) {
                database_pod::ask_at_least(&mut spec, size);
            }
            let default_class = self
                .observed
                .snapshot_storage
                .iter()
                .find(|s| s.snapshot == volume.snapshot)
                .and_then(|s| s.class.as_ref().map(|(class, _)| class.clone()));
            let class = old
                .and_then(|c| c.storage_class_name.clone())
                .or(spec.storage_class_name.clone())
                .or(default_class);
            let storage = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref()?.get("storage"))
                .map(|q| q.0.clone());
            let Some(storage) = storage else {
                continue;
            };
            planned.push(PlannedClaim {
                name,
                class,
                storage,
                replaces: old.and_then(|c| c.storage.clone()),
            });
        }
        check(&planned, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(storage: &str, replaces: Option<&str>) -> PlannedClaim {
        PlannedClaim {
            name: "data-pg-0".into(),
            class: Some("fast".into()),
            storage: storage.into(),
            replaces: replaces.map(String::from),
        }
    }

    fn limits(ranges: serde_json::Value, quotas: serde_json::Value) -> NamespaceLimits {
        NamespaceLimits {
            limit_ranges: serde_json::from_value(ranges).expect("ranges"),
            quotas: serde_json::from_value(quotas).expect("quotas"),
        }
    }

    fn reason(result: Result<(), Verdict>) -> Option<&'static str> {
        match result {
            Err(Verdict::Refuse(reason, _)) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_claim_beyond_a_limit_range_is_refused() {
        let ranges = serde_json::json!([{"metadata": {"name": "claims"},
            "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "5Gi"}, "min": {"storage": "1Gi"}}]}}]);
        let limits = limits(ranges, serde_json::json!([]));
        assert_eq!(reason(check(&[claim("5Gi", None)], &limits)), None);
        assert_eq!(
            reason(check(&[claim("6Gi", None)], &limits)),
            Some("ClaimTooLarge")
        );
        assert_eq!(
            reason(check(&[claim("500Mi", None)], &limits)),
            Some("ClaimTooSmall")
        );
    }

    #[test]
    fn a_quota_counts_what_an_in_place_restore_frees_first() {
        let quotas = serde_json::json!([{"metadata": {"name": "storage"},
            "status": {"hard": {"requests.storage": "10Gi", "persistentvolumeclaims": "2",
                                "fast.storageclass.storage.k8s.io/requests.storage": "8Gi"},
                       "used": {"requests.storage": "8Gi", "persistentvolumeclaims": "2",
                                "fast.storageclass.storage.k8s.io/requests.storage": "8Gi"}}}]);
        let limits = limits(serde_json::json!([]), quotas);
        // In place: the old claim's 5Gi are freed before the new 5Gi claim is made.
        assert_eq!(reason(check(&[claim("5Gi", Some("5Gi"))], &limits)), None);
        // A clone adds a claim, and storage the class's quota has no room for.
        assert_eq!(
            reason(check(&[claim("1Gi", None)], &limits)),
            Some("QuotaExceeded")
        );
        // Larger than the claim it replaces, beyond the class's quota.
        let Err(Verdict::Refuse(_, message)) = check(&[claim("6Gi", Some("5Gi"))], &limits) else {
            panic!("refused");
        };
        assert!(message.contains("fast.storageclass"), "{message}");
    }
}
