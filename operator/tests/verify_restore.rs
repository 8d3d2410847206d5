//! `pgbackup verify --restore`: a backup is restored into a scratch PostgreSQL the agent
//! starts itself, and the rows of every table are compared with the counts recorded when
//! the backup was taken. A backup whose data or counts are not right fails the test.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use support::{
    agent::{TestRepo, find_file, run, run_ok},
    postgres::PgServer,
    wal::{fs_repo_for, pgbackup_as_cluster_user, scratch_dir_for},
};

fn seed(pg: &PgServer) {
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE SCHEMA sales; \
         CREATE TABLE sales.\"Order\" (id int); INSERT INTO sales.\"Order\" SELECT generate_series(1, 1234); \
         CREATE TABLE items (name text); INSERT INTO items VALUES ('tea'), ('cake'); \
         CREATE TABLE empty (x int); \
         CREATE UNLOGGED TABLE scratchpad (x int); INSERT INTO scratchpad VALUES (1)",
    );
    pg.psql(
        "postgres",
        "CREATE TABLE notes (body text); INSERT INTO notes SELECT 'n' || g FROM generate_series(1, 77) g",
    );
}

fn verify_restore(pg: &PgServer, repo: &TestRepo<'_>, backup: &str) -> std::process::Output {
    let scratch = scratch_dir_for(pg);
    let scratch_arg = scratch.path().to_string_lossy().into_owned();
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();
    let out = run(pgbackup_as_cluster_user(
        pg,
        repo,
        &[
            "verify",
            "--restore",
            "--json",
            "--backup",
            backup,
            "--scratch-dir",
            &scratch_arg,
            "--pg-bin",
            &pg_bin,
        ],
    ));
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("scratch")
        .flatten()
        .collect();
    assert!(left.is_empty(), "the scratch server is removed: {left:?}");
    out
}

fn report(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "verify --restore failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one line of JSON")
}

fn backup(pg: &PgServer, repo: &TestRepo<'_>, method: &str) -> String {
    backup_with(pg, repo, &["--method", method])
}

fn backup_with(pg: &PgServer, repo: &TestRepo<'_>, options: &[&str]) -> String {
    let mut args = vec!["backup"];
    args.extend(options);
    let summary = run_ok(pgbackup_as_cluster_user(pg, repo, &args));
    let summary: Value = serde_json::from_str(&summary).expect("summary");
    summary["backupId"].as_str().expect("id").to_string()
}

#[test]
fn a_physical_backup_restores_recovers_and_has_every_row() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let id = backup(&pg, &repo, "physical");
    // Rows written after the backup are not part of it.
    pg.psql("postgres", "INSERT INTO notes VALUES ('later')");

    let test = report(&verify_restore(&pg, &repo, &id));
    assert_eq!(test["verified"], true, "{test}");
    assert_eq!(test["kind"], "physical");
    assert!(test["reachedLsn"].is_string(), "{test}");
    assert_eq!(test["countsRecorded"], true);
    // notes, sales."Order", items, empty; the unlogged table is not counted.
    assert_eq!(test["tables"], 4, "{test}");
    assert_eq!(test["matched"], 4, "{test}");
    assert_eq!(test["rows"], 77 + 1234 + 2, "{test}");
    assert_eq!(test["databases"], 2, "{test}");
}

#[test]
fn a_logical_backup_restores_into_a_fresh_cluster() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let id = backup(&pg, &repo, "logical");
    let test = report(&verify_restore(&pg, &repo, &id));
    assert_eq!(test["verified"], true, "{test}");
    assert_eq!(test["kind"], "logical");
    assert_eq!(test["tables"], 4, "{test}");
    assert_eq!(test["matched"], 4, "{test}");
    assert_eq!(test["rows"], 77 + 1234 + 2, "{test}");
}

#[test]
fn a_parallel_logical_backup_restores_into_a_fresh_cluster() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let options = [
        "--method",
        "logical",
        "--format",
        "directory",
        "--jobs",
        "2",
    ];
    let id = backup_with(&pg, &repo, &options);
    let test = report(&verify_restore(&pg, &repo, &id));
    assert_eq!(test["verified"], true, "{test}");
    assert_eq!(test["matched"], 4, "{test}");
    assert_eq!(test["rows"], 77 + 1234 + 2, "{test}");
}

#[test]
fn rows_that_do_not_come_back_fail_the_test() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let id = backup(&pg, &repo, "logical");
    // The manifest says one more row than the dump holds: what a lost row would look like.
    let dir = repo.dir().expect("fs repository");
    let manifest_path = find_file(dir, &format!("{id}/manifest.json"));
    let text = std::fs::read_to_string(&manifest_path).expect("manifest");
    let mut manifest: Value = serde_json::from_str(&text).expect("json");
    let counts = manifest["rowCounts"].as_array_mut().expect("row counts");
    let items = counts
        .iter_mut()
        .find(|t| t["table"] == "public.items")
        .expect("items counted");
    items["rows"] = 3.into();
    std::fs::write(&manifest_path, manifest.to_string()).expect("write");

    let out = verify_restore(&pg, &repo, &id);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shop/public.items: 3 rows recorded, 2 restored"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_backup_fails_before_a_server_starts() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let id = backup(&pg, &repo, "physical");
    let data = find_file(repo.dir().expect("dir"), "data.tar.zst");
    let mut bytes = std::fs::read(&data).expect("data");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&data, bytes).expect("corrupt");
    let out = verify_restore(&pg, &repo, &id);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data.tar.zst"), "{stderr}");
}

#[test]
fn tables_written_during_a_physical_backup_are_reported_not_failed() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    seed(&pg);
    let init = pg.tool("pgbench", &["-i", "-q", "-s", "2", "postgres"]);
    assert!(init.status.success());
    pg.psql("postgres", "CREATE TABLE ticks (at timestamptz)");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let env = pg.libpq_env();
        let psql = pg.program("psql");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::process::Command::new(&psql)
                    .envs(env.clone())
                    .args(["-X", "-q", "-d", "postgres", "-c"])
                    .arg("INSERT INTO ticks SELECT now() FROM generate_series(1, 50)")
                    .output();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let id = backup(&pg, &repo, "physical");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    let test = report(&verify_restore(&pg, &repo, &id));
    assert_eq!(test["verified"], true, "{test}");
    // Counted: sales."Order", items, empty in shop; notes, the four pgbench tables and
    // ticks in postgres (not the unlogged scratchpad).
    assert_eq!(test["tables"], 9, "{test}");
    assert!(
        test.get("mismatched").is_none(),
        "nothing differs without a reason: {test}"
    );
    // The quiet tables match exactly. ticks took writes until after the backup's end, so
    // its count after the backup may differ from what the backup holds: then it is
    // reported as written during the backup, with both counts, and the test still passes.
    let changed: Vec<(String, String, u64, u64)> = test["changedDuringBackup"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["database"].as_str().expect("database").to_string(),
                d["table"].as_str().expect("table").to_string(),
                d["recorded"].as_u64().expect("recorded"),
                d["found"].as_u64().expect("found"),
            )
        })
        .collect();
    assert!(
        changed
            .iter()
            .all(|(db, table, recorded, found)| db == "postgres"
                && table == "public.ticks"
                && recorded != found),
        "only ticks was written during the backup: {test}"
    );
    assert_eq!(test["changedCount"], changed.len(), "{test}");
    assert_eq!(
        test["matched"].as_u64(),
        Some(9 - changed.len() as u64),
        "{test}"
    );
}

#[test]
fn a_logical_backup_without_its_roles_still_restore_tests() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    pg.psql("postgres", "CREATE ROLE shop_owner LOGIN");
    pg.psql("postgres", "CREATE DATABASE shop OWNER shop_owner");
    pg.psql(
        "shop",
        "CREATE TABLE items (name text); ALTER TABLE items OWNER TO shop_owner; \
         GRANT SELECT ON items TO PUBLIC; INSERT INTO items VALUES ('tea'), ('cake')",
    );
    let summary = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "backup",
            "--method",
            "logical",
            "--database",
            "shop",
            "--no-globals",
        ],
    ));
    let summary: Value = serde_json::from_str(&summary).expect("summary");
    let id = summary["backupId"].as_str().expect("id");
    let test = report(&verify_restore(&pg, &repo, id));
    assert_eq!(test["verified"], true, "{test}");
    assert_eq!(test["rows"], 2, "{test}");
}
