//! Ending WAL archiving without leaving the replication slot behind: a slot nobody
//! advances keeps the server's WAL until its disk is full. While a schedule archives it
//! holds a finalizer and names its slot in an annotation; when archiving is turned off,
//! the slot renamed, or the schedule deleted, the archiver is stopped, its pod waited
//! for, and a Job drops the slot. Only then does the finalizer go.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::controller::Action,
};

use super::build;
use crate::{
    api::BackupSchedule,
    controllers::{
        Context, Error,
        one_shot::{self, Purpose},
        references,
    },
    k8s::{LABEL_COMPONENT, LABEL_INSTANCE, agent_pod, delete_if_exists},
};

/// Held while the schedule's replication slot exists.
pub const SLOT_FINALIZER: &str = "pgbackup.io/wal-slot";
/// The slot the schedule's archiver uses, recorded with the finalizer.
pub const ANNOTATION_SLOT: &str = "pgbackup.io/wal-slot";

/// The slot this schedule holds, if any.
pub fn held_slot(schedule: &BackupSchedule) -> Option<String> {
    schedule
        .finalizers()
        .iter()
        .any(|f| f == SLOT_FINALIZER)
        .then(|| schedule.annotations().get(ANNOTATION_SLOT).cloned())
        .flatten()
}

/// Records `slot` and the finalizer before the archiver is created.
pub async fn hold(
    api: &Api<BackupSchedule>,
    schedule: &BackupSchedule,
    slot: &str,
) -> Result<(), Error> {
    if held_slot(schedule).as_deref() == Some(slot) {
        return Ok(());
    }
    let mut finalizers = schedule.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == SLOT_FINALIZER) {
        finalizers.push(SLOT_FINALIZER.into());
    }
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": schedule.resource_version(),
        "finalizers": finalizers,
        "annotations": {ANNOTATION_SLOT: slot},
    }});
    api.patch(
        &schedule.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Kube {
        what: format!("hold replication slot {slot}"),
        source,
    })
}

/// Lets the schedule go once its slot is dropped.
pub async fn let_go(api: &Api<BackupSchedule>, schedule: &BackupSchedule) -> Result<(), Error> {
    crate::k8s::finalizer::remove(api, schedule, SLOT_FINALIZER).await?;
    Ok(())
}

/// Stops the archiver and drops `slot`. `None` when the slot is gone; otherwise when to
/// look again.
pub async fn end_archiving(
    ctx: &Context,
    schedule: &BackupSchedule,
    namespace: &str,
    slot: &str,
) -> Result<Option<Action>, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    delete_if_exists(&deployments, &build::archiver_name(schedule)).await?;
    // The archiver advances the slot: drop it only when no archiver pod is left.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let instance = crate::k8s::labels("", &schedule.name_any())[LABEL_INSTANCE].clone();
    let running = pods
        .list(&ListParams::default().labels(&format!(
            "{LABEL_COMPONENT}=wal-archiver,{LABEL_INSTANCE}={instance}"
        )))
        .await
        .map_err(|source| Error::Kube {
            what: "list the archiver's pods".into(),
            source,
        })?;
    if !running.items.is_empty() {
        return Ok(Some(Action::requeue(Duration::from_secs(5))));
    }
    let purpose = Purpose {
        doing: format!("dropping replication slot {slot}"),
        reasons: ["DroppingSlot", "SlotDropped", "DropSlotFailed"],
        give_up: format!(
            "To give up, drop it by hand (SELECT pg_drop_replication_slot('{slot}')) and remove the finalizer {SLOT_FINALIZER}"
        ),
        done: format!("replication slot {slot} dropped"),
    };
    let job = async || {
        let template = &schedule.spec.template;
        let found = references::fetch(&ctx.client, namespace, &template.target, None).await?;
        Ok(
            references::check(namespace, &template.target, None, &found).map(|host| {
                let major = found
                    .stateful_set
                    .as_ref()
                    .and_then(agent_pod::postgres_major)
                    .unwrap_or(ctx.settings.agent.default_major);
                build::drop_slot_job(schedule, &ctx.settings, slot, &host, major)
            }),
        )
    };
    one_shot::run_to_success(
        ctx,
        schedule,
        &build::drop_slot_job_name(schedule),
        &purpose,
        job,
    )
    .await
}
