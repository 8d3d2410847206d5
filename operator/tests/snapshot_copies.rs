//! Restores from volume snapshots taken without backup mode: a checkpoint snapshot (the
//! copy of a server cut while it runs, crash-consistent) and an offline one (the server
//! stopped cleanly). `restore --snapshot-data` recovers the copy from the checkpoint in its
//! own control file, replays all the WAL it holds, and with archived WAL goes further; a
//! target before the copy is consistent is refused. An offline copy is recorded from its
//! own control file.

mod support;

use std::{path::Path, process::Command, time::Duration};

use pgbackup::postgres::ServerInfo;
use support::{
    agent::{run, run_ok},
    postgres::PgServer,
    wal::{pgbackup_as_cluster_user, server_archiving_with_wal_push, switch_and_wait_archived},
};

/// The whole volume, as the storage cuts it: WAL, pid file and all.
fn cut(data: &Path, into: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", data.display()))
        .arg(into)
        .status()
        .expect("cp");
    assert!(status.success());
}

fn items(server: &PgServer) -> String {
    server.psql(
        "postgres",
        "SELECT string_agg(item, ',' ORDER BY item) FROM orders",
    )
}

fn now_text(pg: &PgServer) -> String {
    pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_snapshot_restores_as_it_was_cut_and_to_a_later_moment() {
    let (pg, repo) = server_archiving_with_wal_push();
    // Committed durably, as a database that may crash commits (the tests' servers do not
    // wait for the WAL flush by default).
    pg.psql(
        "postgres",
        "SET synchronous_commit = on; CREATE TABLE orders (item text); INSERT INTO orders VALUES ('tea')",
    );
    pg.psql("postgres", "CHECKPOINT");
    let checkpointed = pg.psql("postgres", "SELECT pg_current_wal_lsn()");
    std::thread::sleep(Duration::from_millis(1100));
    let between = now_text(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    // Only in the WAL of the copy: the checkpoint came before it.
    pg.psql(
        "postgres",
        "SET synchronous_commit = on; INSERT INTO orders VALUES ('coffee')",
    );

    // The storage cuts the volume of the running server: what it holds is what a crash
    // leaves (an immediate stop writes nothing more), and the server then runs on.
    let staging = tempfile::tempdir().expect("staging");
    let out = pg.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    assert!(out.status.success(), "{out:?}");
    cut(&pg.data_dir(), staging.path());
    pg.start_again();
    let cut_at = jiff::Timestamp::now();

    // The snapshot as a repository records it: the checkpoint's position, no label.
    let session = pg.connect("postgres").await;
    let server = ServerInfo::query(&session).await.expect("server");
    let record = serde_json::json!({
        "backupId": "20261205T120000Z",
        "beginTime": cut_at.to_string(), "endTime": cut_at.to_string(),
        "serverVersion": server.version, "serverVersionNum": server.version_num,
        "systemIdentifier": server.system_identifier,
        "walSegmentSize": server.wal_segment_size, "timeline": 1,
        "beginLsn": checkpointed,
        "details": {"namespace": "shop", "name": "snap", "statefulSet": "pg", "mode": "checkpoint",
                    "volumeSnapshots": [{"name": "snap-data", "claimName": "data-pg-0"}]}
    });
    let mut record_command = pgbackup_as_cluster_user(&pg, &repo, &["record-snapshot"]);
    record_command.env("PGBACKUP_SNAPSHOT_RECORD", record.to_string());
    run_ok(record_command);

    pg.psql("postgres", "INSERT INTO orders VALUES ('scone')");
    std::thread::sleep(Duration::from_millis(1100));
    let moment = now_text(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    switch_and_wait_archived(&pg, &repo);

    let pg_bin = pg.bin_dir().display().to_string();
    let restore = |target: &[&str], data: &Path| {
        let data = data.display().to_string();
        let mut args = vec![
            "restore",
            "--pgdata",
            &data,
            "--pg-bin",
            &pg_bin,
            "--snapshot-data",
            "--recover",
            "--json",
            // A copy beside the original: it must not archive into the original's repository.
            "--archive-off",
        ];
        args.extend(target);
        run(pgbackup_as_cluster_user(&pg, &repo, &args))
    };

    // Nothing records the snapshot: the plan can only say the copy is checked later.
    let plan = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            "/nonexistent",
            "--snapshot-data",
            "--target-time",
            &moment,
            "--dry-run",
        ],
    ));
    assert!(plan.contains("snapshot-copy"), "{plan}");

    // As it was cut: the end of the WAL the copy holds, with the row only that WAL has.
    let as_cut = PgServer::start_restored(pg.password(), pg.bin_dir(), |data| {
        cut(staging.path(), data);
        let out = restore(&["--target-immediate"], data);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("the restore reports as JSON");
        assert_eq!(report["backupId"], "snapshot-copy");
    });
    assert_eq!(items(&as_cut), "coffee,tea", "the copy as it was cut");
    drop(as_cut);

    // Later, with the archived WAL of the server that ran on; recorded or not.
    for recorded in [&[][..], &["--backup", "20261205T120000Z"][..]] {
        let later = PgServer::start_restored(pg.password(), pg.bin_dir(), |data| {
            cut(staging.path(), data);
            let mut target = vec!["--target-time", &moment];
            target.extend(recorded);
            let out = restore(&target, data);
            assert!(out.status.success(), "{out:?}");
        });
        assert_eq!(
            items(&later),
            "coffee,scone,tea",
            "up to the moment, not the cake ({recorded:?})"
        );
    }
    // A recorded snapshot is planned from its record before any copy exists.
    let plan = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            "/nonexistent",
            "--snapshot-data",
            "--backup",
            "20261205T120000Z",
            "--target-time",
            &moment,
            "--dry-run",
        ],
    ));
    assert!(
        plan.contains("\"backupId\": \"20261205T120000Z\""),
        "{plan}"
    );

    // Before the copy was consistent, its data files may hold what its WAL did: refused
    // when planned (before the checkpoint), or by recovery (after it, before the cut).
    for (target, refusal) in [
        (["--target-lsn", &checkpointed], "lies before the snapshot"),
        (
            ["--target-time", &between],
            "before the end of the WAL the snapshot copy holds",
        ),
    ] {
        let early = tempfile::tempdir().expect("early");
        cut(staging.path(), early.path());
        if let Some((uid, gid)) = pg.os_user() {
            support::postgres::chown_tree(early.path(), uid, gid);
        }
        let out = restore(&target, early.path());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(refusal), "{target:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_snapshot_restores_as_the_server_stopped_and_recorded_to_a_later_moment() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql(
        "postgres",
        "CREATE TABLE orders (item text); INSERT INTO orders VALUES ('tea'), ('coffee')",
    );
    let staging = tempfile::tempdir().expect("staging");
    pg.stop();
    cut(&pg.data_dir(), staging.path());
    pg.start_again();
    let shutdown_checkpoint = pg.psql("postgres", "SELECT redo_lsn FROM pg_control_checkpoint()");

    // Recorded as the operator does for an offline snapshot: no server could tell its
    // positions, the copy's control file does.
    let cut_at = jiff::Timestamp::now();
    let record = serde_json::json!({
        "backupId": "20261205T130000Z",
        "beginTime": cut_at.to_string(), "endTime": cut_at.to_string(),
        "serverVersion": "", "serverVersionNum": 0,
        "details": {"namespace": "shop", "name": "snap", "statefulSet": "pg", "mode": "offline",
                    "volumeSnapshots": [{"name": "snap-data", "claimName": "data-pg-0"}]}
    });
    let mut record_command = pgbackup_as_cluster_user(&pg, &repo, &["record-snapshot"]);
    record_command
        .env("PGBACKUP_SNAPSHOT_RECORD", record.to_string())
        .env("PGBACKUP_CONTROL_DATA", staging.path())
        .env("PGBACKUP_PG_BIN", pg.bin_dir());
    run_ok(record_command);
    let listed = run_ok(pgbackup_as_cluster_user(&pg, &repo, &["list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list --json");
    let recorded = listed["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["backupId"] == "20261205T130000Z")
        .map(|b| &b["manifest"])
        .unwrap_or_else(|| panic!("the snapshot is listed: {listed}"));
    assert_eq!(
        recorded["beginLsn"], shutdown_checkpoint,
        "replay starts at the shutdown checkpoint: {recorded}"
    );

    pg.psql("postgres", "INSERT INTO orders VALUES ('scone')");
    std::thread::sleep(Duration::from_millis(1100));
    let moment = now_text(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    switch_and_wait_archived(&pg, &repo);

    let pg_bin = pg.bin_dir().display().to_string();
    let restore = |target: &[&str]| {
        PgServer::start_restored(pg.password(), pg.bin_dir(), |data| {
            cut(staging.path(), data);
            let data = data.display().to_string();
            let mut args = vec![
                "restore",
                "--pgdata",
                &data,
                "--pg-bin",
                &pg_bin,
                "--snapshot-data",
                "--recover",
                "--archive-off",
            ];
            args.extend(target);
            run_ok(pgbackup_as_cluster_user(&pg, &repo, &args));
        })
    };
    let restored = restore(&["--target-immediate"]);
    assert_eq!(items(&restored), "coffee,tea");
    assert_eq!(
        restored.psql("postgres", "SELECT pg_is_in_recovery()"),
        "f",
        "promoted"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT timeline_id > 1 FROM pg_control_checkpoint()"
        ),
        "t",
        "on a timeline of its own, never the one the original archives on"
    );
    drop(restored);

    let later = restore(&["--backup", "20261205T130000Z", "--target-time", &moment]);
    assert_eq!(
        items(&later),
        "coffee,scone,tea",
        "the recorded offline snapshot, taken to the moment by the archived WAL"
    );
}
