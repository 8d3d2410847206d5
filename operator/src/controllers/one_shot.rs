//! A Job that must succeed before a finalizer may go (deleting a backup's data, dropping a
//! replication slot): started once, waited for, retried with a fresh Job after a failure,
//! removed once it succeeded — with an Event at each turn.

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Namespace};
use kube::{Api, Resource, ResourceExt, runtime::controller::Action};

use super::{Context, Error, Note, job_state::JobState, jobs::observe_job, references::Problem};
use crate::k8s::{apply, delete_if_exists};

/// What the Job is for, in the words of its Events.
#[derive(Clone, Debug)]
pub struct Purpose<'a> {
    /// What it does, e.g. `deleting backup 20261121T000000Z`.
    pub doing: String,
    /// The Event reason when it starts, succeeds and fails.
    pub reasons: [&'a str; 3],
    /// What the user can do to give up.
    pub give_up: String,
    /// The Event message when it succeeded.
    pub done: String,
    /// What stays behind when the Job can never run.
    pub left: String,
}

/// Drives the Job `name` of `owner` to success. `None` once it succeeded (the Job is then
/// removed), or when it cannot ever run because the namespace is being deleted; otherwise
/// when to look again. `job` builds it when it must be (re)started,
/// or says why it cannot be.
pub async fn run_to_success<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    name: &str,
    purpose: &Purpose<'_>,
    job: impl AsyncFnOnce() -> Result<Result<Job, Problem>, Error>,
) -> Result<Option<Action>, Error> {
    let namespace = owner.namespace().ok_or(Error::NoNamespace)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let [started, succeeded, failed] = purpose.reasons;
    match observe_job(ctx, &namespace, name).await? {
        None if namespace_terminating(ctx, &namespace).await? => {
            // No new Job can start there, and the namespace would wait for this finalizer
            // for ever.
            let note = format!(
                "{} is not possible: the namespace is being deleted; {}",
                purpose.doing, purpose.left
            );
            ctx.publish(owner, &Note::warning("NamespaceTerminating", note))
                .await;
            Ok(None)
        }
        None => match job().await? {
            Ok(job) => {
                match apply(&jobs, &job).await {
                    Ok(_) => {}
                    // A namespace being deleted takes no new Job, and would otherwise wait
                    // for this finalizer for ever.
                    Err(err) if err.namespace_terminating() => {
                        let note = format!(
                            "{} is not possible: the namespace is being deleted; {}",
                            purpose.doing, purpose.give_up
                        );
                        ctx.publish(owner, &Note::warning("NamespaceTerminating", note))
                            .await;
                        return Ok(None);
                    }
                    Err(err) => return Err(err.into()),
                }
                ctx.publish(
                    owner,
                    &Note::normal(started, format!("{} (Job {name})", purpose.doing)),
                )
                .await;
                Ok(Some(Action::requeue(Duration::from_secs(10))))
            }
            Err(problem) => {
                let note = format!(
                    "{} is not possible: {}; {}",
                    purpose.doing, problem.message, purpose.give_up
                );
                ctx.publish(owner, &Note::warning(problem.reason, note))
                    .await;
                Ok(Some(Action::requeue(Duration::from_secs(60))))
            }
        },
        Some(JobState::Succeeded { .. }) => {
            delete_if_exists(&jobs, name).await?;
            ctx.publish(owner, &Note::normal(succeeded, purpose.done.clone()))
                .await;
            Ok(None)
        }
        Some(JobState::Failed {
            reason, message, ..
        }) => {
            // Keep the finalizer, so the work is not forgotten; a fresh Job tries again
            // once the cause may have passed.
            let note = format!(
                "{} failed ({reason}): {message}; retrying. {}",
                purpose.doing, purpose.give_up
            );
            ctx.publish(owner, &Note::warning(failed, note)).await;
            delete_if_exists(&jobs, name).await?;
            Ok(Some(Action::requeue(Duration::from_secs(60))))
        }
        Some(JobState::Active {
            stuck: Some((reason, message)),
            ..
        }) => {
            let note = format!("the Job {name} ({}) cannot start: {message}", purpose.doing);
            ctx.publish(owner, &Note::warning(&reason, note)).await;
            Ok(Some(Action::requeue(Duration::from_secs(30))))
        }
        Some(JobState::Active { .. }) => Ok(Some(Action::requeue(Duration::from_secs(10)))),
    }
}

/// Whether `namespace` is being deleted. When that cannot be read, no: finalizers then
/// keep waiting, which is the safe side.
pub async fn namespace_terminating(ctx: &Context, namespace: &str) -> Result<bool, Error> {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(found) => Ok(found.as_ref().is_some_and(is_terminating)),
        Err(err) => {
            tracing::debug!(namespace, error = %err, "cannot read the namespace");
            Ok(false)
        }
    }
}

/// Whether a namespace is being deleted.
pub fn is_terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_being_deleted_is_terminating() {
        let active: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop"}, "status": {"phase": "Active"}
        }))
        .expect("namespace");
        let terminating: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "deletionTimestamp": "2026-11-21T10:00:00Z"},
            "status": {"phase": "Terminating"}
        }))
        .expect("namespace");
        assert!(!is_terminating(&active));
        assert!(is_terminating(&terminating));
    }
}
