//! Point-in-time restore end to end, against PostgreSQL and S3: a base backup, the WAL
//! archiver streaming, rows written at T1 and T2 and a table dropped at T3. Restores to a
//! moment between T1 and T2 (by time, LSN and restore point) bring back the T1 rows and not
//! the T2 rows; `--target-latest` brings back everything, drop included. A server restored
//! to timeline 2 and archived into the same repository can itself be restored to a point
//! on timeline 2.

mod support;

use std::time::Duration;

use support::{
    agent::{TestRepo, run_ok},
    postgres::PgServer,
    s3::S3Server,
    wal::{
        Archiver, pgbackup_as_cluster_user, restore_and_start, switch_wal, wait_for_archived,
        wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

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
