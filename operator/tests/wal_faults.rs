//! WAL archiving under faults and bad input: targets outside the window and a missing
//! segment stop a restore before it writes anything; an archiver killed mid-stream (with
//! or without its spool) and a database restart leave a complete archive; a committed row
//! is recoverable within 10 s without a segment switch.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use support::{
    agent::{TestRepo, error_lines, find_file_starting, run_err, run_ok},
    postgres::PgServer,
    wal::{
        Archiver, archived_wal, fs_repo_for, http_get, pgbackup_as_cluster_user, restore_and_start,
        scratch_dir_for, switch_wal, wait_for_archived, wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn restore_latest(pg: &PgServer, repo: &TestRepo<'_>) -> PgServer {
    restore_and_start(pg, repo, pg.bin_dir(), &["--target-latest"]).0
}

/// Writes `rows` rows into `t` in transactions of 1,000, switching WAL segments on the way.
fn write_rows(pg: &PgServer, from: u32, rows: u32) {
    for start in (from..from + rows).step_by(1000) {
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({start}, {}) g",
                start + 999
            ),
        );
    }
}

/// A cluster with a table `t`, its WAL archiver (storing the segment being written every
/// `partial_seconds`), and a physical base backup.
fn archived_cluster(partial_seconds: &str) -> (PgServer, TestRepo<'static>, Archiver) {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    pg.psql("postgres", "CREATE TABLE t (id int, pad text)");
    let archiver = Archiver::start(&pg, &repo, &["--partial-upload-seconds", partial_seconds]);
    physical_backup(&pg, &repo);
    (pg, repo, archiver)
}

/// Takes a physical backup; returns its summary.
fn physical_backup(pg: &PgServer, repo: &TestRepo<'_>) -> serde_json::Value {
    let summary = run_ok(pgbackup_as_cluster_user(
        pg,
        repo,
        &["backup", "--method", "physical"],
    ));
    serde_json::from_str(&summary).expect("backup summary")
}

fn the_error(stderr: &str) -> String {
    let lines = error_lines(stderr);
    assert_eq!(lines.len(), 1, "one error line in:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn targets_outside_the_window_and_missing_segments_write_nothing() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    pg.psql("postgres", "CREATE TABLE t (id int, pad text)");
    let before_backup = pg.psql("postgres", NOW_UTC);
    let archiver = Archiver::start(&pg, &repo, &["--partial-upload-seconds", "0"]);
    physical_backup(&pg, &repo);
    let mut segments = Vec::new();
    for round in 0..4 {
        write_rows(&pg, round * 1000, 1000);
        segments.push(switch_wal(&pg));
    }
    let inside = pg.psql("postgres", NOW_UTC);
    write_rows(&pg, 10_000, 1000);
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(30));
    wait_for_window(&pg, &repo, &inside, Duration::from_secs(30));
    archiver.stop();

    let scratch = scratch_dir_for(&pg);
    let pgdata = scratch.path().join("data");
    let pgdata_text = pgdata.to_string_lossy().into_owned();
    let attempt = |target: &[&str]| {
        let mut args = vec!["restore", "--pgdata", &pgdata_text];
        args.extend_from_slice(target);
        let err = the_error(&run_err(pgbackup_as_cluster_user(&pg, &repo, &args)));
        assert!(!pgdata.exists(), "{} was written", pgdata.display());
        err
    };
    // A dry run plans and checks, and writes nothing.
    let planned = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            &pgdata_text,
            "--target-time",
            &inside,
            "--dry-run",
        ],
    ));
    let plan: serde_json::Value = serde_json::from_str(&planned).expect("JSON plan");
    assert_eq!(plan["walThrough"], last.as_str(), "{planned}");
    assert_eq!(plan["timeline"], 1);
    assert!(!pgdata.exists());
    let err = attempt(&["--target-time", &before_backup]);
    assert!(
        err.contains("is outside what can be restored: the recoverability window of timeline 1 is"),
        "{err}"
    );
    let err = attempt(&["--target-time", "2099-01-01T00:00:00Z"]);
    assert!(
        err.contains("the recoverability window of timeline 1 is"),
        "{err}"
    );
    let err = attempt(&["--target-lsn", "FF/0"]);
    assert!(err.contains("outside what can be restored"), "{err}");

    // A segment between the backup and the target goes missing.
    let missing = &segments[1];
    let object = find_file_starting(repo.dir().expect("dir"), &format!("{missing}.")).to_path_buf();
    std::fs::remove_file(&object).expect("remove segment");
    let err = attempt(&["--target-time", &inside]);
    assert!(
        err.contains(&format!(
            "WAL segment {missing} is missing from the archive"
        )),
        "{err}"
    );
    let err = attempt(&["--target-latest"]);
    assert!(err.contains(missing.as_str()), "{err}");
}

#[test]
fn a_killed_archiver_and_a_restarted_database_leave_a_complete_archive() {
    let (pg, repo, archiver) = archived_cluster("1");

    // Killed while WAL streams in and is stored; restarted on the same spool.
    write_rows(&pg, 0, 20_000);
    let spool = archiver.kill();
    write_rows(&pg, 20_000, 10_000);
    let archiver = Archiver::start_in(&pg, &repo, &["--partial-upload-seconds", "1"], spool);
    write_rows(&pg, 30_000, 10_000);
    // Killed again and the spool lost (a new pod): the slot kept the WAL on the server.
    drop(archiver.kill());
    write_rows(&pg, 40_000, 10_000);
    let archiver = Archiver::start(
        &pg,
        &repo,
        &[
            "--partial-upload-seconds",
            "1",
            "--window-interval-seconds",
            "1",
        ],
    );

    // The database restarts under the archiver.
    pg.restart();
    write_rows(&pg, 50_000, 10_000);
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(60));
    // What the operator reads into the schedule's status.
    let (code, body) = http_get(archiver.port, "/status").expect("/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
    assert_eq!(status["ready"], true, "{body}");
    let stored = status["lastArchivedWal"]
        .as_str()
        .expect("lastArchivedWal")
        .to_string();
    assert!(stored >= last, "{stored} is not at or after {last}");
    assert!(status["lastArchivedTime"].is_string(), "{body}");
    // Where the window ends, once a sample of the server's clock is covered by stored WAL
    // (right after a restart, none is yet).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(archiver.port, "/status").expect("/status");
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
        if status["coveredUntil"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "no coveredUntil: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The window read back from the repository is the one `list` computes, and a metric.
    let window = loop {
        let (_, body) = http_get(archiver.port, "/status").expect("/status");
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
        if status["window"]["from"].is_string() && status["window"]["until"].is_string() {
            break status["window"].clone();
        }
        assert!(Instant::now() < deadline, "no window: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed: serde_json::Value = serde_json::from_str(&run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["list", "--json"],
    )))
    .expect("list JSON");
    let timelines = listed["walArchive"]["timelines"]
        .as_array()
        .expect("timelines");
    let newest = timelines.last().expect("a timeline");
    assert_eq!(window["from"], newest["fromTime"], "{window} {newest}");
    assert_eq!(window["timeline"], newest["timeline"], "{window} {newest}");
    let (_, metrics) = http_get(archiver.port, "/metrics").expect("/metrics");
    let from = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgbackup_recoverable_from_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the window's start as a metric");
    assert!(from > 1.7e9, "{metrics}");

    let drop = ["wal-archive", "--drop-slot"];
    let log = archiver.stop();
    assert!(
        log.contains("archiving interrupted, retrying"),
        "no reconnect in:\n{log}"
    );
    // Archiving ends for good: the slot goes, so the server stops keeping WAL for it.
    let dropped = run_ok(pgbackup_as_cluster_user(&pg, &repo, &drop));
    assert!(dropped.contains("dropped replication slot"), "{dropped}");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    let again = run_ok(pgbackup_as_cluster_user(&pg, &repo, &drop));
    assert!(again.contains("does not exist"), "{again}");

    // Every segment from the backup on is there once, and every object verifies.
    let names = archived_wal(&repo, None);
    let segments: Vec<&String> = names.iter().filter(|n| n.len() == 24).collect();
    let mut unique = segments.clone();
    unique.dedup();
    assert_eq!(segments, unique, "a segment stored twice");
    let verified = run_ok(pgbackup_as_cluster_user(&pg, &repo, &["verify", "--wal"]));
    assert!(verified.contains("WAL archive: "), "{verified}");

    let restored = restore_latest(&pg, &repo);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*), count(DISTINCT id) FROM t"),
        "60000|60000"
    );
}

#[test]
fn a_commit_is_recoverable_within_ten_seconds_without_a_segment_switch() {
    let (pg, repo, archiver) = archived_cluster("5");
    // Let the archiver store the partial segment once before the commit, so that what
    // follows is a later upload.
    std::thread::sleep(Duration::from_secs(1));
    pg.psql("postgres", "INSERT INTO t VALUES (42, 'the row')");
    let committed = Instant::now();
    let partial_dir = repo.dir().expect("dir").join("test-pg").join("wal");
    // Wait for a partial segment stored after the commit; 10 s at most.
    let stored_after_commit = |dir: &Path| {
        let path = find_partial(dir)?;
        let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
        (modified.elapsed().ok()? < committed.elapsed()).then_some(())
    };
    while stored_after_commit(&partial_dir).is_none() {
        assert!(
            committed.elapsed() < Duration::from_secs(10),
            "no partial segment stored within 10 s of the commit:\n{}",
            archiver.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = restore_latest(&pg, &repo);
    assert_eq!(
        restored.psql("postgres", "SELECT pad FROM t WHERE id = 42"),
        "the row"
    );
    archiver.stop();
}

fn find_partial(dir: &Path) -> Option<std::path::PathBuf> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().contains(".partial.") {
                return Some(path);
            }
        }
    }
    None
}

#[test]
fn pruning_removes_only_the_wal_no_kept_backup_needs() {
    let (pg, repo, archiver) = archived_cluster("1");
    write_rows(&pg, 0, 5_000);
    switch_wal(&pg);
    let second = physical_backup(&pg, &repo);
    let needed_from = second["beginWal"].as_str().expect("beginWal").to_string();
    write_rows(&pg, 5_000, 1_000);
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(30));
    archiver.stop();
    let before = archived_wal(&repo, None);
    assert!(
        before.iter().any(|n| n.len() == 24 && *n < needed_from),
        "{before:?}"
    );

    let pruned = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["prune", "--keep-last", "1", "--delete"],
    ));
    assert!(
        pruned.contains(&format!("before {needed_from}")),
        "{pruned}"
    );
    let after = archived_wal(&repo, None);
    let segments: Vec<&String> = after.iter().filter(|n| n.len() == 24).collect();
    assert!(segments.iter().all(|n| **n >= needed_from), "{after:?}");
    assert!(after.contains(&last), "{after:?}");

    let restored = restore_latest(&pg, &repo);
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "6000");
}

#[test]
fn another_applications_logical_slot_of_the_same_name_is_never_taken_nor_dropped() {
    let pg = PgServer::start_with(support::postgres::PgConfig {
        settings: vec!["wal_level = logical".into()],
        ..Default::default()
    });
    let repo = fs_repo_for(&pg);
    // A change-data-capture tool's slot, under the name the archiver is told to use.
    pg.psql(
        "postgres",
        "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')",
    );
    let taken = run_err(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["wal-archive", "--slot", "cdc", "--listen", "127.0.0.1:0"],
    ));
    assert!(
        taken.contains("replication slot cdc is a logical slot"),
        "{taken}"
    );
    let dropped = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["wal-archive", "--drop-slot", "--slot", "cdc"],
    ));
    assert!(
        dropped.contains("is a logical slot, not an archiver's: left as it is"),
        "{dropped}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'cdc'"
        ),
        "logical",
        "the other application's slot is still there"
    );
}

#[test]
fn a_standbys_physical_slot_of_the_same_name_is_never_taken_nor_dropped() {
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    // A standby's slot (the standby is down, so the slot is inactive), under the name the
    // archiver is told to use.
    pg.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby_1', true)",
    );
    let restart_lsn = || {
        pg.psql(
            "postgres",
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'standby_1'",
        )
    };
    let before = restart_lsn();
    let taken = run_err(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "wal-archive",
            "--slot",
            "standby_1",
            "--listen",
            "127.0.0.1:0",
        ],
    ));
    assert!(
        taken.contains("was not created by pgbackup's archiver"),
        "{taken}"
    );
    let dropped = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["wal-archive", "--drop-slot", "--slot", "standby_1"],
    ));
    assert!(dropped.contains("left as it is"), "{dropped}");
    assert_eq!(restart_lsn(), before, "the standby's slot is as it was");
}
