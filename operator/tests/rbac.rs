//! The operator's RBAC rules (`charts/pgbackup/files/operator-rules.yaml`) against the calls
//! it makes: every call of the reconcilers, the leader election and the controllers'
//! watches is allowed, and every rule is used — the exact verbs, nothing more. The
//! trigger's calls are checked against the Role the operator gives it.

mod support;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{coordination::v1::Lease, rbac::v1::PolicyRule};
use kube::{Api, Client, ResourceExt};
use pgbackup::{
    agent::trigger,
    api::{BackupPhase, BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    controllers::{
        Context, Metrics, Settings, backup_schedule, point_in_time_restore, postgres_backup,
        volume_snapshot_backup,
    },
    k8s::{generated::volume_snapshot::VolumeSnapshot, leader::LeaderElector},
};
use support::{
    cluster::{
        NAMESPACE, begin_deletion, begin_deletion_of, cut_snapshot, fake_api, finish_job,
        follow_replicas, ready_pod, secret, snapshot_class, stateful_set,
    },
    postgres::{PgServer, SUPERUSER},
};

/// `(api group, resource[/subresource], verb)`.
type Call = (String, String, String);
type Calls = Arc<Mutex<BTreeSet<Call>>>;

/// The call a request is, as RBAC sees it.
fn call_of(method: &http::Method, uri: &http::Uri) -> Call {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {uri}"),
    };
    let rest = match rest {
        // `/api/v1/namespaces/<name>` is a Namespace itself, not a namespaced path.
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected path {uri}"),
    };
    let watch = uri.query().is_some_and(|q| q.contains("watch=true"));
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    (group.to_string(), resource, verb.to_string())
}

/// A client that records every call it makes, then passes it to `inner`.
fn recording(inner: Client, calls: Calls) -> Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (inner, calls) = (inner.clone(), calls.clone());
        async move {
            calls
                .lock()
                .expect("calls")
                .insert(call_of(request.method(), request.uri()));
            inner.send(request).await
        }
    });
    Client::new(service, NAMESPACE)
}

fn allows(rules: &[PolicyRule], (group, resource, verb): &Call) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

fn granted(rules: &[PolicyRule]) -> BTreeSet<Call> {
    let mut all = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    all.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    all
}

fn call(group: &str, resource: &str, verb: &str) -> Call {
    (group.into(), resource.into(), verb.into())
}

fn objects() -> Vec<serde_json::Value> {
    let target = serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}});
    let repository =
        serde_json::json!({"s3": {"bucket": "b", "credentialsSecret": {"name": "s3-keys"}}});
    let mut old = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "nightly-old", "namespace": NAMESPACE, "labels": {"pgbackup.io/schedule": "nightly"}},
        "spec": {"target": target, "repository": repository, "method": "physical"},
        "status": {"phase": "Completed", "completedAt": "2026-11-01T00:00:00Z"},
    });
    let mut newer = old.clone();
    newer["metadata"]["name"] = "nightly-new".into();
    newer["status"]["completedAt"] = "2026-11-02T00:00:00Z".into();
    old["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z".into();
    let mut sts = stateful_set("postgres:16.4");
    sts["spec"]["volumeClaimTemplates"] = serde_json::json!([{"metadata": {"name": "data"}}]);
    sts["spec"]["replicas"] = 1.into();
    vec![
        sts,
        ready_pod("pg", 0),
        serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-pg-0", "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteOnce"]},
        }),
        snapshot_class("csi-snap"),
        secret("pg-auth", &[("username", "u"), ("password", "p")]),
        secret(
            "s3-keys",
            &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")],
        ),
        serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": "manual", "namespace": NAMESPACE},
            "spec": {"target": target, "repository": repository, "method": "logical", "deletionPolicy": "Delete"},
        }),
        serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly", "namespace": NAMESPACE},
            "spec": {"schedule": "@daily", "method": "physical",
                     "template": {"target": target, "repository": repository},
                     "walArchiving": {"enabled": true}, "retention": {"keepLast": 1}},
        }),
        old,
        newer,
    ]
}

async fn reconcile_backup(backups: &Api<PostgresBackup>, ctx: &Arc<Context>) {
    let backup = backups.get("manual").await.expect("get");
    postgres_backup::reconcile(Arc::new(backup), ctx.clone())
        .await
        .expect("reconcile");
}

fn snapshot_backup(name: &str, mode: &str, target: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}")},
        "spec": {"target": target, "mode": mode, "volumeSnapshotClassName": "csi-snap",
                 "deletionPolicy": "Delete"},
    })
}

/// Reconciles the VolumeSnapshotBackup `name` until it completes, playing the snapshot
/// and StatefulSet controllers' parts on `fake` in between.
async fn snapshot_to_completion(fake: &Client, ctx: &Arc<Context>, name: &str) {
    let api: Api<VolumeSnapshotBackup> = Api::namespaced(fake.clone(), NAMESPACE);
    for _ in 0..200 {
        let backup = api.get(name).await.expect("get");
        let status = backup.status.clone().unwrap_or_default();
        if status.phase == Some(BackupPhase::Completed) {
            return;
        }
        volume_snapshot_backup::reconcile(Arc::new(backup), ctx.clone())
            .await
            .expect("reconcile");
        follow_replicas(fake, "pg").await;
        let snapshot = format!("{name}-data");
        let snapshots: Api<VolumeSnapshot> = Api::namespaced(fake.clone(), NAMESPACE);
        if let Some(taken) = snapshots.get_opt(&snapshot).await.expect("snapshot") {
            let cut = taken.status.is_some_and(|s| s.creation_time.is_some());
            cut_snapshot(fake, &snapshot, cut).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} did not complete");
}

async fn reconcile_schedule(schedules: &Api<BackupSchedule>, ctx: &Arc<Context>) {
    let schedule = schedules.get("nightly").await.expect("get");
    backup_schedule::reconcile(Arc::new(schedule), ctx.clone())
        .await
        .expect("reconcile");
}

#[tokio::test]
async fn the_operator_rules_allow_every_call_and_nothing_unused() {
    let rules: Vec<PolicyRule> = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/pgbackup/files/operator-rules.yaml"
        ))
        .expect("rules file"),
    )
    .expect("rules");
    let calls = Calls::default();
    let fake = fake_api(objects()).await;
    let client = recording(fake.clone(), calls.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);

    // A backup from creation to deletion with its data.
    for _ in 0..2 {
        reconcile_backup(&backups, &ctx).await;
    }
    let report = serde_json::json!({"backupId": "20261121T000000Z", "location": "s3://b/x", "manifestSha256": "00",
        "size": 1, "storedSize": 1, "serverVersion": "16.4", "beginTime": "2026-11-21T00:00:00Z", "endTime": "2026-11-21T00:00:01Z"});
    finish_job(&fake, "manual-backup", true, &report.to_string()).await;
    reconcile_backup(&backups, &ctx).await;
    let deleting = begin_deletion(&fake, "manual").await;
    let client2 = recording(deleting.clone(), calls.clone());
    let ctx2 = Arc::new(Context::new(
        client2.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    let backups2: Api<PostgresBackup> = Api::namespaced(client2.clone(), NAMESPACE);
    reconcile_backup(&backups2, &ctx2).await;
    // The first delete Job fails: it is removed and a fresh one started.
    finish_job(
        &deleting,
        "manual-delete",
        false,
        r#"{"reason":"RepositoryError","message":"unreachable"}"#,
    )
    .await;
    reconcile_backup(&backups2, &ctx2).await;
    assert!(
        backups2.get_opt("manual").await.expect("get").is_some(),
        "the data is not forgotten"
    );
    reconcile_backup(&backups2, &ctx2).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(deleting.clone(), NAMESPACE);
    pods.delete("manual-delete-x1", &Default::default())
        .await
        .expect("old pod");
    finish_job(&deleting, "manual-delete", true, "deleted").await;
    reconcile_backup(&backups2, &ctx2).await;
    assert!(backups2.get_opt("manual").await.expect("get").is_none());

    // Volume snapshots: offline (scaling), and checkpoint (a session on a real server),
    // then deleted with their snapshots.
    let pg = PgServer::start();
    let snapshots: Api<VolumeSnapshotBackup> = Api::namespaced(fake.clone(), NAMESPACE);
    let offline = snapshot_backup(
        "offline-snap",
        "offline",
        serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}),
    );
    let checkpoint = snapshot_backup(
        "checkpoint-snap",
        "checkpoint",
        serde_json::json!({"statefulSet": "pg", "host": "127.0.0.1", "port": pg.port(),
                           "sslMode": "disable", "credentialsSecret": {"name": "pg-local"}}),
    );
    let local = serde_json::from_value(secret(
        "pg-local",
        &[("username", SUPERUSER), ("password", pg.password())],
    ))
    .expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(fake.clone(), NAMESPACE)
        .create(&Default::default(), &local)
        .await
        .expect("secret");
    for object in [offline, checkpoint] {
        snapshots
            .create(
                &Default::default(),
                &serde_json::from_value(object).expect("object"),
            )
            .await
            .expect("create");
    }
    snapshot_to_completion(&fake, &ctx, "offline-snap").await;
    snapshot_to_completion(&fake, &ctx, "checkpoint-snap").await;
    let deleting = begin_deletion_of(&fake, "VolumeSnapshotBackup", "checkpoint-snap").await;
    let client3 = recording(deleting.clone(), calls.clone());
    let ctx3 = Arc::new(Context::new(
        client3.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    let backup = Api::<VolumeSnapshotBackup>::namespaced(deleting.clone(), NAMESPACE)
        .get("checkpoint-snap")
        .await
        .expect("get");
    volume_snapshot_backup::reconcile(Arc::new(backup), ctx3)
        .await
        .expect("reconcile");

    // Restores from every kind of source: one in place (validated, then the StatefulSet
    // scaled down) and into clones (their claim, Service and StatefulSet made), their Jobs
    // played along.
    let restores: Api<PointInTimeRestore> = Api::namespaced(fake.clone(), NAMESPACE);
    for (name, mode, source) in [
        (
            "in-place",
            "inPlace",
            serde_json::json!({"postgresBackup": "nightly-new"}),
        ),
        (
            "drill",
            "clone",
            serde_json::json!({"postgresBackup": "nightly-new"}),
        ),
        (
            "from-schedule",
            "clone",
            serde_json::json!({"backupSchedule": "nightly"}),
        ),
        (
            "from-snapshot",
            "clone",
            serde_json::json!({"volumeSnapshotBackup": "offline-snap"}),
        ),
    ] {
        let object = serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PointInTimeRestore",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                     "source": source,
                     "recoveryTarget": {"latest": true}, "mode": mode, "confirm": mode == "inPlace"}
        });
        restores
            .create(
                &Default::default(),
                &serde_json::from_value(object).expect("restore"),
            )
            .await
            .expect("create restore");
        for _ in 0..6 {
            let restore = restores.get(name).await.expect("get");
            point_in_time_restore::reconcile(Arc::new(restore), ctx.clone())
                .await
                .expect("reconcile");
            follow_replicas(&fake, "pg").await;
            let jobs: Api<k8s_openapi::api::batch::v1::Job> =
                Api::namespaced(fake.clone(), NAMESPACE);
            for job in jobs.list(&Default::default()).await.expect("jobs").items {
                if job.status.is_none() && job.name_any().starts_with(name) {
                    let report = serde_json::json!({"backupId": "20261102T000000Z", "serverVersion": "16.4",
                        "reachedLsn": "0/5000000", "timeline": 2});
                    finish_job(&fake, &job.name_any(), true, &report.to_string()).await;
                }
            }
        }
    }

    // A schedule: its objects, retention, then archiving turned off.
    for _ in 0..2 {
        reconcile_schedule(&schedules, &ctx).await;
    }
    let off = serde_json::json!({"spec": {"walArchiving": {"enabled": false}}});
    Api::<BackupSchedule>::namespaced(fake.clone(), NAMESPACE)
        .patch(
            "nightly",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&off),
        )
        .await
        .expect("archiving off");
    for _ in 0..2 {
        reconcile_schedule(&schedules, &ctx).await;
    }

    // Leader election: take, renew, release.
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), NAMESPACE),
        "leader",
        "a",
        Duration::from_secs(15),
    );
    assert!(elector.try_lead().await.expect("lead"));
    assert!(elector.try_lead().await.expect("renew"));
    elector.release().await.expect("release");

    let mut used = calls.lock().expect("calls").clone();
    for call in &used {
        assert!(
            allows(&rules, call),
            "the operator calls {call:?}, which its rules do not allow"
        );
    }
    // What the controllers' watches need (operator/src/controllers/runtime.rs).
    for (group, resource) in [
        ("pgbackup.io", "postgresbackups"),
        ("pgbackup.io", "backupschedules"),
        ("pgbackup.io", "volumesnapshotbackups"),
        ("pgbackup.io", "pointintimerestores"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("apps", "deployments"),
    ] {
        used.insert(call(group, resource, "list"));
        used.insert(call(group, resource, "watch"));
    }
    // A first server-side apply creates; the trigger Role's grants must be held to be given.
    for (group, resource) in [
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("apps", "deployments"),
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("events.k8s.io", "events"),
    ] {
        used.insert(call(group, resource, "create"));
    }
    // Setting blockOwnerDeletion needs these where OwnerReferencesPermissionEnforcement runs.
    used.insert(call("pgbackup.io", "postgresbackups/finalizers", "update"));
    used.insert(call("pgbackup.io", "backupschedules/finalizers", "update"));
    for kind in ["volumesnapshotbackups", "pointintimerestores"] {
        used.insert(call("pgbackup.io", &format!("{kind}/finalizers"), "update"));
    }
    // The event recorder patches an event that repeats instead of creating another.
    used.insert(call("events.k8s.io", "events", "patch"));
    let (_, role, _) = pgbackup::controllers::backup_schedule::build::trigger_rbac(
        &schedules.get("nightly").await.expect("get"),
    );
    used.extend(granted(role.rules.as_deref().expect("rules")));
    let unused: Vec<Call> = granted(&rules).difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "rules the operator never uses: {unused:?}"
    );
    assert!(
        !granted(&rules).iter().any(|(_, r, v)| r == "*" || v == "*"),
        "no wildcards"
    );
}

#[tokio::test]
async fn the_trigger_needs_only_what_its_role_grants() {
    let calls = Calls::default();
    let fake = fake_api(objects()).await;
    let client = recording(fake, calls.clone());
    let schedule = Api::<BackupSchedule>::namespaced(client.clone(), NAMESPACE)
        .get("nightly")
        .await
        .expect("get");
    calls.lock().expect("calls").clear();
    trigger::trigger(
        client.clone(),
        NAMESPACE,
        "nightly",
        "2026-11-21T00:00:00Z".parse().expect("time"),
    )
    .await
    .expect("trigger");
    let (_, role, _) = backup_schedule::build::trigger_rbac(&schedule);
    let rules = role.rules.expect("rules");
    for call in calls.lock().expect("calls").iter() {
        assert!(
            allows(&rules, call),
            "the trigger calls {call:?}, which its Role does not allow"
        );
    }
    assert!(calls.lock().expect("calls").contains(&call(
        "pgbackup.io",
        "postgresbackups",
        "create"
    )));
}
