//! `job`: how the Jobs and pods that do the work are run (retries, deadlines, resources,
//! where they are placed).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
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

    /// Where the agent pods run: node selector, tolerations, affinity, priority class.
    /// In a BackupSchedule's template: every pod the schedule runs (backups, restore
    /// tests, the WAL archiver, its trigger and clean-up).
    #[serde(flatten)]
    pub placement: AgentPlacement,
}

/// Where agent pods run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPlacement {
    /// Node labels the agent pods must run on (their `nodeSelector`), e.g. a node pool for
    /// batch work.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of those nodes the agent pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Where the agent pods may run beyond `nodeSelector`: node and pod (anti-)affinity,
    /// e.g. away from the database's own pods, or into its zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the agent pods, e.g. one that lets a backup preempt batch work
    /// rather than wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: default_ttl(),
            resources: None,
            placement: AgentPlacement::default(),
        }
    }
}

fn default_backoff_limit() -> i32 {
    2
}

fn default_ttl() -> i32 {
    7 * 24 * 3600
}

impl AgentPlacement {
    /// Whether nothing is asked: the pods go wherever the scheduler puts them.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
