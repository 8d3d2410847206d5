//! A replicated database whose primary moves, as with Bitnami's `architecture:
//! replication` or Patroni: every pod is listed (`PGHOST`, comma-separated, as the
//! operator gives it) and the agent asks each what it is. Backups read from the role asked
//! for — the primary, or a standby when preferred — and say which in their summary; the
//! WAL archiver follows the primary across a promotion, so that a restore of the standby's
//! backup to the latest moment brings back the rows of the old primary and of the new one.
//! The standby listens on another loopback address at the same port, as the pods of a
//! StatefulSet do.

mod support;

use std::time::Duration;

use support::{
    agent::{error_lines, run_err, run_ok},
    postgres::PgServer,
    wal::{
        Archiver, fs_repo_for, pgbackup_as_cluster_user, restore_and_start, switch_wal,
        wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn summary(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("summary {text}: {e}"))
}

#[test]
fn backups_find_the_role_asked_for_and_the_archiver_follows_a_promotion() {
    let primary = PgServer::start();
    primary.psql(
        "postgres",
        "CREATE TABLE t (id int, era text); INSERT INTO t SELECT g, 'first' FROM generate_series(1, 100) g",
    );
    let standby = PgServer::streaming_standby(&primary, "127.0.0.2");
    // The standby first, as a chart that moved the primary to pod 1 would list them.
    let hosts = format!("{},{}", standby.address(), primary.address());
    let repo = fs_repo_for(&primary);
    let listed = |role: &str, args: &[&str]| {
        let mut command = pgbackup_as_cluster_user(&primary, &repo, args);
        command
            .env("PGHOST", &hosts)
            .env("PGBACKUP_SERVER_ROLE", role);
        command
    };

    let archiver = Archiver::start(
        &primary,
        &repo,
        &["--pg-host", &hosts, "--pg-server-role", "primary"],
    );
    assert!(
        archiver.log().contains("using 127.0.0.1 (primary)"),
        "{}",
        archiver.log()
    );

    let physical = summary(&run_ok(listed(
        "prefer-standby",
        &["backup", "--method", "physical"],
    )));
    assert_eq!(physical["source"], "127.0.0.2 (standby)", "{physical}");
    let logical = summary(&run_ok(listed(
        "primary",
        &["backup", "--method", "logical"],
    )));
    assert_eq!(logical["source"], "127.0.0.1 (primary)", "{logical}");

    // Only the primary listed: a standby cannot be found, and nothing is stored.
    let mut alone = pgbackup_as_cluster_user(&primary, &repo, &["backup", "--method", "logical"]);
    alone.env("PGBACKUP_SERVER_ROLE", "standby");
    let err = run_err(alone);
    assert!(
        error_lines(&err)
            .iter()
            .any(|l| l.contains("no standby to connect to") && l.contains("127.0.0.1: primary")),
        "{err}"
    );

    primary.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'second' FROM generate_series(101, 200) g",
    );
    switch_wal(&primary);
    // The primary goes away cleanly (all its WAL reached the standby) and the standby
    // takes over on a new timeline.
    primary.stop();
    standby.promote();
    standby.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'promoted' FROM generate_series(201, 300) g",
    );
    let written = standby.psql("postgres", NOW_UTC);
    switch_wal(&standby);
    wait_for_window(&standby, &repo, &written, Duration::from_secs(90));
    let log = archiver.stop();
    assert!(log.contains("using 127.0.0.2 (primary)"), "{log}");

    let id = physical["backupId"].as_str().expect("backup id");
    let (restored, _) = restore_and_start(
        &standby,
        &repo,
        standby.bin_dir(),
        &["--backup", id, "--target-latest"],
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(era || ':' || n, ',' ORDER BY era) FROM (SELECT era, count(*) n FROM t GROUP BY era) e"
        ),
        "first:100,promoted:100,second:100",
        "the standby's backup replayed across the promotion, with no row lost"
    );
}
