//! The `pgbackup` binary as a user runs it: help for every subcommand, `crd` output, and a
//! clear refusal from the operator and the trigger where no cluster can be reached.

use std::process::{Command, Output};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;

const SUBCOMMANDS: &[&str] = &[
    "operator",
    "crd",
    "backup",
    "wal-archive",
    "wal-push",
    "wal-fetch",
    "restore",
    "list",
    "verify",
    "prune",
    "trigger",
];

fn pgbackup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgbackup"))
        .args(args)
        .output()
        .expect("run pgbackup")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_lists_every_subcommand() {
    let out = pgbackup(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for sub in SUBCOMMANDS {
        assert!(
            help.contains(sub),
            "`pgbackup --help` does not mention {sub}:\n{help}"
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in SUBCOMMANDS {
        let out = pgbackup(&[sub, "--help"]);
        assert!(out.status.success(), "pgbackup {sub} --help failed");
        let help = stdout(&out);
        assert!(
            help.lines().next().is_some_and(|l| l.len() > 20),
            "pgbackup {sub} --help says too little:\n{help}"
        );
    }
}

#[test]
fn operator_and_trigger_without_a_cluster_fail_clearly() {
    let home = tempfile::tempdir().expect("tempdir");
    let cases: &[&[&str]] = &[
        &["operator", "--listen", "127.0.0.1:0"],
        &["trigger", "--schedule", "nightly", "--namespace", "shop"],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_pgbackup"))
            .args(*args)
            .env_clear()
            .env("HOME", home.path())
            .output()
            .expect("run pgbackup");
        assert_eq!(
            out.status.code(),
            Some(1),
            "pgbackup {args:?} must fail without a cluster"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot reach the Kubernetes API"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn agent_commands_explain_missing_options() {
    let out = pgbackup(&["backup"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--repository") && stderr.contains("--method"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_pgbackup"))
        .args(["list", "--repository", "ftp://somewhere"])
        .output()
        .expect("run pgbackup");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid repository URL \"ftp://somewhere\""),
        "{stderr}"
    );

    let out = pgbackup(&["prune", "--repository", "file:///nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no retention rule given"));
}

#[test]
fn crd_prints_all_four_crds() {
    let out = pgbackup(&["crd"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            CustomResourceDefinition::deserialize(doc)
                .expect("each document is a CRD")
                .spec
                .names
                .kind
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "PostgresBackup",
            "BackupSchedule",
            "VolumeSnapshotBackup",
            "PointInTimeRestore"
        ]
    );
}

#[test]
fn crd_output_dir_writes_one_file_per_kind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("nested/crds");
    let out = pgbackup(&["crd", "--output-dir", &target.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = std::fs::read_dir(&target)
        .expect("directory created")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "backupschedules.pgbackup.io.yaml",
            "pointintimerestores.pgbackup.io.yaml",
            "postgresbackups.pgbackup.io.yaml",
            "volumesnapshotbackups.pgbackup.io.yaml"
        ]
    );
}

#[test]
fn crd_output_dir_that_cannot_be_written_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let out = pgbackup(&["crd", "--output-dir", &file.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a-file"),
        "the error names the path: {stderr}"
    );
}

#[test]
fn wal_fetch_usage_errors_stop_recovery() {
    // restore_command: exit codes up to 125 mean "not found" to PostgreSQL, which would
    // end recovery early; a command that cannot run must exit above 125.
    let out = pgbackup(&["wal-fetch", "--no-such-option", "x", "y"]);
    assert_eq!(out.status.code(), Some(255));
    let out = pgbackup(&["wal-fetch", "000000010000000000000001", "RECOVERYXLOG"]);
    assert_eq!(out.status.code(), Some(255), "no repository given");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repository"));
}
