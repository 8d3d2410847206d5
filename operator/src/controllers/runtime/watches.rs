//! What each controller watches: its kind, the objects it owns, and for schedules the
//! backups and Jobs that change their status.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::CronJob};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef},
        watcher::{self, watcher},
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{BackupSchedule, PostgresBackup, VolumeSnapshotBackup},
    controllers::{Context, backup_schedule, error_policy, volume_snapshot_backup},
    k8s::{ANNOTATION_SCHEDULE, LABEL_MANAGED_BY, LABEL_SCHEDULE},
};

fn api<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The controller of a kind whose work runs in the agent Jobs it owns: a Job changing
/// wakes its owner.
pub(super) async fn run_with_jobs<K, R, F>(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
    reconcile: R,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: std::future::Future<
            Output = Result<kube::runtime::controller::Action, crate::controllers::Error>,
        > + Send
        + 'static,
{
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=pgbackup"));
    Controller::new(api::<K>(&client, &scope), watcher::Config::default())
        .owns(
            api::<k8s_openapi::api::batch::v1::Job>(&client, &scope),
            ours,
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, |o, e, c| error_policy(&*o, e, &c), ctx)
        .for_each(|_| async {})
        .await;
}

/// VolumeSnapshots are not watched (their API may not be installed): a running backup
/// looks at them every few seconds.
pub(super) async fn run_volume_snapshot_backups(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    Controller::new(
        api::<VolumeSnapshotBackup>(&client, &scope),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(
        volume_snapshot_backup::reconcile,
        |o, e, c| error_policy(&*o, e, &c),
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

pub(super) async fn run_schedules(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=pgbackup"));
    // A schedule's own status writes (the archiver's progress, the window) must not make
    // it reconcile again: only what a user or a controller changed does.
    let (reader, writer) = reflector::store();
    let schedules = watcher(
        api::<BackupSchedule>(&client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(beyond_status, Default::default());
    Controller::for_stream(schedules, reader)
        .owns(api::<CronJob>(&client, &scope), ours.clone())
        .owns(api::<Deployment>(&client, &scope), ours)
        // A backup of the schedule changing phase changes the schedule's status.
        .watches(
            api::<PostgresBackup>(&client, &scope),
            watcher::Config::default().labels(LABEL_SCHEDULE),
            |backup: PostgresBackup| schedule_of(&backup),
        )
        .watches(
            api::<VolumeSnapshotBackup>(&client, &scope),
            watcher::Config::default().labels(LABEL_SCHEDULE),
            |backup: VolumeSnapshotBackup| schedule_of(&backup),
        )
        // A Job of one of its CronJobs ending (a restore test, a copy) is its status too,
        // also when someone ran it by hand (`kubectl create job --from=cronjob/…`).
        .watches(
            api::<k8s_openapi::api::batch::v1::Job>(&client, &scope),
            watcher::Config::default()
                .labels(&format!("{LABEL_MANAGED_BY}=pgbackup,{LABEL_SCHEDULE}")),
            |job: k8s_openapi::api::batch::v1::Job| schedule_of(&job),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            backup_schedule::reconcile,
            |o, e, c| error_policy(&*o, e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// A hash of what an object holds beyond its status and its version: spec (through the
/// generation), deletion, labels, annotations and finalizers.
fn beyond_status<K: kube::Resource>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    Some(hasher.finish())
}

/// The schedule that made a backup object.
fn schedule_of<K: ResourceExt>(backup: &K) -> Option<ObjectRef<BackupSchedule>> {
    let name = backup
        .annotations()
        .get(ANNOTATION_SCHEDULE)
        .or_else(|| backup.labels().get(LABEL_SCHEDULE))?;
    let reference = ObjectRef::<BackupSchedule>::new(name);
    Some(match backup.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    })
}
