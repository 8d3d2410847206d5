//! Whether the namespace lets a snapshot restore make the claims it needs (pure): each
//! claim's size against the LimitRanges' bounds for a PersistentVolumeClaim, and the
//! storage and claims it adds against the ResourceQuotas (in all and per class) — looked
//! at before anything changes, so that an in-place restore is not refused its new claim
//! after the old one is gone.

use k8s_openapi::{
    api::core::v1::{LimitRange, ResourceQuota},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::ResourceExt;

use super::{build, phases::Verdict, plan::Next};
use crate::{
    api::{ReplacedVolume, RestoreMode},
    k8s::database_pod::quantity_bytes,
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

/// A quantity in bytes, or a count; `None` when it cannot be read (a bound that cannot be
/// read is not checked).
fn bytes(text: &str) -> Option<u128> {
    quantity_bytes(text)
}

/// A size as people write it: `8Gi`, else bytes.
fn human(bytes: u128) -> String {
    const GI: u128 = 1 << 30;
    if bytes >= GI && bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else {
        bytes.to_string()
    }
}

/// The `storage` bound of a LimitRange item's `max` or `min`.
fn storage_bound(
    map: Option<&std::collections::BTreeMap<String, Quantity>>,
) -> Option<(String, u128)> {
    let text = map?.get("storage")?.0.clone();
    let value = bytes(&text)?;
    Some((text, value))
}

/// Refuses claims the namespace's limits would refuse.
pub fn check(planned: &[PlannedClaim], limits: &NamespaceLimits) -> Result<(), Verdict> {
    for claim in planned {
        let Some(size) = bytes(&claim.storage) else {
            continue;
        };
        for range in &limits.limit_ranges {
            let items = range.spec.as_ref().map(|s| s.limits.as_slice());
            for item in items.unwrap_or_default() {
                if item.type_ != "PersistentVolumeClaim" {
                    continue;
                }
                if let Some((max, bound)) = storage_bound(item.max.as_ref())
                    && size > bound
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
                if let Some((min, bound)) = storage_bound(item.min.as_ref())
                    && size < bound
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
        if let Some(problem) = over_quota(planned, quota) {
            return Err(Verdict::Refuse("QuotaExceeded", problem));
        }
    }
    Ok(())
}

/// What the claims add to, and free of, a quota: storage, and the number of claims.
#[derive(Clone, Copy, Default)]
struct Usage {
    added: u128,
    freed: u128,
    claims: u128,
    replaced: u128,
}

fn usage<'a>(claims: impl Iterator<Item = &'a PlannedClaim>) -> Usage {
    claims.fold(Usage::default(), |sum, claim| Usage {
        added: sum.added + bytes(&claim.storage).unwrap_or(0),
        freed: sum.freed + claim.replaces.as_deref().and_then(bytes).unwrap_or(0),
        claims: sum.claims + 1,
        replaced: sum.replaced + u128::from(claim.replaces.is_some()),
    })
}

/// Why `quota` has no room for the claims, if it has none.
fn over_quota(planned: &[PlannedClaim], quota: &ResourceQuota) -> Option<String> {
    let status = quota.status.as_ref()?;
    let hard = status.hard.as_ref()?;
    let used = status.used.clone().unwrap_or_default();
    let over = |key: &str, added: u128, freed: u128, sizes: bool| -> Option<String> {
        let limit = bytes(&hard.get(key)?.0)?;
        let now = used.get(key).and_then(|q| bytes(&q.0)).unwrap_or(0);
        if now + added <= limit + freed {
            return None;
        }
        let shown = |n: u128| if sizes { human(n) } else { n.to_string() };
        Some(format!(
            "ResourceQuota {} allows {key} {}, {} used, and the restore's claims add {}{}: raise the quota or free some",
            quota.name_any(),
            hard[key].0,
            used.get(key).map_or("0", |q| q.0.as_str()),
            shown(added),
            if freed > 0 {
                format!(" while freeing {}", shown(freed))
            } else {
                String::new()
            }
        ))
    };
    let all = usage(planned.iter());
    let mut problems = vec![
        over("requests.storage", all.added, all.freed, true),
        over("persistentvolumeclaims", all.claims, all.replaced, false),
        over(
            "count/persistentvolumeclaims",
            all.claims,
            all.replaced,
            false,
        ),
    ];
    let mut classes: Vec<&str> = planned.iter().filter_map(|c| c.class.as_deref()).collect();
    classes.sort_unstable();
    classes.dedup();
    for class in classes {
        let of = usage(planned.iter().filter(|c| c.class.as_deref() == Some(class)));
        let key = format!("{class}.storageclass.storage.k8s.io");
        problems.push(over(
            &format!("{key}/requests.storage"),
            of.added,
            of.freed,
            true,
        ));
        problems.push(over(
            &format!("{key}/persistentvolumeclaims"),
            of.claims,
            of.replaced,
            false,
        ));
    }
    problems.into_iter().flatten().next()
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
            // The very claim the restore will make: in place, of the replaced claim's class
            // and at least its size; into a clone, like the template.
            let old = in_place
                .then(|| self.observed.volumes.claims.get(&name))
                .flatten();
            let claim = match old {
                Some(seen) => build::replacement_claim(
                    self.restore,
                    stateful_set,
                    volume,
                    Some(&ReplacedVolume {
                        claim: name.clone(),
                        storage_class_name: seen.storage_class_name.clone(),
                        storage: seen.storage.clone(),
                        ..ReplacedVolume::default()
                    }),
                ),
                None => {
                    build::clone_claim(self.restore, stateful_set, &volume.template, Some(volume))
                }
            };
            let Some(spec) = claim.and_then(|c| c.spec) else {
                continue;
            };
            let storage = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref()?.get("storage"))
                .map(|q| q.0.clone());
            let Some(storage) = storage else {
                continue;
            };
            // A claim that names no class is made in the cluster's default one.
            let default_class = self
                .observed
                .snapshot_storage
                .iter()
                .find(|s| s.snapshot == volume.snapshot)
                .and_then(|s| s.class.as_ref().map(|(class, _)| class.clone()));
            planned.push(PlannedClaim {
                name,
                class: spec.storage_class_name.or(default_class),
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
