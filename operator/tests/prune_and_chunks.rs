//! `prune` removes exactly what the policy drops (and only with `--delete`), and a stream
//! longer than the largest object continues in numbered chunks that restore as one.

mod support;

use support::{
    agent::{TestRepo, pgbackup, run_err, run_ok},
    postgres::PgServer,
};

fn backup_ids(pg: &PgServer, repo: &TestRepo<'_>) -> Vec<String> {
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(pgbackup(pg, repo, &["list", "--json"])))
            .expect("JSON listing");
    listed["backups"]
        .as_array()
        .expect("array")
        .iter()
        .map(|b| b["backupId"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn prune_keeps_what_the_policy_says() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = run_ok(pgbackup(
            &pg,
            &repo,
            &["backup", "--method", "logical", "--database", "postgres"],
        ));
        let summary: serde_json::Value = serde_json::from_str(&out).expect("summary");
        ids.push(summary["backupId"].as_str().expect("id").to_string());
    }
    ids.sort();
    assert_eq!(
        backup_ids(&pg, &repo),
        ids,
        "three distinct, sortable backup ids"
    );

    let plan = run_ok(pgbackup(&pg, &repo, &["prune", "--keep-last", "1"]));
    assert!(
        plan.contains("dry run: 2 backups and 0 WAL files would be deleted"),
        "{plan}"
    );
    assert_eq!(backup_ids(&pg, &repo), ids, "a dry run deletes nothing");

    // Rules that keep nothing are refused, and nothing goes, unless the user says so.
    for nothing in [
        &["prune", "--keep-last", "0", "--delete"][..],
        &["prune", "--max-age", "0s", "--keep-daily", "0", "--delete"],
    ] {
        let err = run_err(pgbackup(&pg, &repo, nothing));
        assert!(err.contains("--keep-none"), "{err}");
        assert_eq!(backup_ids(&pg, &repo), ids, "{nothing:?} deleted backups");
    }
    let plan = run_ok(pgbackup(&pg, &repo, &["prune", "--keep-none"]));
    assert!(
        plan.contains("dry run: 3 backups and 0 WAL files would be deleted"),
        "{plan}"
    );

    let done = run_ok(pgbackup(
        &pg,
        &repo,
        &["prune", "--keep-last", "1", "--delete"],
    ));
    assert!(
        done.contains(&format!("delete logical {}", ids[0]))
            && done.contains(&format!("keep   logical {}", ids[2])),
        "{done}"
    );
    assert_eq!(
        backup_ids(&pg, &repo),
        [ids[2].clone()],
        "only the newest is left"
    );
    run_ok(pgbackup(&pg, &repo, &["verify"]));

    // What deleting a backup object with `deletionPolicy: Delete` runs: exactly that backup
    // goes, and asking again (a retried cleanup Job) is not an error.
    let one = ["prune", "--backup-id", ids[2].as_str(), "--delete"];
    let done = run_ok(pgbackup(&pg, &repo, &one));
    assert!(
        done.contains(&format!("delete logical {}", ids[2])),
        "{done}"
    );
    assert!(backup_ids(&pg, &repo).is_empty());
    let again = run_ok(pgbackup(&pg, &repo, &one));
    assert!(again.contains(&format!("absent {}", ids[2])), "{again}");
}

#[test]
fn a_backup_leaves_its_report_and_a_failure_its_reason_in_the_result_file() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let dir = tempfile::tempdir().expect("tempdir");
    let result = dir.path().join("termination-log");
    let result_arg = result.to_str().expect("utf-8");
    run_ok(pgbackup(
        &pg,
        &repo,
        &["--result-file", result_arg, "backup", "--method", "logical"],
    ));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).expect("result file"))
            .expect("one JSON report");
    assert_eq!(report["backupId"], backup_ids(&pg, &repo)[0].as_str());
    assert!(report["storedSize"].as_u64().expect("storedSize") > 0);
    assert!(
        report["databases"]
            .as_array()
            .expect("databases")
            .iter()
            .any(|d| d == "postgres")
    );

    let failed = pgbackup(
        &pg,
        &repo,
        &[
            "--result-file",
            result_arg,
            "backup",
            "--method",
            "logical",
            "--database",
            "no_such_db",
        ],
    )
    .output()
    .expect("run");
    assert!(!failed.status.success());
    let reason = std::fs::read_to_string(&result).expect("result file");
    assert!(reason.contains("no_such_db"), "{reason}");
}

#[test]
fn long_streams_continue_in_numbered_chunks() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE big");
    pg.psql("big", "CREATE TABLE noise AS SELECT g AS id, md5(random()::text) AS v FROM generate_series(1, 100000) g");
    let before = pg.psql(
        "big",
        "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM noise",
    );
    let repo = TestRepo::fs();
    let out = run_ok(pgbackup(
        &pg,
        &repo,
        &[
            "backup",
            "--method",
            "logical",
            "--database",
            "big",
            "--max-object-mib",
            "1",
        ],
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).expect("summary");
    let chunks = summary["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["database"] == "big")
        .expect("dump of big")["chunks"]
        .as_array()
        .expect("chunks")
        .len();
    assert!(
        chunks >= 2,
        "a dump over 1 MiB stored in several chunks, got {chunks}"
    );
    run_ok(pgbackup(&pg, &repo, &["verify"]));
    pg.psql("postgres", "DROP DATABASE big");
    run_ok(pgbackup(
        &pg,
        &repo,
        &["restore", "--logical", "--database", "big", "--no-globals"],
    ));
    assert_eq!(
        pg.psql(
            "big",
            "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM noise"
        ),
        before
    );
}
