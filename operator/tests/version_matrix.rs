//! The WAL archiver and point-in-time restore on every supported major version, 13–18
//! (`.ci/fetch-postgres` fetches them, with client tools of the server's version or newer
//! for each): archiver, base backup, restore to a moment between two writes with
//! `--recover`. On 17 and 18 the archiver's server-side set-up is also checked with older
//! (15) client tools: its identification, its replication slot and the archive identity it
//! writes. A version missing here fails the
//! tests, unless `PGBACKUP_TEST_PG_VERSIONS` says which versions the run covers.

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use support::{
    agent::run_ok,
    postgres::{PgConfig, PgServer, covered_version, version_matrix, versions_covered},
    wal::{
        Archiver, fs_repo_for, http_get, pgbackup_as_cluster_user, restore_and_start,
        scratch_dir_for, switch_wal, wait_for_archived, wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn matrix() -> Vec<(u32, PathBuf, Option<PathBuf>)> {
    version_matrix()
}

#[test]
fn every_covered_major_version_is_in_the_matrix() {
    let majors: Vec<u32> = matrix().iter().map(|(m, _, _)| *m).collect();
    for major in versions_covered() {
        assert!(
            majors.contains(&major),
            "PostgreSQL {major} is covered but not in the matrix {majors:?}"
        );
    }
}

#[test]
fn archive_and_restore_to_a_moment_on_13_to_18() {
    for major in 13..=18 {
        if let Some((server, client)) = covered_version(major, true) {
            let client = client.expect("client tools");
            restore_to_a_moment(major, &server, &client);
        }
    }
}

#[test]
fn the_archiver_identifies_and_holds_wal_on_17_and_18() {
    let (_, tools) = covered_version(15, true).expect("PostgreSQL 15 (the Debian package)");
    let tools = tools.expect("client tools");
    for major in [17, 18] {
        if let Some((server, _)) = covered_version(major, false) {
            archiver_setup(major, &server, &tools);
        }
    }
}

fn start(server: &Path) -> PgServer {
    PgServer::start_with(PgConfig {
        bin_dir: Some(server.to_path_buf()),
        ..PgConfig::default()
    })
}

fn restore_to_a_moment(major: u32, server: &Path, client: &Path) {
    let pg = start(server);
    assert!(
        pg.psql("postgres", "SHOW server_version")
            .starts_with(&major.to_string()),
        "PostgreSQL {major} expected"
    );
    let repo = fs_repo_for(&pg);
    let client_text = client.to_string_lossy().into_owned();
    pg.psql("postgres", "CREATE TABLE t (phase text)");
    let archiver = Archiver::start(
        &pg,
        &repo,
        &["--partial-upload-seconds", "1", "--pg-bin", &client_text],
    );
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical", "--pg-bin", &client_text],
    ));
    pg.psql("postgres", "INSERT INTO t VALUES ('before')");
    let between = pg.psql("postgres", NOW_UTC);
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("postgres", "INSERT INTO t VALUES ('after')");
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(30));
    wait_for_window(&pg, &repo, &between, Duration::from_secs(30));
    archiver.stop();

    let (restored, summary) = restore_and_start(&pg, &repo, server, &["--target-time", &between]);
    assert_eq!(
        restored.psql("postgres", "SELECT string_agg(phase, ',') FROM t"),
        "before",
        "PostgreSQL {major}: {summary}"
    );
    assert!(
        summary.contains("reached LSN") && summary.contains("timeline 2"),
        "PostgreSQL {major}: {summary}"
    );
}

fn archiver_setup(major: u32, server: &Path, tools: &Path) {
    let pg = start(server);
    let repo = fs_repo_for(&pg);
    // The client tools here are older than the server: pg_receivewal refuses to stream,
    // but everything before streaming runs against the server.
    let tools = tools.to_string_lossy().into_owned();
    let archiver = Archiver::start_unready(
        &pg,
        &repo,
        &["--partial-upload-seconds", "1", "--pg-bin", &tools],
    );
    let identity_file = repo
        .dir()
        .expect("dir")
        .join("test-pg")
        .join("wal")
        .join("archive.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !identity_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL {major}: no archive identity written:\n{}",
            archiver.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&identity_file).expect("read")).expect("json");
    assert_eq!(identity["serverMajor"], major, "{identity}");
    assert_eq!(
        identity["systemIdentifier"].as_str(),
        Some(
            pg.psql(
                "postgres",
                "SELECT system_identifier FROM pg_control_system()"
            )
            .as_str()
        )
    );
    let slot = pg.psql(
        "postgres",
        "SELECT slot_type || ' ' || (restart_lsn IS NOT NULL) || ' ' || wal_status FROM pg_replication_slots WHERE slot_name = 'pgbackup_archiver'",
    );
    assert_eq!(slot, "physical true reserved", "PostgreSQL {major}");
    let (status, _) = http_get(archiver.port, "/healthz").expect("healthz");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn row_counts_for_the_restore_test_on_13_to_18() {
    for major in 13..=18 {
        let Some((server, _)) = covered_version(major, false) else {
            continue;
        };
        let pg = tokio::task::block_in_place(|| start(&server));
        let client = pg.connect("postgres").await;
        client
            .batch_execute(
                "CREATE SCHEMA \"Sales\"; CREATE TABLE \"Sales\".\"Order\" (id int); \
                 INSERT INTO \"Sales\".\"Order\" SELECT generate_series(1, 25); \
                 CREATE TABLE empty (x int); CREATE UNLOGGED TABLE scratch (x int); \
                 CREATE TABLE parent (x int) PARTITION BY RANGE (x); \
                 CREATE TABLE child PARTITION OF parent FOR VALUES FROM (0) TO (100); \
                 INSERT INTO parent SELECT generate_series(0, 9)",
            )
            .await
            .expect("tables");
        let counted = pgbackup::postgres::count_rows(&client, "postgres")
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        let found: Vec<(String, u64)> = counted.iter().map(|t| (t.table.clone(), t.rows)).collect();
        assert_eq!(
            found,
            [
                ("\"Sales\".\"Order\"".to_string(), 25),
                ("public.child".to_string(), 10),
                ("public.empty".to_string(), 0),
            ],
            "PostgreSQL {major}: permanent ordinary tables only, names quoted"
        );
        let counters = pgbackup::postgres::write_counters(&client)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        assert!(
            counters.contains_key("\"Sales\".\"Order\""),
            "PostgreSQL {major}: {counters:?}"
        );
    }
}

#[test]
fn restore_tests_of_physical_and_logical_backups_on_16() {
    let Some((server, tools)) = covered_version(16, true) else {
        return;
    };
    let tools = tools.expect("the PostgreSQL 16 tool set");
    let pg = start(&server);
    let repo = fs_repo_for(&pg);
    let bin = tools.to_string_lossy().into_owned();
    pg.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 500)",
    );
    for method in ["physical", "logical"] {
        let summary = run_ok(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &["backup", "--method", method, "--pg-bin", &bin],
        ));
        let id = serde_json::from_str::<serde_json::Value>(&summary).expect("summary")["backupId"]
            .as_str()
            .expect("id")
            .to_string();
        let scratch = scratch_dir_for(&pg);
        let scratch_arg = scratch.path().to_string_lossy().into_owned();
        let test: serde_json::Value = serde_json::from_str(&run_ok(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &[
                "verify",
                "--restore",
                "--json",
                "--backup",
                &id,
                "--pg-bin",
                &bin,
                "--scratch-dir",
                &scratch_arg,
            ],
        )))
        .expect("report");
        assert_eq!(test["verified"], true, "PostgreSQL 16 {method}: {test}");
        assert_eq!(test["rows"], 500, "PostgreSQL 16 {method}: {test}");
    }
}
