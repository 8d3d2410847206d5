//! An in-memory Kubernetes API for the reconcilers (kube-fake-client), and what a real
//! cluster would do in between reconciles: run a Job's container (here, as a local
//! process with the Job's own arguments and environment) and record how it ended.

use std::{collections::BTreeMap, path::Path, process::Command};

use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::Job,
        core::v1::{EnvVar, Pod, Secret},
    },
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use pgbackup::{
    api::{BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    k8s::generated::volume_snapshot::VolumeSnapshot,
};

/// The namespace the tests work in.
pub const NAMESPACE: &str = "shop";

/// An in-memory API holding `objects` (JSON, as `kubectl apply` would send them).
pub async fn fake_api(objects: Vec<serde_json::Value>) -> Client {
    builder(objects).build().await.expect("in-memory API")
}

fn builder(objects: Vec<serde_json::Value>) -> kube_fake_client::ClientBuilder {
    with_classes(objects, kube_fake_client::interceptor::Funcs::new())
}

/// The builder with `funcs` intercepting. The in-memory API holds only namespaced custom
/// kinds: VolumeSnapshotClasses (cluster-scoped) are taken out of `objects` and served by a
/// read interceptor.
fn with_classes(
    objects: Vec<serde_json::Value>,
    funcs: kube_fake_client::interceptor::Funcs,
) -> kube_fake_client::ClientBuilder {
    let (classes, objects): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| o["kind"] == "VolumeSnapshotClass");
    let funcs = funcs.get(move |ctx| {
        Ok(classes
            .iter()
            .find(|c| ctx.namespace.is_empty() && c["metadata"]["name"] == ctx.name)
            .cloned())
    });
    kube_fake_client::ClientBuilder::new()
        .with_resource::<PostgresBackup>()
        .with_resource::<BackupSchedule>()
        .with_resource::<VolumeSnapshotBackup>()
        .with_resource::<PointInTimeRestore>()
        .with_resource::<VolumeSnapshot>()
        .with_resource::<VolumeSnapshotClass>()
        .with_runtime_objects(objects)
        .with_interceptor_funcs(funcs)
}

/// The type that tells the in-memory API the VolumeSnapshotClass path exists.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct VolumeSnapshotClass {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

impl kube::Resource for VolumeSnapshotClass {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "VolumeSnapshotClass".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "snapshot.storage.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "volumesnapshotclasses".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

/// A ready pod of StatefulSet `stateful_set` (its pods carry `app: <stateful_set>`).
pub fn ready_pod(stateful_set: &str, ordinal: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{stateful_set}-{ordinal}"), "namespace": NAMESPACE,
                     "labels": {"app": stateful_set}},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// The StatefulSet controller's part: the pods of `stateful_set` follow its replica count
/// (up to 3).
pub async fn follow_replicas(client: &Client, stateful_set: &str) {
    let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get(stateful_set)
        .await
        .expect("StatefulSet");
    let count = sts.spec.and_then(|s| s.replicas).unwrap_or(1);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for ordinal in 0..3 {
        let name = format!("{stateful_set}-{ordinal}");
        let exists = pods.get_opt(&name).await.expect("pod").is_some();
        let wanted = ordinal < count;
        if exists && !wanted {
            pods.delete(&name, &Default::default())
                .await
                .expect("delete pod");
        } else if !exists && wanted {
            let pod: Pod = serde_json::from_value(ready_pod(stateful_set, ordinal)).expect("pod");
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create pod");
        }
    }
}

/// The snapshot controller's part: the VolumeSnapshot `name` is cut (`creationTime`), and
/// with `ready` ready to use.
pub async fn cut_snapshot(client: &Client, name: &str, ready: bool) {
    let status = serde_json::json!({"status": {
        "creationTime": jiff::Timestamp::now().to_string(),
        "readyToUse": ready,
        "restoreSize": "1Gi",
    }});
    Api::<VolumeSnapshot>::namespaced(client.clone(), NAMESPACE)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("snapshot status");
}

/// A VolumeSnapshotClass `name` as JSON.
pub fn snapshot_class(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": name},
        "driver": "hostpath.csi.k8s.io", "deletionPolicy": "Delete",
    })
}

/// What was written, in order: `patch <name> <body>` and `delete <name>`.
pub type Journal = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Like [`fake_api`], and a journal of the patches and deletes it served.
pub async fn fake_api_with_journal(objects: Vec<serde_json::Value>) -> (Client, Journal) {
    let journal = Journal::default();
    let (patches, deletes) = (journal.clone(), journal.clone());
    let funcs = kube_fake_client::interceptor::Funcs::new()
        .patch(move |ctx| {
            patches
                .lock()
                .expect("journal")
                .push(format!("patch {} {}", ctx.name, ctx.patch));
            Ok(None)
        })
        .delete(move |ctx| {
            deletes
                .lock()
                .expect("journal")
                .push(format!("delete {}", ctx.name));
            Ok(None)
        });
    let client = with_classes(objects, funcs)
        .build()
        .await
        .expect("in-memory API");
    (client, journal)
}

/// A StatefulSet `pg` running `image` behind the service `pg-headless`.
pub fn stateful_set(image: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pg", "namespace": NAMESPACE},
        "spec": {
            "serviceName": "pg-headless",
            "selector": {"matchLabels": {"app": "pg"}},
            "template": {"metadata": {"labels": {"app": "pg"}},
                         "spec": {"containers": [{"name": "postgres", "image": image}]}}
        }
    })
}

/// A StatefulSet `pg` with `replicas`, its data on the claim template `data` (so the claim of
/// pod `n` is `data-pg-n`).
pub fn stateful_set_with_data(replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pg", "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "serviceName": "pg-headless",
            "selector": {"matchLabels": {"app": "pg"}},
            "template": {"metadata": {"labels": {"app": "pg"}},
                         "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}]
        }
    })
}

/// A PersistentVolumeClaim `name` asking for 1Gi, ReadWriteOnce.
pub fn data_claim(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    })
}

/// A Secret with string data.
pub fn secret(name: &str, data: &[(&str, &str)]) -> serde_json::Value {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let mut value = serde_json::to_value(Secret {
        data: Some(data),
        ..Secret::default()
    })
    .expect("secret");
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    value["metadata"] = serde_json::json!({"name": name, "namespace": NAMESPACE});
    value
}

/// The Job's container environment with `secretKeyRef`s resolved from the API, as the
/// kubelet would, then `overrides` (what differs outside a pod: addresses and paths).
pub async fn container_env(
    client: &Client,
    job: &Job,
    overrides: &[(&str, String)],
) -> Vec<(String, String)> {
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let env: &[EnvVar] = pod.containers[0].env.as_deref().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut resolved = Vec::new();
    for var in env {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) if from.field_ref.is_some() => NAMESPACE.to_string(),
            (None, Some(from)) => {
                let selector = from.secret_key_ref.clone().expect("a secret reference");
                let secret = secrets
                    .get(&selector.name)
                    .await
                    .expect("referenced Secret");
                let bytes = secret.data.expect("data")[&selector.key].0.clone();
                String::from_utf8(bytes).expect("utf-8")
            }
            (None, None) => String::new(),
        };
        resolved.push((var.name.clone(), value));
    }
    for (name, value) in overrides {
        resolved.retain(|(n, _)| n != name);
        resolved.push((name.to_string(), value.clone()));
    }
    resolved
}

/// Runs the Job's container command (`pgbackup <args>`) here; returns whether it succeeded
/// and what it left in its termination message.
pub async fn run_job(
    client: &Client,
    job: &Job,
    overrides: &[(&str, String)],
    work: &Path,
) -> (bool, String) {
    run_job_as(
        client,
        job,
        overrides,
        work,
        Path::new(env!("CARGO_BIN_EXE_pgbackup")),
        None,
    )
    .await
}

/// [`run_job`] with `program` as the `pgbackup` binary, as the OS user `user` (uid, gid)
/// when given — as the Job's pod would run as the database's user.
pub async fn run_job_as(
    client: &Client,
    job: &Job,
    overrides: &[(&str, String)],
    work: &Path,
    program: &Path,
    user: Option<(u32, u32)>,
) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(work, Some(uid), Some(gid)).expect("chown work dir");
    }
    let result_file = work.join("termination-log");
    let _ = std::fs::remove_file(&result_file);
    let mut overrides = overrides.to_vec();
    overrides.push(("PGBACKUP_RESULT_FILE", result_file.display().to_string()));
    overrides.push(("PGBACKUP_LOG_FORMAT", "text".into()));
    overrides.push(("TMPDIR", work.display().to_string()));
    overrides.push(("HOME", work.display().to_string()));
    let env = container_env(client, job, &overrides).await;
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["pgbackup".to_string()][..])
    );
    let mut command = Command::new(program);
    command
        .args(container.args.as_deref().unwrap_or_default())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let out = command.output().expect("run the Job's command");
    let message = std::fs::read_to_string(&result_file).unwrap_or_default();
    if !out.status.success() {
        eprintln!(
            "job command failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), message)
}

/// Records in the API what the Job controller and kubelet would: a pod of the Job whose
/// container ended with `message`, and the Job's final condition.
pub async fn finish_job(client: &Client, job_name: &str, succeeded: bool, message: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job_name}-x1"), "namespace": NAMESPACE,
                     "labels": {"batch.kubernetes.io/job-name": job_name}},
        "spec": {"containers": [{"name": "agent", "image": "agent"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = serde_json::json!({"status": {
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": "agent", "image": "agent", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 }, "message": message}}
        }]
    }});
    pods.patch_status(
        &format!("{job_name}-x1"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("pod status");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let condition = if succeeded { "Complete" } else { "Failed" };
    let reason = if succeeded {
        "CompletionsReached"
    } else {
        "BackoffLimitExceeded"
    };
    let status = serde_json::json!({"status": {
        "startTime": "2026-11-21T10:00:00Z",
        "conditions": [{"type": condition, "status": "True", "reason": reason,
                        "lastTransitionTime": "2026-11-21T10:01:00Z"}]
    }});
    jobs.patch_status(job_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("job status");
}

/// The API as it is once a user deleted the backup object `name` that holds finalizers:
/// the object stays, with `deletionTimestamp` set, until its finalizers are removed. (The
/// in-memory API deletes at once; it is rebuilt from the current objects with the
/// deletion begun, which is exactly what a reconcile would then read.)
pub async fn begin_deletion(client: &Client, name: &str) -> Client {
    begin_deletion_of(client, "PostgresBackup", name).await
}

/// Like [`begin_deletion`], for an object of any `kind` the tests use.
pub async fn begin_deletion_of(client: &Client, kind: &str, name: &str) -> Client {
    async fn all<K>(client: &Client) -> Vec<serde_json::Value>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
        api.list(&Default::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|o| {
                let mut value = serde_json::to_value(o).expect("json");
                value["apiVersion"] = K::api_version(&()).into();
                value["kind"] = K::kind(&()).into();
                value
            })
            .collect()
    }
    let mut objects = Vec::new();
    objects.extend(all::<Secret>(client).await);
    objects.extend(all::<k8s_openapi::api::apps::v1::StatefulSet>(client).await);
    objects.extend(all::<Job>(client).await);
    objects.extend(all::<Pod>(client).await);
    objects.extend(all::<k8s_openapi::api::batch::v1::CronJob>(client).await);
    objects.extend(all::<k8s_openapi::api::apps::v1::Deployment>(client).await);
    objects.extend(all::<PostgresBackup>(client).await);
    objects.extend(all::<BackupSchedule>(client).await);
    objects.extend(all::<VolumeSnapshotBackup>(client).await);
    objects.extend(all::<PointInTimeRestore>(client).await);
    objects.extend(all::<VolumeSnapshot>(client).await);
    objects.extend(all::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(client).await);
    for object in &mut objects {
        if object["kind"] == kind && object["metadata"]["name"] == name {
            assert!(
                object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty()),
                "an object without finalizers would simply be gone"
            );
            object["metadata"]["deletionTimestamp"] = jiff::Timestamp::now().to_string().into();
        }
    }
    fake_api(objects).await
}

/// The (only) container of a Job's pods.
pub fn job_container(job: &Job) -> k8s_openapi::api::core::v1::Container {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0]
        .clone()
}

/// The (only) container of a Deployment's pods.
pub fn deployment_container(
    deployment: &k8s_openapi::api::apps::v1::Deployment,
) -> k8s_openapi::api::core::v1::Container {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0]
        .clone()
}

/// The plain value of a container's environment variable.
pub fn env_value(container: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    container
        .env
        .as_deref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}
