//! Ending WAL archiving without leaving the replication slot behind: a slot nobody
//! advances keeps the server's WAL until its disk is full. While a schedule archives it
//! holds a finalizer and records, in an annotation, which slot on which server its
//! archiver uses; when archiving is turned off, the slot renamed, the target changed, or
//! the schedule deleted, the archiver is stopped, its pod waited for, and a Job drops the
//! slot on the server it was made on. Only then does the finalizer go.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::controller::Action,
};
use serde::{Deserialize, Serialize};

use super::build;
use crate::{
    api::{BackupSchedule, DatabaseTarget},
    controllers::{
        Context, Error, Note,
        job_state::JobState,
        jobs::observe_job,
        one_shot::{self, Purpose},
        references,
    },
    k8s::{
        LABEL_COMPONENT, LABEL_INSTANCE, agent_pod, delete_if_exists, delete_in_foreground, get_opt,
    },
};

/// Held while the schedule's replication slot exists.
pub const SLOT_FINALIZER: &str = "pgbackup.io/wal-slot";
/// Which slot on which server, recorded with the finalizer (JSON).
pub const ANNOTATION_SLOT: &str = "pgbackup.io/wal-slot";

/// A replication slot and the server it lives on, as the schedule's spec named them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldSlot {
    /// The slot's name.
    pub slot: String,
    /// The StatefulSet of the server.
    pub stateful_set: String,
    /// `target.pod`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `target.host`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `target.port`.
    pub port: i32,
}

impl HeldSlot {
    /// The slot the spec wants now; `None` without archiving.
    pub fn wanted(schedule: &BackupSchedule) -> Option<Self> {
        let target = &schedule.spec.template.target;
        build::archiving(schedule).then(|| Self {
            slot: build::slot_name(schedule),
            stateful_set: target.stateful_set.clone(),
            pod: target.pod.clone(),
            host: target.host.clone(),
            port: target.port,
        })
    }

    /// The schedule's target pointed at this slot's server (credentials as the spec says).
    fn target(&self, schedule: &BackupSchedule) -> DatabaseTarget {
        DatabaseTarget {
            stateful_set: self.stateful_set.clone(),
            pod: self.pod.clone(),
            host: self.host.clone(),
            port: self.port,
            ..schedule.spec.template.target.clone()
        }
    }
}

/// The slot this schedule holds, if any. A finalizer whose record was lost (the annotation
/// removed or edited by hand) means the slot the spec names on the spec's server.
pub fn held_slot(schedule: &BackupSchedule) -> Option<HeldSlot> {
    if !schedule.finalizers().iter().any(|f| f == SLOT_FINALIZER) {
        return None;
    }
    let recorded = schedule
        .annotations()
        .get(ANNOTATION_SLOT)
        .and_then(|text| serde_json::from_str(text).ok());
    recorded.or_else(|| {
        let target = &schedule.spec.template.target;
        Some(HeldSlot {
            slot: build::slot_name(schedule),
            stateful_set: target.stateful_set.clone(),
            pod: target.pod.clone(),
            host: target.host.clone(),
            port: target.port,
        })
    })
}

/// Records `slot` and the finalizer before the archiver is created.
pub async fn hold(
    api: &Api<BackupSchedule>,
    schedule: &BackupSchedule,
    slot: &HeldSlot,
) -> Result<(), Error> {
    if held_slot(schedule).as_ref() == Some(slot) {
        return Ok(());
    }
    let mut finalizers = schedule.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == SLOT_FINALIZER) {
        finalizers.push(SLOT_FINALIZER.into());
    }
    let record = serde_json::to_string(slot).unwrap_or_default();
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": schedule.resource_version(),
        "finalizers": finalizers,
        "annotations": {ANNOTATION_SLOT: record},
    }});
    api.patch(
        &schedule.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Kube {
        what: format!("hold replication slot {}", slot.slot),
        source,
    })
}

/// Whether a Job dropping a slot of this schedule still runs. A finished one (archiving
/// was turned back on before its hand-over completed) is removed: the archiver creates
/// the slot again if it went.
pub async fn dropping(
    ctx: &Context,
    schedule: &BackupSchedule,
    namespace: &str,
) -> Result<bool, Error> {
    let name = build::drop_slot_job_name(schedule);
    match observe_job(ctx, namespace, &name).await? {
        None => Ok(false),
        Some(JobState::Active { .. }) => Ok(true),
        Some(_) => {
            let jobs: Api<k8s_openapi::api::batch::v1::Job> =
                Api::namespaced(ctx.client.clone(), namespace);
            delete_if_exists(&jobs, &name).await?;
            Ok(false)
        }
    }
}

/// Lets the schedule go once its slot is dropped.
pub async fn let_go(api: &Api<BackupSchedule>, schedule: &BackupSchedule) -> Result<(), Error> {
    crate::k8s::finalizer::remove(api, schedule, SLOT_FINALIZER).await?;
    Ok(())
}

/// Stops the archiver and drops the slot. `None` when the slot is gone (or went with its
/// server); otherwise when to look again.
pub async fn end_archiving(
    ctx: &Context,
    schedule: &BackupSchedule,
    namespace: &str,
    held: &HeldSlot,
) -> Result<Option<Action>, Error> {
    let slot = &held.slot;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    // In the foreground: the Deployment stays readable until its ReplicaSet and pods are
    // gone, so none can start after the pods were counted.
    delete_in_foreground(&deployments, &build::archiver_name(schedule)).await?;
    if get_opt(&deployments, &build::archiver_name(schedule))
        .await?
        .is_some()
    {
        return Ok(Some(Action::requeue(Duration::from_secs(5))));
    }
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
    let target = held.target(schedule);
    let found = references::fetch(&ctx.client, namespace, &target, None).await?;
    if found.stateful_set.is_none() {
        // The server is gone (its namespace being deleted, say), and its slot with it.
        let note = format!(
            "StatefulSet {} is gone, and replication slot {slot} with its server; if its data volume is used again, drop the slot there (SELECT pg_drop_replication_slot('{slot}'))",
            held.stateful_set
        );
        ctx.publish(schedule, &Note::warning("SlotLeftWithServer", note))
            .await;
        return Ok(None);
    }
    let purpose = Purpose {
        doing: format!("dropping replication slot {slot}"),
        reasons: ["DroppingSlot", "SlotDropped", "DropSlotFailed"],
        give_up: format!(
            "To give up, drop it by hand (SELECT pg_drop_replication_slot('{slot}')) and remove the finalizer {SLOT_FINALIZER}"
        ),
        done: format!("replication slot {slot} dropped"),
        left: format!(
            "replication slot {slot} stays on the server: drop it there (SELECT pg_drop_replication_slot('{slot}'))"
        ),
    };
    let job = async || {
        Ok(
            references::check(namespace, &target, None, &found).map(|host| {
                let major = found
                    .stateful_set
                    .as_ref()
                    .and_then(agent_pod::postgres_major)
                    .unwrap_or(ctx.settings.agent.default_major);
                build::drop_slot_job(schedule, &target, &ctx.settings, slot, &host, major)
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
