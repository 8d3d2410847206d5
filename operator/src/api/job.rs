//! `job`: how the Jobs and pods that do the work are run (retries, deadlines, resources).

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the Job that does the work runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOptions {
    /// Pod failures the Job retries before the backup is Failed. Each retry is a fresh
    /// backup; a failed attempt leaves nothing in the repository.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,

    /// Seconds the Job may run in all before it is stopped and the backup is Failed.
    /// Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Seconds a finished Job (and its pod and logs) is kept. The backup object and its
    /// status stay regardless; the operator must see the finished Job once to record its
    /// result, hence at least a minute.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 60))]
    pub ttl_seconds_after_finished: i32,

    /// CPU and memory of the agent container. Default: requests of 100m CPU and 256Mi
    /// memory, a 1Gi memory limit (memory use does not grow with the database size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: default_ttl(),
            resources: None,
        }
    }
}

fn default_backoff_limit() -> i32 {
    2
}

fn default_ttl() -> i32 {
    7 * 24 * 3600
}
