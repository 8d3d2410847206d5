//! The reconcilers and what they share: the context (client, events, metrics, settings,
//! per-object backoff), the error type and the error policy. The runtime that starts them
//! under leader election is in [`runtime`].

pub mod backoff;
pub mod backup_schedule;
pub mod bound_host;
pub mod database;
pub mod job_start;
pub mod job_state;
pub mod jobs;
pub mod metrics;
pub mod one_shot;
pub mod point_in_time_restore;
pub mod postgres_backup;
pub mod references;
pub mod restore_test;
pub mod runtime;
pub mod step_plan;
pub mod transport;
pub mod volume_snapshot_backup;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};

pub use backoff::Backoff;
pub use metrics::Metrics;

use crate::k8s::{ApplyError, agent_pod::AgentSettings};

/// How often a settled object is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// A reconcile failed; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read or write of the Kubernetes API failed.
    #[error(transparent)]
    Api(#[from] ApplyError),
    /// A list or other call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The object is cluster-scoped or has no namespace.
    #[error("the object has no namespace")]
    NoNamespace,
}

/// The operator's settings (its command line, set by the chart).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// How agent pods run.
    pub agent: AgentSettings,
    /// Image of the trigger pods of schedules (the operator image).
    pub trigger_image: String,
    /// Addresses (`host:port`) to use instead of these database host names, for an
    /// operator that runs where the cluster's service names do not resolve.
    pub database_addresses: std::collections::BTreeMap<String, String>,
    /// How long a Job may go without a pod, or its pod without a node, before it is
    /// stopped and its owner fails ([`job_start`]).
    pub pod_start_timeout: std::time::Duration,
}

/// Everything a reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The operator's settings.
    pub settings: Settings,
    /// Per-object retry delays.
    pub backoff: Backoff,
    /// The database sessions that hold backup mode for volume snapshots.
    pub sessions: volume_snapshot_backup::session::Sessions,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context around `client`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "pgbackup".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            backoff: Backoff::default(),
            sessions: Default::default(),
        }
    }

    /// The metrics as `/metrics` shows them.
    pub fn metrics_text(&self) -> String {
        crate::http::Probe::metrics(&*self.metrics)
    }

    /// Publishes an Event about `object`; a failure to publish is logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &Note) {
        // Without the version: a status update in between must not make a repeated Event
        // a new one (the recorder counts repeats of the same reference).
        let reference = ObjectReference {
            resource_version: None,
            ..object.object_ref(&())
        };
        if let Err(err) = self.recorder.publish(&event(note), &reference).await {
            tracing::warn!(error = %err, reason = %note.reason, "cannot publish an event");
        }
    }
}

/// The Event of a note. kube's recorder counts an Event again, keeping its first message,
/// when one with the same type, reason and action came within minutes: the action carries
/// a digest of the message, so a new message is a new Event and the same one a series.
fn event(note: &Note) -> Event {
    use sha2::{Digest, Sha256};
    let digest = crate::repository::hex_digest(&Sha256::digest(note.message.as_bytes()));
    Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(cut(&note.message, 1000)),
        action: format!("{}/{}", cut(&note.reason, 100), &digest[..12]),
        secondary: None,
    }
}

/// `text` cut to at most `bytes` bytes, on a character boundary (the API limits Event
/// notes in bytes).
fn cut(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Records a completed backup object in the metrics, under its schedule's name (or its
/// own for a manual backup).
pub fn record_backup_metrics<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    backup: &K,
    times: (
        Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    ),
    stored_size: i64,
) {
    use kube::ResourceExt;
    let (Some(start), Some(end)) = times else {
        return;
    };
    let series = backup
        .annotations()
        .get(crate::k8s::ANNOTATION_SCHEDULE)
        .cloned()
        .unwrap_or_else(|| backup.name_any());
    let end_seconds = end.0.as_millisecond() as f64 / 1000.0;
    let seconds = (end.0.as_millisecond() - start.0.as_millisecond()) as f64 / 1000.0;
    ctx.metrics.backup_completed(
        &backup.namespace().unwrap_or_default(),
        &series,
        end_seconds,
        seconds,
        stored_size,
    );
}

/// Whether deleting a backup object with `policy` deletes its data: `Delete`, or marked by
/// retention with [`ANNOTATION_DELETE_DATA`](crate::k8s::ANNOTATION_DELETE_DATA).
pub fn deletes_data<K: Resource>(backup: &K, policy: crate::api::DeletionPolicy) -> bool {
    use kube::ResourceExt;
    policy == crate::api::DeletionPolicy::Delete
        || backup
            .annotations()
            .get(crate::k8s::ANNOTATION_DELETE_DATA)
            .is_some_and(|v| v == "true")
}

/// An Event to tell users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// A Warning rather than a Normal event.
    pub warning: bool,
    /// `PascalCase` reason.
    pub reason: String,
    /// What happened.
    pub message: String,
}

impl Note {
    /// A Normal event.
    pub fn normal(reason: &str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A Warning event.
    pub fn warning(reason: &str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The error policy of every controller: log, count, retry with the object's backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    let kind = K::kind(&());
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    ctx.metrics.reconcile_error(&kind, &namespace, &name);
    let delay = ctx.backoff.next(&format!("{kind}/{namespace}/{name}"));
    tracing::warn!(
        kind = %kind, namespace = %namespace, name = %name, retry_in_seconds = delay.as_secs(),
        "reconcile failed: {}", crate::agent::error_chain(error)
    );
    Action::requeue(delay)
}

/// Forgets the backoff of an object after a successful reconcile.
pub fn reset_backoff<K: Resource<DynamicType = ()>>(object: &K, ctx: &Context) {
    let kind = K::kind(&());
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    ctx.backoff.reset(&format!("{kind}/{namespace}/{name}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_message_under_the_same_reason_is_a_new_event() {
        let first = event(&Note::warning("BackupFailed", "cannot reach s3://a"));
        let again = event(&Note::warning("BackupFailed", "cannot reach s3://a"));
        let other = event(&Note::warning("BackupFailed", "refused the login"));
        assert_eq!(
            first.action, again.action,
            "the same message counts as a series"
        );
        assert_ne!(
            first.action, other.action,
            "a new message is not folded into the old"
        );
        assert!(
            first.action.starts_with("BackupFailed/"),
            "{}",
            first.action
        );
        assert_eq!(other.note.as_deref(), Some("refused the login"));
    }
}
