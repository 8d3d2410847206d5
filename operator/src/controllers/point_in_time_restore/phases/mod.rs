//! The phases of a PointInTimeRestore (pure): what each does with what was observed.

mod restoring;
mod rolling_back;
mod scaling;
mod source;
mod validating;
mod verifying;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

use super::{build, plan::Next};
use crate::{controllers::job_state::JobState, k8s::agent_pod};

/// Why validation stopped.
pub(super) enum Verdict {
    /// Waiting for something that may still come (a backup still running).
    Wait(&'static str, String),
    /// Refused: nothing will change it but a new restore.
    Refuse(&'static str, String),
}

/// Labels and annotations by which Argo CD and Flux mark what they manage.
const GITOPS_MARKS: [(&str, &str); 5] = [
    ("argocd.argoproj.io/instance", "Argo CD"),
    ("argocd.argoproj.io/tracking-id", "Argo CD"),
    ("kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("helm.toolkit.fluxcd.io/name", "Flux"),
    ("app.kubernetes.io/instance-argocd", "Argo CD"),
];

/// Which GitOps tool manages `stateful_set`, if any. Argo CD's label tracking uses
/// `app.kubernetes.io/instance`, which Helm charts set too: without the annotations
/// `helm install` adds (Argo CD renders charts with `helm template`), it is taken for
/// Argo CD's.
pub fn gitops_manager(stateful_set: &StatefulSet) -> Option<&'static str> {
    let marked = GITOPS_MARKS.iter().find_map(|(key, tool)| {
        (stateful_set.labels().contains_key(*key) || stateful_set.annotations().contains_key(*key))
            .then_some(*tool)
    });
    let label_tracked = stateful_set
        .labels()
        .contains_key("app.kubernetes.io/instance")
        && !stateful_set
            .annotations()
            .contains_key("meta.helm.sh/release-name");
    marked.or(label_tracked.then_some("Argo CD"))
}

/// How long a StatefulSet a GitOps tool manages is held at 0 replicas, watched, before
/// its data is written: long enough for a self-heal (Argo CD's waits 5 s) to show.
pub const SETTLE_SECONDS: i64 = 30;

impl Next<'_> {
    fn stateful_set(&self) -> Option<&StatefulSet> {
        self.observed.references.stateful_set.as_ref()
    }

    fn major(&self) -> u32 {
        self.stateful_set()
            .and_then(agent_pod::postgres_major)
            .unwrap_or(self.settings.default_major)
    }

    fn job(&self, step: &str) -> Option<&JobState> {
        self.observed.jobs.get(&build::job_name(self.restore, step))
    }
}

/// A time as PostgreSQL logs it, `2026-11-21 12:00:00.123456+00`.
pub fn parse_postgres_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let (main, offset) = match text.rfind(['+', '-']) {
        Some(i) if i > 10 => (&text[..i], &text[i..]),
        _ => (text, "+00"),
    };
    let offset = if offset.len() == 3 {
        format!("{offset}:00")
    } else {
        offset.to_string()
    };
    format!("{}{offset}", main.replacen(' ', "T", 1))
        .parse()
        .ok()
}
