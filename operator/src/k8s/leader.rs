//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas can
//! run and only one reconciles. The decision (take, renew, or wait) is pure; writes use the
//! Lease's resourceVersion, so two candidates racing for an expired Lease cannot both win.
//! A Lease counts as expired when this replica has seen it unchanged for its whole
//! duration — by its own clock, as client-go does, so clock skew between nodes cannot
//! hand over a live Lease.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, api::PostParams};

/// What a candidate does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or the holder let it expire: take it.
    Take,
    /// We hold it: renew it.
    Renew,
    /// Somebody else holds it and renews it: wait.
    Wait,
}

/// Whether `me` may lead, given the Lease as read and how long this replica has seen it
/// unchanged.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Take;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::Take,
        Some(_) => {
            let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
            if unchanged_for < Duration::from_secs(duration) {
                LeaseDecision::Wait
            } else {
                LeaseDecision::Take
            }
        }
    }
}

/// What identifies one version of a Lease: its holder and last renewal.
type Record = (Option<String>, Option<Timestamp>);

/// One candidate for the leadership of a Lease.
#[derive(Clone, Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's record as last seen, and since when (this replica's clock).
    seen: std::sync::Arc<std::sync::Mutex<Option<(Record, std::time::Instant)>>>,
}

impl LeaderElector {
    /// A candidate `identity` (the pod name) for the Lease `name` of `api`'s namespace.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            seen: Default::default(),
        }
    }

    /// How long the Lease has been seen with this record.
    fn unchanged_for(&self, spec: Option<&LeaseSpec>) -> Duration {
        let record: Record = (
            spec.and_then(|s| s.holder_identity.clone()),
            spec.and_then(|s| {
                s.renew_time
                    .as_ref()
                    .or(s.acquire_time.as_ref())
                    .map(|t| t.0)
            }),
        );
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.as_ref() {
            Some((previous, since)) if *previous == record => now.duration_since(*since),
            _ => {
                *seen = Some((record, now));
                Duration::ZERO
            }
        }
    }

    /// How long the leader may go without renewing before it must stop: two thirds of
    /// the duration, so it stops before any follower may take over.
    pub fn give_up_after(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the holder renews: a third of the Lease's duration.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease when allowed; whether we hold it afterwards. A lost race
    /// (the Lease changed since we read it) is "not leading", not an error.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, self.unchanged_for(spec));
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let result = match (decision, current) {
            (LeaseDecision::Wait, _) => return Ok(false),
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == LeaseDecision::Take {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // replace() sends the resourceVersion we read: a concurrent writer wins, we lose.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime("2026-11-21T10:00:00Z".parse().expect("time"))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_free_lease_is_taken() {
        assert_eq!(decide(None, "a", Duration::ZERO), LeaseDecision::Take);
        let free = LeaseSpec::default();
        assert_eq!(
            decide(Some(&free), "a", Duration::ZERO),
            LeaseDecision::Take
        );
    }

    #[test]
    fn a_live_lease_of_another_holder_is_respected_until_seen_unchanged_for_its_duration() {
        let lease = held_by("b");
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(14)),
            LeaseDecision::Wait
        );
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(15)),
            LeaseDecision::Take
        );
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&held_by("a")), "a", Duration::from_secs(3600)),
            LeaseDecision::Renew
        );
    }
}
