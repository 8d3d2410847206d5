//! `kubectl pgbackup` as a tenant at a terminal would use it, with a kubeconfig of its own
//! and only the tenant's rights: a backup now from a schedule, the list with what the
//! schedule can restore, a restore into a clone to the end of that backup, its status, and
//! the logs of the Job behind the backup (which the tenant may not read; an admin may).

use std::{path::Path, process::Output};

use kube::Api;
use pgbackup::api::{BackupSchedule, PointInTimeRestore};

use crate::cluster::{connect, count, logs, orders_database, ready_pod_ip, wait_for};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

/// Runs the binary installed as `kubectl-pgbackup` with `kubeconfig`.
fn kubectl_pgbackup(kubeconfig: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("dir");
    let plugin = dir.path().join("kubectl-pgbackup");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgbackup"), &plugin).expect("symlink");
    std::process::Command::new(&plugin)
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir.path())
        .output()
        .expect("run kubectl-pgbackup")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl pgbackup failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kubectl pgbackup succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_tenant_backs_up_lists_restores_and_follows_with_kubectl_pgbackup() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "plugin").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "method": "physical",
                 "template": {
                     "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"},
                                "dataSubPath": "pgdata"},
                     "repository": {"volume": {"claimName": "backups"}}}},
    });
    apply::apply(&client, &schedule, Mode::Apply)
        .await
        .expect("schedule");
    // A tenant who may use the database's Secret (as the admission policy asks).
    drop(plane.tenant(&namespace, &["pg-auth"]).await);
    let tenant = plane.dir.join(format!("tenant-{namespace}.kubeconfig"));
    let ns = namespace.as_str();

    let out = tokio::task::spawn_blocking({
        let tenant = tenant.clone();
        let ns = ns.to_string();
        move || kubectl_pgbackup(&tenant, &["backup", "now", "nightly", "-n", &ns, "--wait"])
    })
    .await
    .expect("backup now");
    let done = ok(&out);
    assert!(done.contains(": Completed:"), "{done}\n{}", context());
    let backup = done.split(':').next().expect("name").to_string();
    assert!(backup.starts_with("nightly-"), "{done}");
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");

    // The schedule's window shows once the operator has seen the backup complete.
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    wait_for(60, "the schedule's recovery window", context, || async {
        schedules
            .get("nightly")
            .await
            .ok()?
            .status?
            .recovery_window?
            .first_recoverability_point
    })
    .await;
    let listed = ok(&kubectl_pgbackup(&tenant, &["list", "-n", ns]));
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("postgresbackup/{backup} ")))
        .unwrap_or_else(|| panic!("{backup} in:\n{listed}"));
    assert!(
        line.contains("full") && line.contains("Completed"),
        "{listed}"
    );
    let schedule_line = listed
        .lines()
        .find(|l| l.starts_with("backupschedule/nightly "))
        .unwrap_or_else(|| panic!("the schedule in:\n{listed}"));
    assert!(schedule_line.contains(&backup), "{listed}");

    // A moment the schedule cannot restore is refused before anything is created.
    let refused = failed(&kubectl_pgbackup(
        &tenant,
        &[
            "restore",
            "backupschedule/nightly",
            "--to",
            "2001-01-01T00:00:00Z",
            "-n",
            ns,
        ],
    ));
    assert!(
        refused.contains("outside what backupschedule/nightly can restore"),
        "{refused}"
    );
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    assert!(
        restores
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let source = format!("postgresbackup/{backup}");
    let out = tokio::task::spawn_blocking({
        let (tenant, ns) = (tenant.clone(), ns.to_string());
        move || {
            kubectl_pgbackup(
                &tenant,
                &[
                    "restore",
                    &source,
                    "--to",
                    "end-of-backup",
                    "--name",
                    "back",
                    "--wait",
                    "-n",
                    &ns,
                ],
            )
        }
    })
    .await
    .expect("restore");
    let shown = ok(&out);
    assert!(
        shown.contains("Phase:            Completed"),
        "{shown}\n{}",
        context()
    );
    let status = ok(&kubectl_pgbackup(&tenant, &["status", "back", "-n", ns]));
    assert!(status.contains("Phase:            Completed"), "{status}");
    let clone = restores
        .get("back")
        .await
        .expect("restore")
        .status
        .and_then(|s| s.restored_stateful_set)
        .expect("clone");
    let ip = ready_pod_ip(&client, &namespace, &format!("{clone}-0"), context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup"
    );
    assert_eq!(count(&db).await, 5000, "the original keeps its rows");

    // The tenant may not list Jobs; the admin's request finds the backup's Job and its pod
    // and goes to the node for the log (the local node of these tests serves no kubelet
    // API, so the API server's answer is that it could not reach it).
    let object = format!("postgresbackup/{backup}");
    let refused = failed(&kubectl_pgbackup(&tenant, &["logs", &object, "-n", ns]));
    assert!(
        refused.contains("list the jobs") && refused.contains("Forbidden"),
        "{refused}"
    );
    let asked = kubectl_pgbackup(&plane.admin_kubeconfig, &["logs", &object, "-n", ns]);
    let said = String::from_utf8_lossy(&asked.stderr);
    assert!(
        asked.status.success() || said.contains(&format!("containerLogs/{ns}/{backup}-backup-")),
        "{said}"
    );
}
