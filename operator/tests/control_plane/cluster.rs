//! The pieces the control-plane tests share: a chart-like PostgreSQL StatefulSet, objects
//! built from small changes, and waits that fail with the operator's and the node's logs.

use std::time::{Duration, Instant};

use kube::{Api, Client};
use pgbackup::api::{PointInTimeRestore, RestorePhase};

use crate::support;
use crate::support::controlplane::{
    apply::{self, Mode},
    operator::Operator,
};

/// A PointInTimeRestore with `changes` merged into a valid in-place restore.
pub(crate) fn restore(namespace: &str, changes: serde_json::Value) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PointInTimeRestore",
        "metadata": {"name": "oops", "namespace": namespace},
        "spec": {
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "source": {"backupSchedule": "nightly"},
            "recoveryTarget": {"time": "2026-11-20T12:00:00Z"},
            "mode": "inPlace", "confirm": true,
        },
    });
    merge(&mut doc, changes);
    doc
}

pub(crate) fn merge(doc: &mut serde_json::Value, changes: serde_json::Value) {
    match (doc, changes) {
        (serde_json::Value::Object(doc), serde_json::Value::Object(changes)) => {
            for (key, value) in changes {
                merge(doc.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (doc, changes) => *doc = changes,
    }
}

/// The message the API server refuses `doc` with.
pub(crate) async fn refusal(client: &Client, doc: &serde_json::Value) -> String {
    match apply::apply(client, doc, Mode::DryRun).await {
        Ok(_) => panic!("the API server admitted {doc:#}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("{other}"),
    }
}

/// Waits until `check` gives a value, or fails with the operator's log.
pub(crate) async fn eventually<T, F: Future<Output = Option<T>>>(
    operator: &Operator,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; operator log:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The restore's condition `type` as `(status, reason, message)`.
pub(crate) fn condition(
    restore: &PointInTimeRestore,
    type_: &str,
) -> Option<(String, String, String)> {
    restore
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until restore `name` completed, failed or rolled back; its Ready condition as
/// `(status, reason, message)`.
pub(crate) async fn finished_restore(
    client: &Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> (String, String, String) {
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), namespace);
    wait_for(
        300,
        &format!("restore {name} to finish"),
        context,
        || async {
            let restore = restores.get(name).await.ok()?;
            let phase = restore.status.as_ref()?.phase?;
            let finished = matches!(
                phase,
                RestorePhase::Completed | RestorePhase::RolledBack | RestorePhase::Failed
            );
            condition(&restore, "Ready").filter(|_| finished)
        },
    )
    .await
}

/// Waits up to `seconds` until `check` gives a value, or fails with what `context` says.
pub(crate) async fn wait_for<T, F: Future<Output = Option<T>>>(
    seconds: u64,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A PostgreSQL 16 StatefulSet `pg` as a chart installs it (headless Service, password
/// Secret, data on a claim template), and a claim `backups` for a volume repository.
pub(crate) fn database(namespace: &str) -> serde_json::Value {
    database_of(namespace, "postgres:16.4", &["-c", "wal_level=replica"])
}

/// [`database`] of `image`, the server started with `args`.
pub(crate) fn database_of(namespace: &str, image: &str, args: &[&str]) -> serde_json::Value {
    serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-auth", "namespace": namespace},
         "stringData": {"username": "postgres", "password": "change-me"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg-headless", "namespace": namespace},
         "spec": {"clusterIP": "None", "selector": {"app": "pg"}, "ports": [{"name": "postgresql", "port": 5432}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "pg", "namespace": namespace},
         "spec": {"serviceName": "pg-headless", "replicas": 1,
                  "selector": {"matchLabels": {"app": "pg"}},
                  "template": {"metadata": {"labels": {"app": "pg"}},
                               "spec": {"securityContext": {"fsGroup": 999},
                                        "containers": [{"name": "postgresql", "image": image,
                                            "args": args,
                                            "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                                                    {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg-auth", "key": "password"}}}],
                                            "ports": [{"name": "postgresql", "containerPort": 5432}],
                                            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 2},
                                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
                  "volumeClaimTemplates": [{"metadata": {"name": "data"},
                      "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "backups", "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    ])
}

/// Applies `objects` (a JSON array) in order.
pub(crate) async fn apply_all(client: &Client, objects: &serde_json::Value) {
    for doc in objects.as_array().expect("objects") {
        apply::apply(client, doc, Mode::Apply)
            .await
            .expect("object");
    }
}

/// What to print when a wait fails: the ends of the operator's and the node's logs.
pub(crate) fn logs(operator: &Operator) -> String {
    format!(
        "operator:\n{}\nnode:\n{}",
        operator.log_tail(),
        support::controlplane::tail(&support::node::node_dir().join("node.log"))
    )
}

/// The address of a Ready pod that is not being deleted.
pub(crate) async fn ready_pod_ip(
    client: &Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> String {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(180, &format!("pod {name} to be ready"), context, || async {
        let pod = pods.get_opt(name).await.ok()??;
        if pod.metadata.deletion_timestamp.is_some() {
            return None; // Ready until its process is stopped, then gone.
        }
        let status = pod.status?;
        let ready = status
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(status.pod_ip).flatten()
    })
    .await
}

/// The database of [`database`] in `namespace`, ready, with a table `orders` of 4321 rows;
/// a connection to it.
pub(crate) async fn orders_database(
    client: &Client,
    namespace: &str,
    context: impl Fn() -> String,
) -> tokio_postgres::Client {
    apply_all(client, &database(namespace)).await;
    let ip = ready_pod_ip(client, namespace, "pg-0", context).await;
    let db = connect(&ip).await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 4321) i;",
    )
    .await
    .expect("rows");
    db
}

/// A logical PostgresBackup `name` of `pg` whose credentials are `secret`'s keys.
pub(crate) fn backup_with(
    namespace: &str,
    name: &str,
    secret: &str,
    username_key: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg",
                            "credentialsSecret": {"name": secret, "usernameKey": username_key}},
                 "repository": {"volume": {"claimName": "backups"}}},
    })
}

/// The message of the API server's refusal, which must be a 403.
pub(crate) async fn forbidden(client: &Client, doc: &serde_json::Value, mode: Mode) -> String {
    match apply::apply(client, doc, mode).await {
        Ok(_) => panic!("admitted: {doc:#}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            status.message
        }
        Err(other) => panic!("{other}"),
    }
}

/// Connects to the database of pod `pg-0` as the superuser.
pub(crate) async fn connect(ip: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(
        &format!("host={ip} port=5432 user=postgres password=change-me dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the pod's database");
    tokio::spawn(connection);
    db
}

pub(crate) async fn count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0)
}

/// The directory of the PersistentVolume bound to `claim`.
pub(crate) async fn claim_dir(client: &Client, namespace: &str, claim: &str) -> std::path::PathBuf {
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), namespace);
    let volume = claims
        .get(claim)
        .await
        .expect("claim")
        .spec
        .and_then(|s| s.volume_name)
        .expect("bound");
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    let path = volumes
        .get(&volume)
        .await
        .expect("volume")
        .spec
        .and_then(|s| s.host_path)
        .expect("a local volume")
        .path;
    path.into()
}

/// The uid of pod `name`: a new one means the pod was deleted and made again.
pub(crate) async fn pod_uid(client: &Client, namespace: &str, name: &str) -> String {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await.expect("pod");
    pod.metadata.uid.expect("uid")
}

/// Waits until `name` is gone from `api`.
pub(crate) async fn gone<K>(api: &Api<K>, name: &str, seconds: u64, context: impl Fn() -> String)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(seconds, &format!("{name} to go"), context, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Deletes `name` from `api`.
pub(crate) async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
}

/// A ResourceQuota in `namespace` that allows `limit` of `resource` (`pods`,
/// `count/statefulsets.apps`), applied and counted by the quota controller, so that what
/// goes beyond it is refused from now on.
pub(crate) async fn quota(
    client: &Client,
    namespace: &str,
    resource: &str,
    limit: u32,
    context: impl Fn() -> String,
) {
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "limit", "namespace": namespace},
        "spec": {"hard": {resource: limit.to_string()}},
    });
    apply::apply(client, &doc, Mode::Apply)
        .await
        .expect("quota");
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), namespace);
    wait_for(
        60,
        &format!("the quota to count {resource}"),
        context,
        || async {
            let used = quotas.get("limit").await.ok()?.status?.used?;
            used.contains_key(resource).then_some(())
        },
    )
    .await;
}
