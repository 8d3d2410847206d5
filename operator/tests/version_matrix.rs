//! Every agent path on every supported major version, 13–18 (`.ci/fetch-postgres` fetches
//! them, with client tools of the server's version or newer for each; 17's beside its own
//! server, pg_combinebackup and pg_verifybackup, as its agent image has them): the WAL
//! archiver, a base backup and a restore to a moment between two writes with `--recover`
//! on each; on 17 and 18 `wal-push` as archive_command and a restore through `wal-fetch`
//! to every kind of target; `verify` and `verify --restore` of physical and logical
//! backups on 16–18; 18's idle slot invalidation named with its setting; and on 17 and 18
//! the archiver's server-side set-up with older (15) client tools: its identification,
//! its replication slot and the archive identity it writes. A version missing here fails
//! the tests, unless `PGBACKUP_TEST_PG_VERSIONS` says which versions the run covers.

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use support::{
    agent::{run_err, run_ok},
    postgres::{PgConfig, PgServer, covered_version, version_matrix, versions_covered},
    wal::{
        Archiver, fs_repo_for, http_get, pgbackup_as_cluster_user, restore_and_start,
        scratch_dir_for, server_archiving_with_wal_push_on, switch_and_wait_archived, switch_wal,
        wait_for_archived, wait_for_window,
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

#[test]
fn wal_push_wal_fetch_and_every_restore_target_on_17_and_18() {
    for major in [17, 18] {
        if let Some((server, client)) = covered_version(major, true) {
            every_target(major, &server, &client.expect("client tools"));
        }
    }
}

/// `archive_command` = `wal-push`, a base backup, and a restore (through `wal-fetch`) to
/// each kind of target, rows compared.
fn every_target(major: u32, server: &Path, client: &Path) {
    let (pg, repo) = server_archiving_with_wal_push_on(Some(server));
    let client_text = client.to_string_lossy().into_owned();
    pg.psql("postgres", "CREATE TABLE t (phase text)");
    let summary = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical", "--pg-bin", &client_text],
    ));
    let backup: serde_json::Value = serde_json::from_str(&summary).expect("summary");
    let id = backup["backupId"].as_str().expect("id").to_string();
    pg.psql("postgres", "INSERT INTO t VALUES ('a')");
    let after_a = pg.psql("postgres", "SELECT pg_current_wal_insert_lsn()");
    let xid_b = pg.psql(
        "postgres",
        "INSERT INTO t VALUES ('b') RETURNING pg_current_xact_id()",
    );
    pg.psql("postgres", "SELECT pg_create_restore_point('after_b')");
    let before_c = pg.psql("postgres", NOW_UTC);
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("postgres", "INSERT INTO t VALUES ('c')");
    // wal-push takes a segment to hold every commit until a second before its last write.
    std::thread::sleep(Duration::from_millis(1100));
    switch_and_wait_archived(&pg, &repo);

    let cases: [(&[&str], &str); 6] = [
        (&["--target-immediate"], ""),
        (&["--target-lsn", &after_a], "a"),
        (&["--backup", &id, "--target-xid", &xid_b], "a,b"),
        (&["--backup", &id, "--target-name", "after_b"], "a,b"),
        (&["--target-time", &before_c], "a,b"),
        (&["--target-latest"], "a,b,c"),
    ];
    for (target, rows) in cases {
        // Copies to look at: they must not archive a timeline of their own into the
        // original's repository.
        let args = [target, &["--archive-off"]].concat();
        let (restored, summary) = restore_and_start(&pg, &repo, server, &args);
        assert_eq!(
            restored.psql(
                "postgres",
                "SELECT coalesce(string_agg(phase, ',' ORDER BY phase), '') FROM t"
            ),
            rows,
            "PostgreSQL {major}, {target:?}: {summary}"
        );
    }
}

#[test]
fn an_archiver_slot_invalidated_as_idle_on_18_is_named_with_the_setting() {
    let Some((server, client)) = covered_version(18, true) else {
        return;
    };
    let client = client.expect("client tools").to_string_lossy().into_owned();
    let pg = start(&server);
    let repo = fs_repo_for(&pg);
    let archiver = Archiver::start(&pg, &repo, &["--pg-bin", &client]);
    archiver.stop();
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET idle_replication_slot_timeout = '1s'",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(2500));
    pg.psql("postgres", "CHECKPOINT");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'pgbackup_archiver'"
        ),
        "idle_timeout"
    );
    // Started again, the archiver stops at once and says why and what to do.
    let spool = scratch_dir_for(&pg);
    let spool_arg = spool.path().to_string_lossy().into_owned();
    let stderr = run_err(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "wal-archive",
            "--listen",
            "127.0.0.1:0",
            "--spool-dir",
            &spool_arg,
            "--pg-bin",
            &client,
        ],
    ));
    assert!(
        stderr.contains("(idle_timeout): it went unused longer than idle_replication_slot_timeout")
            && stderr.contains("take a new base backup"),
        "{stderr}"
    );
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
fn restore_tests_of_physical_and_logical_backups_on_16_to_18() {
    for major in 16..=18 {
        if let Some((server, tools)) = covered_version(major, true) {
            restore_tests(major, &server, &tools.expect("client tools"));
        }
    }
}

/// `verify --restore` of a physical and a logical backup, with the tools of the major's
/// agent image (its client tools, its server).
fn restore_tests(major: u32, server: &Path, tools: &Path) {
    let pg = start(server);
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
        assert_eq!(
            test["verified"], true,
            "PostgreSQL {major} {method}: {test}"
        );
        assert_eq!(test["rows"], 500, "PostgreSQL {major} {method}: {test}");
    }
    // Every object read back and checked (pg_verifybackup, pg_restore --list).
    let verified = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["verify", "--pg-bin", &bin],
    ));
    assert_eq!(
        verified.matches(": ok").count(),
        2,
        "PostgreSQL {major}: {verified}"
    );
}
