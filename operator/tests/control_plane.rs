//! The operator on a real control plane (kube-apiserver with RBAC and admission, etcd,
//! kube-controller-manager; `support::controlplane`): what the API server admits and
//! refuses, and what the operator can do under the chart's RBAC, authenticated as the
//! chart's ServiceAccount.

mod support;

use std::time::{Duration, Instant};

use kube::{Api, Client};
use pgbackup::api::{PointInTimeRestore, PostgresBackup};
use support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    repository_root, test_namespace,
};

/// Every manifest a user is shown, in `namespace` when it is namespaced.
fn user_manifests() -> Vec<(String, serde_json::Value)> {
    let root = repository_root();
    let mut all = Vec::new();
    for dir in ["manifests/examples", "manifests/walkthrough"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("manifest dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("manifest");
            for doc in apply::documents(&text) {
                all.push((file.display().to_string(), doc));
            }
        }
    }
    all
}

#[tokio::test]
async fn every_example_and_walkthrough_manifest_is_admitted_by_the_api_server() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let manifests = user_manifests();
    assert!(
        manifests.len() > 10,
        "found only {} manifests",
        manifests.len()
    );
    // The namespaces they name must exist for a dry run of their objects.
    let namespaces: std::collections::BTreeSet<&str> = manifests
        .iter()
        .filter_map(|(_, doc)| doc["metadata"]["namespace"].as_str())
        .collect();
    for name in namespaces {
        let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        apply::apply(&client, &namespace, Mode::Apply)
            .await
            .expect("namespace");
    }
    let mut refused = Vec::new();
    for (file, doc) in &manifests {
        if let Err(err) = apply::apply(&client, doc, Mode::DryRun).await {
            refused.push(format!(
                "{file}: {} {}: {err}",
                doc["kind"], doc["metadata"]["name"]
            ));
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

/// A PointInTimeRestore with `changes` merged into a valid in-place restore.
fn restore(namespace: &str, changes: serde_json::Value) -> serde_json::Value {
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

fn merge(doc: &mut serde_json::Value, changes: serde_json::Value) {
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
async fn refusal(client: &Client, doc: &serde_json::Value) -> String {
    match apply::apply(client, doc, Mode::DryRun).await {
        Ok(_) => panic!("the API server admitted {doc:#}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_bad_specs_with_the_rules_message() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "refusals").await;

    apply::apply(
        &client,
        &restore(&namespace, serde_json::json!({})),
        Mode::DryRun,
    )
    .await
    .expect("the valid restore is admitted");
    let cases = [
        (
            serde_json::json!({"spec": {"recoveryTarget": {"lsn": "0/3000000"}}}),
            "set exactly one of recoveryTarget.time, lsn, xid, name, immediate: true or latest: true",
        ),
        (
            serde_json::json!({"spec": {"confirm": false}}),
            "mode: inPlace replaces the StatefulSet's data; set confirm: true to go ahead",
        ),
        (
            serde_json::json!({"spec": {"source": {"postgresBackup": "b"}}}),
            "set exactly one of source.postgresBackup, source.volumeSnapshotBackup or source.backupSchedule",
        ),
    ];
    for (changes, rule) in cases {
        let message = refusal(&client, &restore(&namespace, changes.clone())).await;
        assert!(message.contains(rule), "{changes}: {message}");
    }

    // A backup's spec cannot change once it exists.
    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}}},
    });
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let mut changed = backup.clone();
    changed["spec"]["method"] = "physical".into();
    let message = refusal(&client, &changed).await;
    assert!(message.contains("cannot change"), "{message}");
}

/// Waits until `check` gives a value, or fails with the operator's log.
async fn eventually<T, F: Future<Output = Option<T>>>(
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
fn condition(restore: &PointInTimeRestore, type_: &str) -> Option<(String, String, String)> {
    restore
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn restores_from_every_kind_of_source_are_read_under_the_charts_rbac() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "sources").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&client, &database(&namespace)).await;

    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let sources = [
        ("postgresBackup", "inPlace"),
        ("backupSchedule", "inPlace"),
        ("volumeSnapshotBackup", "inPlace"),
        ("postgresBackup", "clone"),
        ("backupSchedule", "clone"),
        ("volumeSnapshotBackup", "clone"),
    ];
    for (kind, mode) in sources {
        let name = format!("{}-{}", kind.to_lowercase(), mode.to_lowercase());
        let doc = restore(
            &namespace,
            serde_json::json!({"metadata": {"name": name},
                               "spec": {"source": {"backupSchedule": null, kind: "gone"}, "mode": mode}}),
        );
        apply::apply(&client, &doc, Mode::Apply)
            .await
            .expect("restore");
    }
    for (kind, mode) in sources {
        let name = format!("{}-{}", kind.to_lowercase(), mode.to_lowercase());
        let (_, reason, message) = eventually(&operator, &format!("{name} to fail"), || async {
            let restore = restores.get(&name).await.expect("restore");
            condition(&restore, "Failed").filter(|(status, ..)| status == "True")
        })
        .await;
        assert_eq!(reason, "SourceNotFound", "{name}: {message}");
    }
    let log = operator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused a call:\n{log}"
    );
}

/// Waits up to `seconds` until `check` gives a value, or fails with what `context` says.
async fn wait_for<T, F: Future<Output = Option<T>>>(
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
fn database(namespace: &str) -> serde_json::Value {
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
                                        "containers": [{"name": "postgresql", "image": "postgres:16.4",
                                            "args": ["-c", "wal_level=replica"],
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
async fn apply_all(client: &Client, objects: &serde_json::Value) {
    for doc in objects.as_array().expect("objects") {
        apply::apply(client, doc, Mode::Apply)
            .await
            .expect("object");
    }
}

/// What to print when a wait fails: the ends of the operator's and the node's logs.
fn logs(operator: &Operator) -> String {
    format!(
        "operator:\n{}\nnode:\n{}",
        operator.log_tail(),
        support::controlplane::tail(&support::node::node_dir().join("node.log"))
    )
}

/// The address of a Ready pod.
async fn ready_pod_ip(
    client: &Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> String {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(180, &format!("pod {name} to be ready"), context, || async {
        let pod = pods.get_opt(name).await.ok()??;
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
async fn orders_database(
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

#[tokio::test]
async fn a_logical_backup_runs_on_the_node_and_its_restore_test_passes() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "logical").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    orders_database(&client, &namespace, context).await;

    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "first", "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}},
                 "verify": {"enabled": true}},
    });
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let done = wait_for(240, "the backup to be verified", context, || async {
        let backup = backups.get("first").await.ok()?;
        let status = backup.status.clone()?;
        let verified = status.conditions.iter().find(|c| c.type_ == "Verified")?;
        (verified.status != "Unknown").then_some(status)
    })
    .await;
    let verified = done
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .expect("Verified");
    assert_eq!(verified.status, "True", "{verified:?}\n{}", context());
    assert_eq!(done.phase, Some(pgbackup::api::BackupPhase::Completed));
    let verification = done.verification.clone().expect("verification");
    assert_eq!(
        verification.rows,
        Some(4321),
        "{verification:?}\n{}",
        context()
    );
}

/// A logical PostgresBackup `name` of `pg` whose credentials are `secret`'s keys.
fn backup_with(namespace: &str, name: &str, secret: &str, username_key: &str) -> serde_json::Value {
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
async fn forbidden(client: &Client, doc: &serde_json::Value, mode: Mode) -> String {
    match apply::apply(client, doc, mode).await {
        Ok(_) => panic!("admitted: {doc:#}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            status.message
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_tenant_cannot_make_pgbackup_use_a_secret_it_may_not_read() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "tenant").await;
    for doc in database(&namespace)
        .as_array()
        .expect("objects")
        .iter()
        .take(1)
    {
        apply::apply(&admin, doc, Mode::Apply)
            .await
            .expect("secret");
    }
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "other-app", "namespace": namespace}, "stringData": {"token": "s3cr3t"}});
    apply::apply(&admin, &secret, Mode::Apply)
        .await
        .expect("secret");
    let client = plane.tenant(&namespace, &["pg-auth"]).await;

    // The attack: a backup whose "user name" is another application's token, so that the
    // failed login would show it. The API server refuses it before anything runs.
    let message = forbidden(
        &client,
        &backup_with(&namespace, "steal", "other-app", "token"),
        Mode::Apply,
    )
    .await;
    assert!(
        message.contains(&format!("system:serviceaccount:{namespace}:tenant may not get Secret other-app in namespace {namespace}")),
        "{message}"
    );
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "@daily", "method": "logical",
                 "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                              "repository": {"s3": {"bucket": "backups", "credentialsSecret": {"name": "other-app"}}}}},
    });
    let message = forbidden(&client, &schedule, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );
    let restore = restore(
        &namespace,
        serde_json::json!({"spec": {"target": {"credentialsSecret": {"name": "other-app"}}}}),
    );
    let message = forbidden(&client, &restore, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );

    // What the tenant may read, it may use; an update that keeps the references is fine,
    // one that points them elsewhere is checked again.
    apply::apply(
        &client,
        &backup_with(&namespace, "fine", "pg-auth", "username"),
        Mode::Apply,
    )
    .await
    .expect("a backup with the tenant's own Secret is admitted");
    let mut labelled = backup_with(&namespace, "fine", "pg-auth", "username");
    labelled["metadata"]["labels"] = serde_json::json!({"team": "shop"});
    apply::apply(&client, &labelled, Mode::Apply)
        .await
        .expect("a label");
    let mut schedule = schedule.clone();
    schedule["spec"]["template"]["repository"] =
        serde_json::json!({"volume": {"claimName": "backups"}});
    apply::apply(&client, &schedule, Mode::Apply)
        .await
        .expect("schedule");
    schedule["spec"]["template"]["target"]["credentialsSecret"]["name"] = "other-app".into();
    let message = forbidden(&client, &schedule, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );
}

#[tokio::test]
async fn a_schedules_trigger_creates_its_backups_under_the_admission_policy() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "trigger").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&admin, &database(&namespace)).await;
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "method": "logical",
                 "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                              "repository": {"volume": {"claimName": "backups"}}}},
    });
    apply::apply(&admin, &schedule, Mode::Apply)
        .await
        .expect("schedule");
    let cron_jobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(admin.clone(), &namespace);
    let cron_job = eventually(&operator, "the trigger CronJob", || async {
        cron_jobs
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    // `kubectl create job --from=cronjob/…`: the CronJob's Job, run now on the node.
    let template = cron_job.spec.expect("spec").job_template;
    let job = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "trigger-now", "namespace": namespace},
        "spec": template.spec,
    });
    apply::apply(&admin, &job, Mode::Apply).await.expect("job");
    let backups: Api<PostgresBackup> = Api::namespaced(admin.clone(), &namespace);
    let created = eventually(&operator, "the trigger's backup", || async {
        backups
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        created
            .metadata
            .labels
            .unwrap_or_default()
            .get("pgbackup.io/schedule")
            .map(String::as_str),
        Some("nightly")
    );
}

/// Connects to the database of pod `pg-0` as the superuser.
async fn connect(ip: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(
        &format!("host={ip} port=5432 user=postgres password=change-me dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the pod's database");
    tokio::spawn(connection);
    db
}

async fn count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn a_physical_backup_restored_in_place_puts_back_the_rows_of_the_backup() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "in-place").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "base", "namespace": namespace},
        "spec": {"method": "physical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}}},
    });
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let phase = wait_for(240, "the physical backup to finish", context, || async {
        let status = backups.get("base").await.ok()?.status?;
        status.phase.filter(|p| {
            matches!(
                p,
                pgbackup::api::BackupPhase::Completed | pgbackup::api::BackupPhase::Failed
            )
        })
    })
    .await;
    assert_eq!(
        phase,
        pgbackup::api::BackupPhase::Completed,
        "{}",
        context()
    );

    // A mistake after the backup: rows that the restore must take away.
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");
    assert_eq!(count(&db).await, 5000);
    drop(db);

    let restore = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "back"},
            "spec": {"source": {"backupSchedule": null, "postgresBackup": "base"},
                     "target": {"dataSubPath": "pgdata"},
                     "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &restore, Mode::Apply)
        .await
        .expect("restore");
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let ready = wait_for(300, "the restore to finish", context, || async {
        let restore = restores.get("back").await.ok()?;
        condition(&restore, "Ready").filter(|(status, reason, _)| {
            status == "True" || reason == "RolledBack" || reason == "Failed"
        })
    })
    .await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup, no later ones"
    );
}

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_is_killed() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "leader").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), support::controlplane::OPERATOR_NAMESPACE);
    let lease = format!("pgbackup-{namespace}");
    let holder = || async {
        leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut first = Operator::start(plane, &namespace, "first").await;
    eventually(&first, "the first operator to lead", || async {
        (holder().await.as_deref() == Some("first")).then_some(())
    })
    .await;
    let second = Operator::start(plane, &namespace, "second").await;
    // Longer than a Lease lasts (5 s): the standby must not take it while the leader renews.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(holder().await.as_deref(), Some("first"));
    assert!(!second.log().contains("leading"), "{}", second.log());

    first.kill();
    eventually(&second, "the second operator to lead", || async {
        (holder().await.as_deref() == Some("second")).then_some(())
    })
    .await;
    // And it reconciles: a restore of a source that does not exist is refused.
    let doc = restore(
        &namespace,
        serde_json::json!({"spec": {"source": {"backupSchedule": "gone"}}}),
    );
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let (_, reason, _) = eventually(&second, "the restore to be refused", || async {
        let restore = restores.get("oops").await.ok()?;
        condition(&restore, "Failed").filter(|(status, ..)| status == "True")
    })
    .await;
    assert_eq!(reason, "StatefulSetNotFound");
}

#[tokio::test]
async fn a_stateful_set_that_deletes_its_claims_when_scaled_is_never_scaled() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "when-scaled").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let mut objects = database(&namespace);
    objects[2]["spec"]["persistentVolumeClaimRetentionPolicy"] =
        serde_json::json!({"whenScaled": "Delete", "whenDeleted": "Retain"});
    apply_all(&client, &objects).await;
    let context = || logs(&operator);
    ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &namespace);
    let claim_uid = claims.get("data-pg-0").await.expect("claim").metadata.uid;
    let offline = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": "cold", "namespace": namespace},
        "spec": {"mode": "offline", "volumeSnapshotClassName": "local",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}},
    });
    apply::apply(&client, &offline, Mode::Apply)
        .await
        .expect("snapshot");
    let in_place = restore(
        &namespace,
        serde_json::json!({"spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": "cold"},
                                    "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &in_place, Mode::Apply)
        .await
        .expect("restore");

    let snapshots: Api<pgbackup::api::VolumeSnapshotBackup> =
        Api::namespaced(client.clone(), &namespace);
    // It waits (Pending) for the policy to change, saying what to change.
    let message = eventually(&operator, "the offline snapshot to be held", || async {
        let status = snapshots.get("cold").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "ClaimsDeletedWhenScaled").then(|| ready.message.clone())
    })
    .await;
    assert!(message.contains("set whenScaled: Retain"), "{message}");
    // The in-place restore refuses too (its source is refused already; a restore from a
    // backup is checked by the pure tests).
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    eventually(&operator, "the restore to fail", || async {
        let restore = restores.get("oops").await.ok()?;
        condition(&restore, "Failed").filter(|(status, ..)| status == "True")
    })
    .await;
    // Nothing was scaled: the StatefulSet still runs its pod on the same claim.
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
    assert_eq!(
        claims.get("data-pg-0").await.expect("claim").metadata.uid,
        claim_uid
    );
}

/// The directory of the PersistentVolume bound to `claim`.
async fn claim_dir(client: &Client, namespace: &str, claim: &str) -> std::path::PathBuf {
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

#[tokio::test]
async fn deleting_a_backup_with_deletion_policy_delete_removes_its_data_and_its_job() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "deletion").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&client, &database(&namespace)).await;
    let context = || logs(&operator);
    ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let mut backup = backup_with(&namespace, "doomed", "pg-auth", "username");
    backup["spec"]["deletionPolicy"] = "Delete".into();
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let status = wait_for(180, "the backup to complete", context, || async {
        let status = backups.get("doomed").await.ok()?.status?;
        (status.phase == Some(pgbackup::api::BackupPhase::Completed)).then_some(status)
    })
    .await;
    let stored = claim_dir(&client, &namespace, "backups")
        .await
        .join(format!("{namespace}-pg/logical"))
        .join(status.backup_id.expect("backup id"));
    assert!(
        stored.join("manifest.json").exists(),
        "{}",
        stored.display()
    );
    let job = status.job_name.expect("job");

    backups
        .delete("doomed", &Default::default())
        .await
        .expect("delete");
    wait_for(180, "the backup object to go", context, || async {
        backups
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !stored.exists(),
        "the repository still holds {}",
        stored.display()
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        120,
        "the garbage collector to remove the backup's Job",
        context,
        || async { jobs.get_opt(&job).await.ok()?.is_none().then_some(()) },
    )
    .await;
}
