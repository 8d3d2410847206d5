//! The PointInTimeRestore reconciler: observe (the StatefulSet, its pods and claims, the
//! source, other restores, the restore's Jobs, the clone, and — while verifying — the
//! restored server itself) → plan (pure, [`plan`]) → make the changes → write the status.
//! Deleting a restore that is under way rolls it back first (finalizer), so a StatefulSet
//! is never left scaled down or on half-restored data.

pub mod build;
mod claim_limits;
mod execute;
pub mod logical;
mod observe;
mod observe_source;
mod phases;
pub mod plan;
mod server;
mod snapshot_source;
mod volumes;

use std::sync::Arc;

use jiff::Timestamp;
use kube::{Api, ResourceExt, runtime::controller::Action};

pub use phases::{SETTLE_SECONDS, gitops_manager, parse_postgres_time};

use super::{Context, Error, reset_backoff};
use crate::{
    api::{PointInTimeRestore, RestoreMode, RestorePhase, same_status},
    k8s::{apply_status, finalizer},
};

/// The finalizer that holds a restore until the StatefulSet is safe.
use execute::execute;
use observe::observe;

/// The finalizer that holds a restore until the StatefulSet is safe.
pub const FINALIZER: &str = "pgbackup.io/restore";

/// Reconciles one PointInTimeRestore.
pub async fn reconcile(
    restore: Arc<PointInTimeRestore>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled("PointInTimeRestore");
    let namespace = restore.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PointInTimeRestore> = Api::namespaced(ctx.client.clone(), &namespace);
    let ours = restore.finalizers().iter().any(|f| f == FINALIZER);
    let action = if restore.metadata.deletion_timestamp.is_some() {
        if ours {
            match undo_before_deletion(&restore, &ctx, &namespace, &api).await? {
                Some(action) => action,
                None => {
                    finalizer::remove(&api, &*restore, FINALIZER).await?;
                    Action::await_change()
                }
            }
        } else {
            Action::await_change()
        }
    } else {
        finalizer::add(&api, &*restore, FINALIZER).await?;
        step(&restore, &ctx, &namespace, &api).await?
    };
    reset_backoff(&*restore, &ctx);
    Ok(action)
}

/// A restore deleted while it holds the StatefulSet is rolled back first.
async fn undo_before_deletion(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<Option<Action>, Error> {
    let status = restore.status.clone().unwrap_or_default();
    // A logical restore holds nothing: deleting it stops its Job (a partial restore runs
    // in one transaction, which then rolls back).
    let holding = restore.spec.mode == RestoreMode::InPlace
        && restore.spec.logical.is_none()
        && matches!(
            status.phase,
            Some(
                RestorePhase::ScalingDown
                    | RestorePhase::Restoring
                    | RestorePhase::ScalingUp
                    | RestorePhase::Verifying
                    | RestorePhase::RollingBack
            )
        );
    if !holding {
        return Ok(None);
    }
    let mut deleting = restore.clone();
    let mut next = status;
    if next.phase != Some(RestorePhase::RollingBack) {
        next.phase = Some(RestorePhase::RollingBack);
        next.failure_reason = Some("Deleted".into());
        next.message = Some("the restore was deleted while under way".into());
    }
    deleting.status = Some(next);
    let (_, phase) = step_to(&deleting, ctx, namespace, api).await?;
    let done = matches!(
        phase,
        Some(RestorePhase::RolledBack | RestorePhase::Completed | RestorePhase::Failed)
    );
    Ok((!done).then(|| Action::requeue(plan::POLL)))
}

async fn step(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<Action, Error> {
    Ok(step_to(restore, ctx, namespace, api).await?.0)
}

/// One reconcile step; the action and the phase it left the restore in.
async fn step_to(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    api: &Api<PointInTimeRestore>,
) -> Result<(Action, Option<RestorePhase>), Error> {
    let finished = matches!(
        restore.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack)
    );
    if finished {
        return Ok((
            Action::await_change(),
            restore.status.as_ref().and_then(|s| s.phase),
        ));
    }
    let mut observed = observe(restore, ctx, namespace).await?;
    let mut plan = plan::plan(restore, &observed, &ctx.settings.agent, Timestamp::now());
    for step in plan.steps.clone() {
        match execute(restore, ctx, namespace, &step).await {
            Ok(()) => {}
            // Refused for good (invalid, or forbidden by admission or quota): the restore
            // says so and rolls back rather than retrying for ever with nothing in status.
            Err(err) => {
                let Some(words) = refused_for_good(&err) else {
                    return Err(err);
                };
                observed.refused = Some(words);
                plan = plan::plan(restore, &observed, &ctx.settings.agent, Timestamp::now());
                for step in &plan.steps {
                    execute(restore, ctx, namespace, step).await?;
                }
                break;
            }
        }
    }
    let old = restore.status.clone().unwrap_or_default();
    if !same_status(&old, &plan.status) {
        apply_status(api, &restore.name_any(), &plan.status).await?;
    }
    if let Some(note) = &plan.event {
        tracing::info!(namespace, name = %restore.name_any(), reason = %note.reason, "{}", note.message);
        ctx.publish(restore, note).await;
    }
    Ok((
        plan.requeue
            .map_or_else(Action::await_change, Action::requeue),
        plan.status.phase,
    ))
}

/// What the API server said when it refused to make an object for a reason retrying does
/// not change: invalid (400, 422) or forbidden (403: admission, a quota).
fn refused_for_good(err: &Error) -> Option<String> {
    match err {
        Error::Kube {
            what,
            source: kube::Error::Api(status),
        } if matches!(status.code, 400 | 403 | 422) => {
            Some(format!("to {what}: {}", status.message))
        }
        _ => None,
    }
}

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}
