//! Point-in-time restore end to end, against PostgreSQL and S3: a base backup, the WAL
//! archiver streaming, rows written at T1 and T2 and a table dropped at T3. Restores to a
//! moment between T1 and T2 (by time, LSN and restore point) bring back the T1 rows and not
//! the T2 rows; `--target-latest` brings back everything, drop included. A server restored
//! to timeline 2 and archived into the same repository can itself be restored to a point
//! on timeline 2. A transaction id of a later epoch, as `pg_current_xact_id()` returns
//! it, is a restore target.

mod support;

use std::time::Duration;

use support::{
    agent::{TestRepo, run_ok},
    postgres::PgServer,
    s3::S3Server,
    wal::{
        Archiver, pgbackup_as_cluster_user, restore_and_start, server_archiving_with_wal_push,
        switch_and_wait_archived, switch_wal, wait_for_archived, wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

#[test]
fn a_transaction_id_of_a_later_epoch_is_a_restore_target() {
    let (pg, repo) = server_archiving_with_wal_push();
    // A cluster whose transaction ids wrapped once: pg_current_xact_id() is 64 bits.
    pg.stop();
    let reset = pg.on_data_dir("pg_resetwal", &["-e", "1"]);
    assert!(
        reset.status.success(),
        "pg_resetwal: {}",
        String::from_utf8_lossy(&reset.stderr)
    );
    pg.start_again();
    pg.psql("postgres", "CREATE TABLE t (id int)");
    let summary = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("summary");
    let id = summary["backupId"].as_str().expect("id").to_string();
    let xid = pg.psql(
        "postgres",
        "INSERT INTO t VALUES (1) RETURNING pg_current_xact_id()",
    );
    let full: u64 = xid.parse().expect("a transaction id");
    assert!(full > 1 << 32, "{xid} carries epoch 1");
    pg.psql("postgres", "INSERT INTO t VALUES (2)");
    switch_and_wait_archived(&pg, &repo);

    let (restored, _) = restore(&pg, &repo, &["--backup", &id, "--target-xid", &xid]);
    assert_eq!(
        restored.psql("postgres", "SELECT array_agg(id ORDER BY id) FROM t"),
        "{1}",
        "the row of that transaction and not the one after"
    );
    let (restored, _) = restore(
        &pg,
        &repo,
        &[
            "--backup",
            &id,
            "--target-xid",
            &xid,
            "--target-inclusive",
            "false",
        ],
    );
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM t"),
        "0",
        "up to just before that transaction"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_put_back_exactly_the_chosen_moment() {
    let s3 = S3Server::start().await;
    tokio::task::block_in_place(|| classic(&s3));
}

fn restore(pg: &PgServer, repo: &TestRepo<'_>, target: &[&str]) -> (PgServer, String) {
    restore_and_start(pg, repo, pg.bin_dir(), target)
}

/// `T1 T2` row counts of `t` and the rows of `keep`; `t` may be gone.
fn state(pg: &PgServer) -> String {
    let keep = pg.psql("postgres", "SELECT count(*) FROM keep");
    if pg.psql("postgres", "SELECT to_regclass('t') IS NULL") == "t" {
        return format!("no t / keep {keep}");
    }
    let t = pg.psql(
        "postgres",
        "SELECT count(*) FILTER (WHERE phase = 'T1') || ' ' || count(*) FILTER (WHERE phase = 'T2') FROM t",
    );
    format!("{t} / keep {keep}")
}

fn classic(s3: &S3Server) {
    let pg = PgServer::start();
    let repo = TestRepo::S3(s3, "pitr".into());
    let storage = s3.storage_dir();
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int, phase text); CREATE TABLE keep (phase text)",
    );
    let archiver = Archiver::start(&pg, &repo, &["--partial-upload-seconds", "1"]);
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));

    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'T1' FROM generate_series(1, 1000) g",
    );
    pg.psql("postgres", "SELECT pg_create_restore_point('after_t1')");
    let lsn = pg.psql("postgres", "SELECT pg_current_wal_insert_lsn()");
    let between = pg.psql("postgres", NOW_UTC);
    std::thread::sleep(Duration::from_millis(50));
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'T2' FROM generate_series(1, 500) g; INSERT INTO keep VALUES ('T2')",
    );
    pg.psql("postgres", "DROP TABLE t");
    let last = switch_wal(&pg);
    wait_for_archived(
        &repo,
        Some(&storage),
        &last,
        &archiver,
        Duration::from_secs(30),
    );

    wait_for_window(&pg, &repo, &between, Duration::from_secs(30));
    let (by_time, summary) = restore(&pg, &repo, &["--target-time", &between]);
    assert_eq!(state(&by_time), "1000 0 / keep 0", "{summary}");
    assert!(summary.contains("timeline 2"), "{summary}");
    let (by_lsn, _) = restore(&pg, &repo, &["--target-lsn", &lsn]);
    assert_eq!(state(&by_lsn), "1000 0 / keep 0");
    drop(by_lsn);
    let (by_name, _) = restore(
        &pg,
        &repo,
        &["--target-name", "after_t1", "--backup", "latest"],
    );
    assert_eq!(state(&by_name), "1000 0 / keep 0");
    drop(by_name);
    let (latest, _) = restore(&pg, &repo, &["--target-latest"]);
    assert_eq!(state(&latest), "no t / keep 1");
    drop(latest);
    archiver.stop();

    // Timeline 2: the server restored by time goes on, archived into the same repository.
    let archiver = Archiver::start(&by_time, &repo, &["--partial-upload-seconds", "1"]);
    by_time.psql("postgres", "INSERT INTO keep VALUES ('R1')");
    let on_two = by_time.psql("postgres", NOW_UTC);
    std::thread::sleep(Duration::from_millis(50));
    by_time.psql("postgres", "INSERT INTO keep VALUES ('R2')");
    let last = switch_wal(&by_time);
    assert!(last.starts_with("00000002"), "{last}");
    wait_for_archived(
        &repo,
        Some(&storage),
        &last,
        &archiver,
        Duration::from_secs(30),
    );
    wait_for_window(&by_time, &repo, &on_two, Duration::from_secs(30));
    let (again, summary) = restore(&by_time, &repo, &["--target-time", &on_two]);
    assert_eq!(
        again.psql(
            "postgres",
            "SELECT string_agg(phase, ',' ORDER BY phase) FROM keep"
        ),
        "R1",
        "{summary}"
    );
    assert_eq!(state(&again), "1000 0 / keep 1");
    assert!(summary.contains("timeline 3"), "{summary}");
    archiver.stop();
}
