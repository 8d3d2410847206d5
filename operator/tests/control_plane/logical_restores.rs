//! Logical restores through the API (`PointInTimeRestore.spec.logical`): a table put back
//! beside the live one, and in place, by a Job against the running server.

use kube::Api;
use pgbackup::api::{BackupPhase, PostgresBackup};

use crate::cluster::{
    backup_with, claim_dir, connect, count, finished_restore, logs, orders_database, ready_pod_ip,
    refusal, restore, wait_for,
};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

/// A logical restore `name` of the backup `dump` with `logical` as its options.
fn logical_restore(namespace: &str, name: &str, logical: serde_json::Value) -> serde_json::Value {
    restore(
        namespace,
        serde_json::json!({"metadata": {"name": name},
            "spec": {"source": {"backupSchedule": null, "postgresBackup": "dump"},
                     "recoveryTarget": {"time": null, "immediate": true},
                     "logical": logical}}),
    )
}

#[tokio::test]
async fn deleted_rows_come_back_beside_the_live_table_and_then_in_place() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "logical-restore").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    db.batch_execute("CREATE TABLE audit (at timestamptz); INSERT INTO audit VALUES (now())")
        .await
        .expect("a second table");

    // Made by a schedule `hourly` (as its trigger labels them).
    let mut dump = backup_with(&namespace, "dump", "pg-auth", "username");
    dump["metadata"]["labels"] = serde_json::json!({"pgbackup.io/schedule": "hourly"});
    apply::apply(&client, &dump, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let phase = wait_for(240, "the dump to finish", context, || async {
        let phase = backups.get("dump").await.ok()?.status?.phase?;
        matches!(phase, BackupPhase::Completed | BackupPhase::Failed).then_some(phase)
    })
    .await;
    assert_eq!(phase, BackupPhase::Completed, "{}", context());
    // The dump carries the database's Kubernetes objects and its configuration files.
    let repository = claim_dir(&client, &namespace, "backups").await;
    let configuration = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgbackup"))
            .args(["configuration", "--repository"])
            .arg(format!("file://{}", repository.display()))
            .args(["--server", &format!("{namespace}-pg")])
            .args(extra)
            .output()
            .expect("pgbackup configuration");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let objects = configuration(&[]);
    for wanted in [
        "kind: StatefulSet",
        "name: pg",
        "kind: Service",
        "#   pg-auth",
    ] {
        assert!(objects.contains(wanted), "{wanted:?} in\n{objects}");
    }
    let files = tempfile::tempdir().expect("temp dir");
    let written = configuration(&["--output-dir", &files.path().to_string_lossy()]);
    assert!(
        files.path().join("pg_hba.conf").exists(),
        "the server's pg_hba.conf comes with a dump: {written}"
    );

    // The mistake.
    db.batch_execute("DELETE FROM orders WHERE id % 2 = 0; DELETE FROM audit")
        .await
        .expect("the mistake");
    assert_eq!(count(&db).await, 2161);

    // What the API server refuses, before anything runs.
    let into_clone = logical_restore(&namespace, "bad", serde_json::json!({}));
    let mut into_clone = into_clone;
    into_clone["spec"]["mode"] = "clone".into();
    assert!(
        refusal(&client, &into_clone)
            .await
            .contains("mode: inPlace"),
        "a logical restore goes into the running server"
    );
    let unconfirmed = {
        let mut doc = logical_restore(
            &namespace,
            "bad",
            serde_json::json!({"database": "postgres", "tables": ["public.orders"], "clean": true}),
        );
        doc["spec"]["confirm"] = false.into();
        doc
    };
    assert!(
        refusal(&client, &unconfirmed)
            .await
            .contains("confirm: true")
    );

    // The table beside the live one, in a database of its own, from the schedule's
    // newest dump.
    let mut beside = logical_restore(
        &namespace,
        "orders-yesterday",
        serde_json::json!({"database": "postgres", "tables": ["public.orders"],
                           "intoDatabase": "yesterday"}),
    );
    beside["spec"]["source"] = serde_json::json!({"backupSchedule": "hourly"});
    apply::apply(&client, &beside, Mode::Apply)
        .await
        .expect("restore beside");
    let ready = finished_restore(&client, &namespace, "orders-yesterday", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let (yesterday, connection) = tokio_postgres::connect(
        &format!("host={ip} port=5432 user=postgres password=change-me dbname=yesterday"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the restored database");
    tokio::spawn(connection);
    assert_eq!(count(&yesterday).await, 4321, "every row of the dump");
    let audit = yesterday
        .query_opt("SELECT to_regclass('audit')::text", &[])
        .await
        .expect("ask for audit")
        .and_then(|row| row.get::<_, Option<String>>(0));
    assert_eq!(audit, None, "only the table asked for");
    assert_eq!(count(&db).await, 2161, "the live table is untouched");

    // Then in place: the selected table dropped and re-created in one transaction.
    let mut in_place = logical_restore(
        &namespace,
        "orders-back",
        serde_json::json!({"database": "postgres", "tables": ["public.orders"], "clean": true}),
    );
    in_place["spec"]["confirm"] = true.into();
    apply::apply(&client, &in_place, Mode::Apply)
        .await
        .expect("restore in place");
    let ready = finished_restore(&client, &namespace, "orders-back", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let db = connect(&ready_pod_ip(&client, &namespace, "pg-0", context).await).await;
    assert_eq!(count(&db).await, 4321, "the rows are back in place");
    let audit: i64 = db
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .expect("audit")
        .get(0);
    assert_eq!(audit, 0, "what was not asked for stays as it is");

    // A database the dump does not hold is refused, and nothing runs.
    let missing = logical_restore(
        &namespace,
        "no-such-database",
        serde_json::json!({"database": "billing"}),
    );
    apply::apply(&client, &missing, Mode::Apply)
        .await
        .expect("restore of a missing database");
    let ready = finished_restore(&client, &namespace, "no-such-database", context).await;
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "DatabaseNotInBackup"),
        "{ready:?}"
    );
}
