//! Where a Job the operator started stands, read from the Job and its pods (pure): running,
//! stuck before its container starts, succeeded with the agent's report, or failed with
//! the agent's reason.

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ContainerStatus, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use serde::Deserialize;

use super::job_start;

/// Container waiting reasons that will not pass without a change by the user.
const STUCK_REASONS: [&str; 5] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
];

/// The state of a Job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Not finished. `stuck` is set when its container cannot start (a missing Secret key,
    /// an image that cannot be pulled): `(reason, message)`.
    Active {
        /// When the Job started.
        started: Option<Time>,
        /// Why the container cannot start.
        stuck: Option<(String, String)>,
    },
    /// Finished successfully; the agent's result from the termination message.
    Succeeded {
        /// When it started.
        started: Option<Time>,
        /// When it completed.
        finished: Option<Time>,
        /// The termination message.
        result: Option<String>,
    },
    /// Failed for good.
    Failed {
        /// A `PascalCase` cause.
        reason: String,
        /// What went wrong, in the agent's words when it said any.
        message: String,
        /// When it failed.
        finished: Option<Time>,
    },
}

/// A failure as the agent reports it in its termination message.
#[derive(Deserialize)]
struct AgentFailure {
    reason: String,
    message: String,
}

/// The label Kubernetes puts on a Job's pods: the Job's UID.
const LABEL_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";

/// The state of `job`, given the pods of its name. Only the pods of this very Job count
/// (by its UID): a Job deleted and made again under the same name must not read the
/// result an earlier one's pod left.
pub fn job_state(job: &Job, pods: &[Pod]) -> JobState {
    let pods = own_pods(job, pods);
    let pods = pods.as_slice();
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let last_message = last_termination_message(pods);
    if condition("Complete").is_some() {
        return JobState::Succeeded {
            started: status.start_time.clone(),
            finished: status.completion_time.clone(),
            result: last_message,
        };
    }
    // Stopped by the operator because its pod never ran ([`job_start`]).
    if let Some(stopped) = job_start::recorded(job) {
        return JobState::Failed {
            reason: stopped.reason,
            message: stopped.message,
            finished: condition("Failed").and_then(|c| c.last_transition_time.clone()),
        };
    }

    if let Some(failed) = condition("Failed") {
        let finished = failed.last_transition_time.clone();
        let agent = last_message
            .as_deref()
            .and_then(|m| serde_json::from_str::<AgentFailure>(m).ok());
        let job_reason = failed.reason.clone().unwrap_or_else(|| "JobFailed".into());
        return match (job_reason.as_str(), agent, last_message) {
            // The agent did not fail: the Job was stopped from outside.
            ("DeadlineExceeded", _, _) => JobState::Failed {
                reason: "DeadlineExceeded".into(),
                message: format!(
                    "the Job ran longer than its activeDeadlineSeconds ({}) and was stopped",
                    job.spec
                        .as_ref()
                        .and_then(|s| s.active_deadline_seconds)
                        .unwrap_or_default()
                ),
                finished,
            },
            (_, Some(agent), _) => JobState::Failed {
                reason: agent.reason,
                message: agent.message,
                finished,
            },
            (_, None, Some(text)) => JobState::Failed {
                reason: job_reason,
                message: text.trim().to_string(),
                finished,
            },
            (_, None, None) => JobState::Failed {
                reason: job_reason,
                message: failed.message.clone().unwrap_or_default(),
                finished,
            },
        };
    }
    // The pod ended well before the Job controller marked the Job: the Job has succeeded
    // (its Jobs run one pod to completion), and the report is at hand now — deleting the
    // Job as if it still ran would lose it.
    if let Some(finished) = succeeded_pod(pods) {
        return JobState::Succeeded {
            started: status.start_time.clone(),
            finished,
            result: last_message,
        };
    }
    let stuck = pods.iter().find_map(|pod| {
        container_statuses(pod).find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.clone()?;
            // The kubelet alternates between these two; one reason keeps the status
            // (and the Events) from flapping.
            let reason = if reason == "ErrImagePull" {
                "ImagePullBackOff".to_string()
            } else {
                reason
            };
            STUCK_REASONS
                .contains(&reason.as_str())
                .then(|| (reason, waiting.message.clone().unwrap_or_default()))
        })
    });
    JobState::Active {
        started: status.start_time,
        stuck,
    }
}

/// The pods of this very Job, by its UID, among the pods of its name.
pub fn own_pods(job: &Job, pods: &[Pod]) -> Vec<Pod> {
    let uid = job.metadata.uid.as_deref();
    pods.iter()
        .filter(|pod| {
            let labelled = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_CONTROLLER_UID))
                .map(String::as_str);
            let owned = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(o.uid.as_str()) == uid);
            uid.is_some() && (labelled == uid || owned)
        })
        .cloned()
        .collect()
}

/// When a pod's container ended with exit code 0, if one did.
fn succeeded_pod(pods: &[Pod]) -> Option<Option<Time>> {
    pods.iter().find_map(|pod| {
        container_statuses(pod).find_map(|c| {
            let terminated = c.state.as_ref()?.terminated.as_ref()?;
            (terminated.exit_code == 0).then(|| terminated.finished_at.clone())
        })
    })
}

/// The termination message of the newest pod that has one.
fn last_termination_message(pods: &[Pod]) -> Option<String> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    pods.iter().rev().find_map(|pod| {
        container_statuses(pod).find_map(|c| {
            let terminated = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
            terminated.message.clone().filter(|m| !m.trim().is_empty())
        })
    })
}

/// The statuses of a pod's containers (none before it is scheduled).
fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
}

#[cfg(test)]
#[path = "job_state_tests.rs"]
pub(crate) mod tests;
