//! The README's try-it command, `bash e2e/demo.sh`: it restores the rows from before the
//! mistake, leaves out what was written after it, and cleans up after itself.

use std::{path::Path, process::Command};

#[test]
fn the_local_demo_brings_back_the_rows_from_before_the_mistake() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/demo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PGBACKUP_BIN", env!("CARGO_BIN_EXE_pgbackup"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("came back: orders tea, coffee, cake, scones, jam"),
        "{stdout}"
    );
    assert!(stdout.contains("(the restored copy has 0)"), "{stdout}");
    let work = stdout
        .split("file://")
        .nth(1)
        .and_then(|rest| rest.split("/repository").next())
        .expect("the demo names its repository");
    assert!(!Path::new(work).exists(), "{work} was left behind");
}
