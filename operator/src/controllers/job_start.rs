//! Jobs whose pod never runs (pure decisions): no pod is ever made (a ResourceQuota, Pod
//! Security admission or a webhook refuses it; the Job shows only `FailedCreate` events) or
//! its pod never gets a node. Such a Job looks active for ever, and a CronJob with
//! `concurrencyPolicy: Forbid` skips every later run behind it. Past a bound
//! (`--pod-start-timeout`) the operator stops it — the cause in an annotation, and an
//! `activeDeadlineSeconds` already passed, so the Job controller fails it and never makes a
//! pod later — and its owner fails with that cause.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use serde::{Deserialize, Serialize};

/// The annotation in which the operator records why it stopped a Job.
pub const ANNOTATION_STOPPED: &str = "pgbackup.io/stopped";

/// Why a Job was stopped: a `PascalCase` reason and a message a user acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    /// `PodNotCreated` or `Unschedulable`.
    pub reason: String,
    /// What happened, with the API server's or the scheduler's words when there are any.
    pub message: String,
}

/// How a Job fails to start.
#[derive(Clone, Debug, PartialEq)]
pub enum NotStarting {
    /// No pod of it exists.
    NoPod,
    /// Its pods are not scheduled; the scheduler's message.
    Unscheduled(String),
}

/// Why `job` has not started a pod `timeout` after it was made, if it has not; `pods` are
/// the Job's own (by its UID). A finished or suspended Job, or one a pod of which runs or
/// ran, is starting fine: a long backup whose pod was evicted and not yet replaced has
/// no pod for a moment, but its Job has counted one.
pub fn not_starting(
    job: &Job,
    pods: &[Pod],
    now: Timestamp,
    timeout: Duration,
) -> Option<NotStarting> {
    let status = job.status.as_ref();
    let finished = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter().any(|c| {
            matches!(
                c.type_.as_str(),
                "Complete" | "Failed" | "SuccessCriteriaMet"
            ) && c.status == "True"
        })
    });
    let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
    if finished || suspended || !older_than(job.metadata.creation_timestamp.as_ref(), now, timeout)
    {
        return None;
    }
    let counted = status.is_some_and(|s| {
        s.active.unwrap_or(0) + s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0) > 0
            || s.uncounted_terminated_pods.as_ref().is_some_and(|u| {
                u.failed
                    .iter()
                    .chain(u.succeeded.iter())
                    .flatten()
                    .next()
                    .is_some()
            })
    });
    if pods.is_empty() {
        return (!counted).then_some(NotStarting::NoPod);
    }
    let mut unscheduled = pods.iter().map(|pod| {
        let condition = pod
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        older_than(pod.metadata.creation_timestamp.as_ref(), now, timeout)
            .then(|| condition.message.clone().unwrap_or_default())
    });
    let first = unscheduled.next().flatten()?;
    unscheduled
        .all(|u| u.is_some())
        .then_some(NotStarting::Unscheduled(first))
}

/// What the owner of the Job `name` says when it is stopped for `cause`; `refusal` is the
/// newest `FailedCreate` message of the Job, when there is one.
pub fn stopped(
    name: &str,
    cause: &NotStarting,
    timeout: Duration,
    refusal: Option<&str>,
) -> Stopped {
    let within = in_words(timeout);
    match cause {
        NotStarting::NoPod => Stopped {
            reason: "PodNotCreated".into(),
            message: match refusal {
                Some(words) => format!(
                    "Job {name} could not create its pod in {within}, so it was stopped: {words}"
                ),
                None => format!(
                    "Job {name} made no pod in {within}, so it was stopped: something refuses \
                     its pods (a ResourceQuota, Pod Security admission or a webhook); \
                     `kubectl describe job {name}` shows why"
                ),
            },
        },
        NotStarting::Unscheduled(words) => Stopped {
            reason: "Unschedulable".into(),
            message: format!(
                "the pod of Job {name} got no node in {within}, so the Job was stopped: {words}"
            ),
        },
    }
}

/// Why the operator stopped `job`, when it did.
pub fn recorded(job: &Job) -> Option<Stopped> {
    let text = job.metadata.annotations.as_ref()?.get(ANNOTATION_STOPPED)?;
    serde_json::from_str(text).ok()
}

fn older_than(
    created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
    age: Duration,
) -> bool {
    created.is_some_and(|t| {
        let elapsed = now.duration_since(t.0);
        !elapsed.is_negative() && elapsed.unsigned_abs() >= age
    })
}

fn in_words(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 60 && s % 60 == 0 => format!("{} minute(s)", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTES_5: Duration = Duration::from_secs(300);

    fn job(created: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-backup", "namespace": "shop", "uid": "u",
                         "creationTimestamp": created},
            "spec": {"template": {"spec": {"containers": []}}},
            "status": status,
        }))
        .expect("Job fixture")
    }

    fn pending_pod(created: &str, scheduled: Option<&str>) -> Pod {
        let conditions = match scheduled {
            Some(message) => serde_json::json!([{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": message}]),
            None => serde_json::json!([{"type": "PodScheduled", "status": "True"}]),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-backup-x", "namespace": "shop", "creationTimestamp": created},
            "status": {"phase": "Pending", "conditions": conditions},
        }))
        .expect("Pod fixture")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    #[test]
    fn a_job_without_a_pod_past_the_bound_is_not_starting() {
        let made = job("2026-11-21T10:00:00Z", serde_json::json!({}));
        let early = at("2026-11-21T10:04:59Z");
        let late = at("2026-11-21T10:05:00Z");
        assert_eq!(not_starting(&made, &[], early, MINUTES_5), None);
        assert_eq!(
            not_starting(&made, &[], late, MINUTES_5),
            Some(NotStarting::NoPod)
        );
        // A pod on a node is starting, however slowly.
        let placed = pending_pod("2026-11-21T10:00:01Z", None);
        assert_eq!(not_starting(&made, &[placed], late, MINUTES_5), None);
        // A Job that had a pod (evicted, say, and not replaced yet) is not one that never
        // started, however old it is.
        let evicted = job("2026-11-21T08:00:00Z", serde_json::json!({"failed": 1}));
        assert_eq!(not_starting(&evicted, &[], late, MINUTES_5), None);
    }

    #[test]
    fn a_pod_without_a_node_past_the_bound_is_unschedulable() {
        let made = job("2026-11-21T10:00:00Z", serde_json::json!({}));
        let words = "0/3 nodes are available: 3 Insufficient memory.";
        let pod = pending_pod("2026-11-21T10:00:01Z", Some(words));
        assert_eq!(
            not_starting(
                &made,
                std::slice::from_ref(&pod),
                at("2026-11-21T10:05:00Z"),
                MINUTES_5
            ),
            None,
            "the pod itself has not waited 5 minutes yet"
        );
        assert_eq!(
            not_starting(&made, &[pod], at("2026-11-21T10:06:00Z"), MINUTES_5),
            Some(NotStarting::Unscheduled(words.into()))
        );
    }

    #[test]
    fn finished_or_suspended_jobs_are_left_alone() {
        let late = at("2026-11-21T11:00:00Z");
        let failed = job(
            "2026-11-21T10:00:00Z",
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True"}]}),
        );
        assert_eq!(not_starting(&failed, &[], late, MINUTES_5), None);
        let mut suspended = job("2026-11-21T10:00:00Z", serde_json::json!({}));
        suspended.spec.as_mut().expect("spec").suspend = Some(true);
        assert_eq!(not_starting(&suspended, &[], late, MINUTES_5), None);
    }

    #[test]
    fn the_cause_names_the_job_and_the_api_servers_words() {
        let quota = "pods \"b-backup-x\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=1, limited: pods=1";
        let stopped = stopped("b-backup", &NotStarting::NoPod, MINUTES_5, Some(quota));
        assert_eq!(stopped.reason, "PodNotCreated");
        assert!(
            stopped
                .message
                .contains("Job b-backup could not create its pod in 5 minute(s)")
        );
        assert!(stopped.message.ends_with(quota), "{}", stopped.message);
        let unknown = super::stopped("b-backup", &NotStarting::NoPod, MINUTES_5, None);
        assert!(unknown.message.contains("kubectl describe job b-backup"));
        let nodes = super::stopped(
            "b-backup",
            &NotStarting::Unscheduled("no node".into()),
            Duration::from_secs(90),
            None,
        );
        assert_eq!(nodes.reason, "Unschedulable");
        assert!(nodes.message.contains("in 90 seconds"), "{}", nodes.message);
    }

    #[test]
    fn the_recorded_cause_is_read_back() {
        let mut stopped_job = job("2026-11-21T10:00:00Z", serde_json::json!({}));
        let cause = Stopped {
            reason: "PodNotCreated".into(),
            message: "m".into(),
        };
        stopped_job.metadata.annotations = Some(
            [(
                ANNOTATION_STOPPED.to_string(),
                serde_json::to_string(&cause).expect("json"),
            )]
            .into(),
        );
        assert_eq!(recorded(&stopped_job), Some(cause));
        assert_eq!(
            recorded(&job("2026-11-21T10:00:00Z", serde_json::json!({}))),
            None
        );
    }
}
