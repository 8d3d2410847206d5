//! The BackupSchedule reconciler: observe (references, CronJob, archiver, the schedule's
//! backup objects, the other schedules; in `observe`) → plan (pure, [`plan`]) → apply the
//! owned objects (in `apply`) and retention → write the status.

mod apply;
mod backup_objects;
pub mod backups;
pub mod build;
pub mod checks;
mod conditions;
mod copies;
pub mod cron;
mod observe;
pub mod plan;
pub mod retention;
pub mod slot;
pub mod status;
mod verification;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::{Context, Error, Note, RESYNC, reset_backoff};
use crate::{
    api::{BackupSchedule, BackupScheduleStatus, same_status},
    k8s::{apply_status, delete_if_exists, get_opt},
};
use apply::apply_owned;
use observe::observe;
use plan::Owned;

/// Reasons of the `WALArchiving` condition's Warnings.
const WAL_ARCHIVING_REASONS: [&str; 3] = ["ArchiverUnreachable", "ArchiverNotReady", "Lagging"];

/// How often a schedule with WAL archiving is looked at again, to refresh its lag.
const ARCHIVING_RESYNC: Duration = Duration::from_secs(60);

/// Reconciles one BackupSchedule.
pub async fn reconcile(cached: Arc<BackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("BackupSchedule");
    let namespace = cached.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read afresh: the watch's copy may predate our own last finalizer change, and acting
    // on a slot already let go could drop it under the archiver that followed.
    let Some(schedule) = get_opt(&api, &cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let schedule = Arc::new(schedule);
    let held = slot::held_slot(&schedule);
    if schedule.metadata.deletion_timestamp.is_some() {
        // Owned objects go with it by garbage collection; backup objects stay (they are
        // not owned, so deleting a schedule never deletes backups). The slot must not stay.
        ctx.metrics.forget_wal_lag(&namespace, &schedule.name_any());
        ctx.metrics
            .recovery_window(&namespace, &schedule.name_any(), None);
        if let Some(held) = held {
            if let Some(wait) = slot::end_archiving(&ctx, &schedule, &namespace, &held).await? {
                return Ok(wait);
            }
            slot::let_go(&api, &schedule).await?;
        }
        return Ok(Action::await_change());
    }
    let observed = observe(&schedule, &ctx, &namespace).await?;
    let plan = plan::plan(&schedule, &observed, &ctx.settings, Timestamp::now());
    let mut status = plan.status.clone();
    let mut events = plan.events.clone();
    let mut owned = plan.owned.clone();
    let wanted = slot::HeldSlot::wanted(&schedule);
    // A slot no longer wanted (archiving off, renamed, another server) ends before any new
    // archiver starts.
    let mut after = None;
    if let Some(old_slot) = held.as_ref().filter(|h| Some(*h) != wanted.as_ref()) {
        after = Some(
            match slot::end_archiving(&ctx, &schedule, &namespace, old_slot).await? {
                Some(wait) => wait,
                None => {
                    slot::let_go(&api, &schedule).await?;
                    Action::requeue(Duration::from_secs(1))
                }
            },
        );
        if let Some(owned) = owned.as_mut() {
            owned.archiver = None;
        }
        // What the plan said of the archiver being stopped is beside the point now.
        events.retain(|e| !WAL_ARCHIVING_REASONS.contains(&e.reason.as_str()));
        crate::api::set_condition(
            &mut status.conditions,
            crate::api::CONDITION_WAL_ARCHIVING,
            crate::api::STATUS_FALSE,
            "EndingArchiving",
            &format!(
                "archiving stopped; dropping replication slot {}",
                old_slot.slot
            ),
            schedule.metadata.generation,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
    } else if let (
        Some(slot_name),
        Some(Owned {
            archiver: Some(_), ..
        }),
    ) = (&wanted, &owned)
    {
        if slot::dropping(&ctx, &schedule, &namespace).await? {
            // A slot is still being dropped (a Job from an earlier hand-over): no archiver
            // until it is done.
            if let Some(owned) = owned.as_mut() {
                owned.archiver = None;
            }
            after = Some(Action::requeue(Duration::from_secs(10)));
        } else {
            slot::hold(&api, &schedule, slot_name).await?;
        }
    }
    if let Some(owned) = &owned
        && let Err(err) = apply_owned(&ctx, &namespace, owned, &schedule).await
    {
        // The API's own refusal (a bad time zone, say) or a name taken by someone else's
        // object is the user's to fix: a condition, not a retry loop.
        let Some((reason, why)) = err.user_fixable() else {
            return Err(err.into());
        };
        events = refused(&schedule, &mut status, reason, &why);
    } else if owned.is_some() {
        if plan.remove_archiver && held.is_none() {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            delete_if_exists(&deployments, &build::archiver_name(&schedule)).await?;
        }
        backup_objects::expire(&ctx, &namespace, &plan.expire, &observed.backups).await?;
    }
    crate::controllers::step_plan::finish_conditions(
        &mut status.conditions,
        Some(&schedule.spec.template.target),
        schedule.spec.template.repository.as_ref(),
        true,
        schedule.metadata.generation,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    );
    let old = schedule.status.clone().unwrap_or_default();
    if !same_status(&old, &status) {
        apply_status(&api, &schedule.name_any(), &status).await?;
    }
    backup_objects::show_windows(&ctx, &namespace, &plan.backup_windows).await?;
    for note in &events {
        tracing::info!(namespace, name = %schedule.name_any(), reason = %note.reason, "{}", note.message);
        ctx.publish(&*schedule, note).await;
    }
    // The lag moves every second: a metric, not status (an old lag would read as current,
    // so without a report there is none).
    let report = observed.archiver.as_ref().and_then(|a| a.as_ref().ok());
    match report.filter(|_| status.wal_archiving.is_some()) {
        Some(report) => ctx
            .metrics
            .wal_lag(&namespace, &schedule.name_any(), report.lag_seconds),
        None => ctx.metrics.forget_wal_lag(&namespace, &schedule.name_any()),
    }
    let seconds = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_millisecond() as f64 / 1000.0)
    };
    let window = status.recovery_window.as_ref().and_then(|w| {
        Some((
            seconds(&w.first_recoverability_point)?,
            seconds(&w.last_recoverability_point)?,
        ))
    });
    ctx.metrics
        .recovery_window(&namespace, &schedule.name_any(), window);
    let reach = backup_objects::reach(&observed.backups, &plan.backup_windows);
    ctx.metrics
        .backup_reach(&namespace, &schedule.name_any(), &reach);
    reset_backoff(&*schedule, &ctx);
    if let Some(after) = after {
        return Ok(after);
    }
    Ok(Action::requeue(if build::archiving(&schedule) {
        ARCHIVING_RESYNC
    } else {
        RESYNC
    }))
}

/// The API refused the schedule's objects: `Failed` with its words, and a Warning the
/// first time.
fn refused(
    schedule: &BackupSchedule,
    status: &mut BackupScheduleStatus,
    reason: &str,
    why: &str,
) -> Vec<Note> {
    let message = format!("the schedule's objects cannot be made: {why}");
    let before = schedule.status.as_ref().and_then(|s| {
        crate::api::find_condition(&s.conditions, crate::api::CONDITION_READY)
            .map(|c| c.reason.clone())
    });
    status.phase = Some(crate::api::SchedulePhase::Failed);
    status.message = Some(message.clone());
    crate::api::set_condition(
        &mut status.conditions,
        crate::api::CONDITION_READY,
        crate::api::STATUS_FALSE,
        reason,
        &message,
        schedule.metadata.generation,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    );
    if before.as_deref() == Some(reason) {
        Vec::new()
    } else {
        vec![Note::warning(reason, message)]
    }
}
