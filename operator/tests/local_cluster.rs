//! The local cluster of the operator demo (`e2e/demo.sh`): the control plane and the local
//! node the control-plane tests run on, an S3 server with the walk-through's bucket and
//! keys (`manifests/walkthrough/02-s3-credentials.yaml`), and `pgbackup operator` under the
//! chart's RBAC, watching the walk-through's namespace `shop`.
//!
//! `local_cluster serve <file>` starts them, writes `<file>` (shell assignments: the admin
//! kubeconfig, the S3 endpoint, the operator's log, the directories to remove) once all are
//! up, and runs until SIGINT or SIGTERM. Then it stops the operator (failing if any of its
//! requests was refused for want of a permission) and the S3 server; the control plane and
//! the pods die with the process, and a helper left behind removes their directories once
//! they are gone. Run without `serve`, as `cargo test` runs it, it does nothing: it is a
//! program kept among the tests for their support code, not a test.

mod support;

use std::{fmt::Write as _, path::Path, process::Command};

use support::{
    controlplane::{ControlPlane, operator::Operator},
    node::node_dir,
    s3::S3Server,
};

/// The namespace of the walk-through's manifests.
const NAMESPACE: &str = "shop";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, state] = args.as_slice() else {
        return;
    };
    if command != "serve" {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(Path::new(state)));
}

async fn serve(state: &Path) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let plane = ControlPlane::shared().await;
    let s3 = S3Server::start_with("pgbackup", "pgbackup-secret-key", "pgbackup").await;
    let operator = Operator::start(plane, NAMESPACE, "demo").await;

    let mut text = String::new();
    let _ = writeln!(text, "KUBECONFIG='{}'", plane.admin_kubeconfig.display());
    let _ = writeln!(text, "S3_ENDPOINT='{}'", s3.endpoint());
    let _ = writeln!(
        text,
        "OPERATOR_LOG='{}'",
        plane.dir.join("operator-demo.log").display()
    );
    let dirs = [plane.dir.clone(), node_dir()];
    let _ = writeln!(
        text,
        "CLUSTER_DIRS='{} {}'",
        dirs[0].display(),
        dirs[1].display()
    );
    // Written whole, then renamed: a reader never sees half of it.
    let partial = state.with_extension("partial");
    std::fs::write(&partial, text).expect("state file");
    std::fs::rename(&partial, state).expect("state file");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    remove_after_exit(&dirs);
    drop(operator);
    drop(s3);
}

/// Removes `dirs` once this process and the processes that die with it (control plane,
/// pods) are gone, from a detached shell: they write there until the end.
fn remove_after_exit(dirs: &[std::path::PathBuf]) {
    let script = r#"pid="$1"; shift
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
for _ in 1 2 3 4 5 6 7 8 9 10; do rm -rf "$@" 2>/dev/null && exit 0; sleep 0.5; done
rm -rf "$@""#;
    let spawned = Command::new("setsid")
        .args(["/bin/sh", "-c", script, "remove-after-exit"])
        .arg(std::process::id().to_string())
        .args(dirs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("cannot start the clean-up of {dirs:?}: {e}");
    }
}
