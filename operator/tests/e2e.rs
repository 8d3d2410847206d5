//! End to end on a real cluster, as users run pgbackup: `e2e/kind.sh` builds one (kind,
//! CSI hostpath driver, snapshot-controller, an S3 server, the walk-through's PostgreSQL,
//! the chart) and runs these tests with `PGBACKUP_E2E=1 … -- --ignored`. Every wait is on
//! a condition, watched through the API; none sleeps.

use std::{future::Future, time::Duration};

use serde::Deserialize;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    batch::v1::{CronJob, Job, JobSpec},
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind, ListParams, LogParams, Patch, PatchParams, PostParams},
    discovery,
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use pgbackup::api::{
    BackupPhase, BackupSchedule, CONDITION_FAILED, CONDITION_READY, CONDITION_WAL_ARCHIVING,
    PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup, is_condition_true,
};

const NAMESPACE: &str = "shop";

/// A name unique to this run, so that the suite runs again on the same cluster.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", jiff::Timestamp::now().as_second())
}
const MANAGER: &str = "pgbackup-e2e";

async fn client() -> Client {
    assert!(
        std::env::var_os("PGBACKUP_E2E").is_some(),
        "the e2e tests need the cluster of e2e/kind.sh (PGBACKUP_E2E=1)"
    );
    Client::try_default().await.expect("kubeconfig")
}

/// Waits for `future` at most `minutes`.
async fn within<T>(minutes: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(minutes * 60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {minutes} min"))
}

/// Server-side applies every document of a YAML file, as `kubectl apply --server-side`.
async fn apply_yaml(client: &Client, yaml: &str) {
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(document).expect("YAML");
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value).expect("object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("gvk");
        let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await.expect("kind");
        let api: Api<DynamicObject> = match capabilities.scope {
            discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
            discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.namespace().as_deref().unwrap_or(NAMESPACE),
                &resource,
            ),
        };
        api.patch(
            &object.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {}: {e}", gvk.kind, object.name_any()));
    }
}

fn walkthrough(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../manifests/walkthrough/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("walk-through file")
}

/// Runs SQL on the walk-through's database in a Job with `psql`; its output.
async fn sql(client: &Client, name: &str, statement: &str) -> String {
    sql_on(client, name, "orders-db-0.orders-db-headless", statement).await
}

/// Runs SQL on the server at `host` in a Job with `psql`; its output.
async fn sql_on(client: &Client, name: &str, host: &str, statement: &str) -> String {
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "psql", "image": "postgres:16.4",
                "command": ["psql", "-h", host, "-U", "postgres",
                            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", statement],
                "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": "orders-db-auth", "key": "password"}}}]}]}}}
    }))
    .expect("job");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create psql Job");
    let done = await_condition(jobs.clone(), name, |job: Option<&Job>| {
        job.and_then(|j| j.status.as_ref())
            .is_some_and(|s| s.succeeded.unwrap_or(0) > 0 || s.failed.unwrap_or(0) > 0)
    });
    let job = within(3, "psql Job", done)
        .await
        .expect("watch")
        .expect("job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .next()
        .expect("the Job's pod");
    let log = pods
        .logs(&pod.name_any(), &LogParams::default())
        .await
        .expect("logs");
    assert_eq!(
        job.status.and_then(|s| s.succeeded),
        Some(1),
        "psql failed: {log}"
    );
    log.trim().to_string()
}

async fn ready<K>(api: &Api<K>, name: &str, minutes: u64) -> K
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K: HasStatusConditions,
{
    let wait = await_condition(api.clone(), name, |o: Option<&K>| {
        o.is_some_and(|o| {
            is_condition_true(o.conditions(), CONDITION_READY)
                || is_condition_true(o.conditions(), CONDITION_FAILED)
        })
    });
    let object = within(minutes, &format!("{name} Ready"), wait)
        .await
        .expect("watch")
        .expect("object");
    assert!(
        !is_condition_true(object.conditions(), CONDITION_FAILED),
        "{name} failed: {:?}",
        object.conditions()
    );
    object
}

/// The conditions of the pgbackup kinds.
trait HasStatusConditions {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition];
}

macro_rules! conditions_of {
    ($($kind:ty),*) => {$(
        impl HasStatusConditions for $kind {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                self.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
            }
        }
    )*};
}
conditions_of!(
    PostgresBackup,
    BackupSchedule,
    VolumeSnapshotBackup,
    PointInTimeRestore
);

fn backup_object(name: &str, method: &str) -> String {
    format!(
        r#"
apiVersion: pgbackup.io/v1alpha1
kind: PostgresBackup
metadata:
  name: {name}
  namespace: shop
spec:
  method: {method}
  target:
    statefulSet: orders-db
    credentialsSecret: {{name: orders-db-auth}}
    sslMode: disable
  repository:
    serverName: e2e-orders
    s3:
      bucket: pgbackup
      endpoint: http://s3.pgbackup-e2e.svc:9000
      forcePathStyle: true
      region: us-east-1
      credentialsSecret: {{name: backup-s3}}
"#
    )
}

#[tokio::test]
#[ignore = "needs the cluster of e2e/kind.sh"]
async fn manual_logical_and_physical_backups_complete() {
    let client = client().await;
    sql(
        &client,
        &unique("e2e-orders-table"),
        "CREATE TABLE IF NOT EXISTS orders (id serial primary key, item text); INSERT INTO orders (item) VALUES ('tea')",
    )
    .await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    for method in ["logical", "physical"] {
        let name = unique(&format!("e2e-{method}"));
        apply_yaml(&client, &backup_object(&name, method)).await;
        let done = ready(&backups, &name, 10).await;
        let status = done.status.expect("status");
        assert_eq!(status.phase, Some(BackupPhase::Completed));
        assert!(status.backup_id.is_some() && status.stored_size.unwrap_or(0) > 0);
    }
}

#[tokio::test]
#[ignore = "needs the cluster of e2e/kind.sh"]
async fn a_schedule_fires_and_wal_archiving_keeps_up() {
    let client = client().await;
    apply_yaml(&client, &walkthrough("03-schedule.yaml")).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    ready(&schedules, "orders-nightly", 5).await;

    // `kubectl create job --from=cronjob/orders-nightly-trigger`.
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), NAMESPACE);
    let cron_job = cron_jobs
        .get("orders-nightly-trigger")
        .await
        .expect("CronJob");
    let template = cron_job.spec.expect("spec").job_template;
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some(unique("orders-nightly-now")),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            ..template.spec.expect("job spec")
        }),
        status: None,
    };
    Api::<Job>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &job)
        .await
        .expect("trigger Job");
    let fired = jiff::Timestamp::now().as_second() - 1;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let mut stream = watcher(
        backups,
        watcher::Config::default().labels("pgbackup.io/schedule=orders-nightly"),
    )
    .applied_objects()
    .try_filter(move |b| {
        // This run's backup, not one left from an earlier run.
        let new = b
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0.as_second() >= fired);
        let done = b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed);
        std::future::ready(new && done)
    })
    .boxed();
    let completed = stream.try_next();
    within(10, "the scheduled backup", completed)
        .await
        .expect("watch")
        .expect("a scheduled backup completed");

    // New WAL reaches the repository: archiving streams with less than a minute of lag.
    let switched = sql(
        &client,
        &unique("e2e-wal-traffic"),
        "CREATE TABLE IF NOT EXISTS traffic AS SELECT generate_series(1, 100000) AS n; SELECT pg_walfile_name(pg_switch_wal())",
    )
    .await;
    let switched = switched
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(switched.len(), 24, "a WAL file name: {switched:?}");
    let archiving = await_condition(
        schedules,
        "orders-nightly",
        move |s: Option<&BackupSchedule>| {
            s.is_some_and(|s| {
                let wal = s.status.as_ref().and_then(|st| st.wal_archiving.as_ref());
                is_condition_true(s.conditions(), CONDITION_WAL_ARCHIVING)
                // The segment just switched (names sort in WAL order) is stored, and the
                // condition is Streaming (not Lagging).
                && wal
                    .and_then(|w| w.last_archived_wal.as_deref())
                    .is_some_and(|last| last[..24] >= *switched.as_str())
            })
        },
    );
    within(5, "WAL archiving to store the switched segment", archiving)
        .await
        .expect("watch");
}

#[tokio::test]
#[ignore = "needs the cluster of e2e/kind.sh"]
async fn an_online_volume_snapshot_becomes_ready_with_its_label() {
    let client = client().await;
    apply_yaml(&client, &walkthrough("04-snapshot.yaml")).await;
    let snapshots: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let done = ready(&snapshots, "orders-before-migration", 10).await;
    let status = done.status.expect("status");
    assert!(!status.snapshots.is_empty());
    assert!(status.snapshots.iter().all(|s| s.ready_to_use));
    let label = status.backup_label.expect("backup label");
    assert!(label.contains("START WAL LOCATION"), "{label}");
    assert!(status.backup_id.is_some(), "recorded in the repository");
}

fn restore_object(name: &str, mode: &str, time: &str) -> String {
    format!(
        r#"
apiVersion: pgbackup.io/v1alpha1
kind: PointInTimeRestore
metadata:
  name: {name}
  namespace: shop
spec:
  target:
    statefulSet: orders-db
    credentialsSecret: {{name: orders-db-auth}}
    sslMode: disable
    dataSubPath: pgdata
  source: {{backupSchedule: orders-nightly}}
  recoveryTarget: {{time: "{time}"}}
  mode: {mode}
  confirm: {}
"#,
        mode == "inPlace"
    )
}

#[tokio::test]
#[ignore = "needs the cluster of e2e/kind.sh"]
async fn a_clone_and_an_in_place_restore_bring_back_the_rows_of_a_moment() {
    let client = client().await;
    apply_yaml(&client, &walkthrough("03-schedule.yaml")).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    ready(&schedules, "orders-nightly", 5).await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let base = unique("e2e-base");
    apply_yaml(
        &client,
        &backup_object(&base, "physical")
            .replace("serverName: e2e-orders", "serverName: shop-orders-db"),
    )
    .await;
    ready(&backups, &base, 10).await;
    let moment = sql(
        &client,
        &unique("e2e-drinks"),
        "CREATE TABLE IF NOT EXISTS drinks (item text); TRUNCATE drinks; INSERT INTO drinks VALUES ('tea'), ('coffee'); SELECT pg_sleep(1); SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    )
    .await
    .lines()
    .last()
    .unwrap_or_default()
    .to_string();
    sql(
        &client,
        &unique("e2e-cake"),
        "SELECT pg_sleep(1); INSERT INTO drinks VALUES ('cake'); SELECT pg_switch_wal()",
    )
    .await;
    // The archive must cover the moment before a restore can reach it.
    let covered = await_condition(schedules, "orders-nightly", {
        let moment = moment.clone();
        move |s: Option<&BackupSchedule>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|st| st.recovery_window.as_ref())
                .and_then(|w| w.last_recoverability_point.as_ref())
                .is_some_and(|t| t.0.to_string() > moment)
        }
    });
    within(5, "the archive covering the moment", covered)
        .await
        .expect("watch");

    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), NAMESPACE);
    let drill = unique("drill");
    apply_yaml(&client, &restore_object(&drill, "clone", &moment)).await;
    let done = ready(&restores, &drill, 15).await;
    let clone = done
        .status
        .and_then(|s| s.restored_stateful_set)
        .expect("clone");
    let rows = sql_on(
        &client,
        &unique("e2e-clone-rows"),
        &format!("{clone}-0.{clone}"),
        "SELECT string_agg(item, ',' ORDER BY item) FROM drinks",
    )
    .await;
    assert_eq!(rows, "coffee,tea", "the clone has the rows of the moment");
    assert_eq!(
        sql(
            &client,
            &unique("e2e-source-rows"),
            "SELECT count(*) FROM drinks"
        )
        .await,
        "3",
        "the source is untouched"
    );

    let in_place = unique("back");
    apply_yaml(&client, &restore_object(&in_place, "inPlace", &moment)).await;
    ready(&restores, &in_place, 20).await;
    let rows = sql(
        &client,
        &unique("e2e-restored-rows"),
        "SELECT string_agg(item, ',' ORDER BY item) FROM drinks",
    )
    .await;
    assert_eq!(
        rows, "coffee,tea",
        "in place: the rows of the moment, not the cake"
    );
}
