//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas can
//! run and only one reconciles. The decision (take, renew, or wait) is pure; writes use the
//! Lease's resourceVersion, so two candidates racing for an expired Lease cannot both win.

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

/// Whether `me` may lead, given the Lease as read at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Take;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::Take,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(renewed) if now.as_second() - renewed.as_second() < duration => {
                    LeaseDecision::Wait
                }
                _ => LeaseDecision::Take,
            }
        }
    }
}

/// One candidate for the leadership of a Lease.
#[derive(Clone, Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    /// A candidate `identity` (the pod name) for the Lease `name` of `api`'s namespace.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
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
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
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

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().expect("time"))),
            ..LeaseSpec::default()
        }
    }

    fn at(time: &str) -> Timestamp {
        time.parse().expect("time")
    }

    #[test]
    fn a_missing_or_free_lease_is_taken() {
        assert_eq!(
            decide(None, "a", at("2026-11-21T10:00:00Z")),
            LeaseDecision::Take
        );
        let free = LeaseSpec::default();
        assert_eq!(
            decide(Some(&free), "a", at("2026-11-21T10:00:00Z")),
            LeaseDecision::Take
        );
    }

    #[test]
    fn a_live_lease_of_another_holder_is_respected_until_it_expires() {
        let lease = held_by("b", "2026-11-21T10:00:00Z");
        assert_eq!(
            decide(Some(&lease), "a", at("2026-11-21T10:00:14Z")),
            LeaseDecision::Wait
        );
        assert_eq!(
            decide(Some(&lease), "a", at("2026-11-21T10:00:15Z")),
            LeaseDecision::Take
        );
    }

    #[test]
    fn the_holder_renews() {
        let lease = held_by("a", "2026-11-21T09:00:00Z");
        assert_eq!(
            decide(Some(&lease), "a", at("2026-11-21T10:00:00Z")),
            LeaseDecision::Renew
        );
    }
}
