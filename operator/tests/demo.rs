//! The README's try-it commands: `bash e2e/demo.sh` (the operator on a local cluster) and
//! `bash e2e/agent-demo.sh` (the agent alone). Each restores the rows from before the
//! mistake, leaves out what was written after it, and cleans up after itself.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e")
        .join(name)
}

/// Runs a demo script; its standard output.
fn run(command: &mut Command) -> String {
    let out = command.output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    stdout
}

/// The text of `output` between `before` and the next `after`.
fn between<'a>(output: &'a str, before: &str, after: &str) -> &'a str {
    output
        .split(before)
        .nth(1)
        .and_then(|rest| rest.split(after).next())
        .unwrap_or_else(|| panic!("no {before:?} in:\n{output}"))
}

#[test]
fn the_agent_demo_brings_back_the_rows_from_before_the_mistake() {
    let stdout = run(Command::new("bash")
        .arg(script("agent-demo.sh"))
        .env("PGBACKUP_BIN", env!("CARGO_BIN_EXE_pgbackup")));
    assert!(
        stdout.contains("came back: orders tea, coffee, cake, scones, jam"),
        "{stdout}"
    );
    assert!(stdout.contains("(the restored copy has 0)"), "{stdout}");
    let work = between(&stdout, "file://", "/repository");
    assert!(!Path::new(work).exists(), "{work} was left behind");
}

/// The program `e2e/demo.sh` runs the cluster with: a test target of this package, built
/// beside this one.
fn local_cluster() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().expect("deps directory");
    std::fs::read_dir(dir)
        .expect("deps directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("local_cluster-") && !n.contains('.'))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("the local_cluster program: cargo test builds it with the other tests")
}

#[test]
fn the_cluster_demo_restores_in_place_through_the_operator_and_cleans_up() {
    let stdout = run(Command::new("bash")
        .arg(script("demo.sh"))
        .env("PGBACKUP_LOCAL_CLUSTER", local_cluster()));
    // What a user looks at along the way.
    for shown in [
        "backupschedule.pgbackup.io/orders-nightly condition met",
        "pointintimerestore.pgbackup.io/before-the-mistake condition met",
        // The phase is printed as soon as it is seen, the replicas as they are then: while
        // scaling down they may still read 1; while restoring they are 0.
        "ScalingDown  (StatefulSet orders-db: ",
        "Restoring    (StatefulSet orders-db: 0 replicas)",
        "Completed    (StatefulSet orders-db: 1 replicas)",
    ] {
        assert!(stdout.contains(shown), "no {shown:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("came back: orders tea, coffee, cake, scones, jam\n"),
        "{stdout}"
    );
    assert!(stdout.contains("(the restored database has 0)"), "{stdout}");

    let kubeconfig = Path::new(between(&stdout, "kubeconfig: ", "\n"));
    let plane = kubeconfig.parent().expect("control plane directory");
    let node = PathBuf::from(plane.display().to_string().replace("controlplane", "node"));
    let work = stdout
        .split_once("/03-schedule.yaml")
        .and_then(|(before, _)| before.rsplit_once("kubectl apply -f "))
        .map(|(_, dir)| Path::new(dir))
        .expect("the demo's work directory");
    for left in [plane, &node, work] {
        assert!(!left.exists(), "{} was left behind", left.display());
    }
}
