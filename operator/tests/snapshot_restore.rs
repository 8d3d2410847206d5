//! Point-in-time restore from a volume snapshot: the copy of a running server's data
//! directory taken in backup mode (what a CSI snapshot is), recorded in the repository
//! with `record-snapshot`, then `restore --snapshot-data` on a copy of it (a claim made
//! from the snapshot) recovers with the archived WAL to a moment after the snapshot.

mod support;

use std::time::Duration;

use pgbackup::postgres::{ServerInfo, start_backup, stop_backup};
use support::{
    agent::{run, run_ok},
    postgres::PgServer,
    snapshot::snapshot,
    wal::{pgbackup_as_cluster_user, server_archiving_with_wal_push, switch_and_wait_archived},
};

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_online_snapshot_restores_to_a_later_moment() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql(
        "postgres",
        "CREATE TABLE orders (item text); INSERT INTO orders VALUES ('tea')",
    );

    // The snapshot: backup mode on one session, the copy, backup mode left.
    let staging = tempfile::tempdir().expect("staging");
    let session = pg.connect("postgres").await;
    let server = ServerInfo::query(&session).await.expect("server");
    let begin = start_backup(&session, "pgbackup shop/snap", true)
        .await
        .expect("start");
    pg.psql("postgres", "INSERT INTO orders VALUES ('coffee')");
    snapshot(&pg.data_dir(), staging.path());
    let stopped = stop_backup(&session).await.expect("stop");
    let begin_time = jiff::Timestamp::now();
    let record = serde_json::json!({
        "backupId": "20261121T120000Z",
        "beginTime": begin_time.to_string(), "endTime": begin_time.to_string(),
        "serverVersion": server.version, "serverVersionNum": server.version_num,
        "systemIdentifier": server.system_identifier,
        "walSegmentSize": server.wal_segment_size, "timeline": stopped.label.timeline,
        "beginLsn": begin, "endLsn": stopped.end_lsn,
        "details": {"namespace": "shop", "name": "snap", "statefulSet": "pg", "mode": "online",
                    "volumeSnapshots": [{"name": "snap-data", "claimName": "data-pg-0"}],
                    "backupLabel": stopped.label_file}
    });
    let mut record_command = pgbackup_as_cluster_user(&pg, &repo, &["record-snapshot"]);
    record_command.env("PGBACKUP_SNAPSHOT_RECORD", record.to_string());
    run_ok(record_command);

    pg.psql("postgres", "INSERT INTO orders VALUES ('scone')");
    std::thread::sleep(Duration::from_millis(1100));
    let moment = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    switch_and_wait_archived(&pg, &repo);

    // Without a copy of the snapshot in place the restore says what is wrong.
    let empty = tempfile::tempdir().expect("empty");
    let empty_path = empty.path().display().to_string();
    let out = run(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            &empty_path,
            "--snapshot-data",
            "--backup",
            "20261121T120000Z",
            "--target-time",
            &moment,
            "--recover",
        ],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no PostgreSQL data directory"));

    let pg_bin = pg.bin_dir().display().to_string();
    let restored = PgServer::start_restored(pg.password(), pg.bin_dir(), |data| {
        snapshot(staging.path(), data);
        let data = data.display().to_string();
        let plan = run_ok(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &[
                "restore",
                "--pgdata",
                &data,
                "--snapshot-data",
                "--backup",
                "20261121T120000Z",
                "--target-time",
                &moment,
                "--dry-run",
            ],
        ));
        assert!(plan.contains("20261121T120000Z"), "{plan}");
        let summary = run_ok(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &[
                "restore",
                "--pgdata",
                &data,
                "--pg-bin",
                &pg_bin,
                "--snapshot-data",
                "--backup",
                "20261121T120000Z",
                "--target-time",
                &moment,
                "--recover",
                "--json",
            ],
        ));
        let report: serde_json::Value = serde_json::from_str(summary.trim()).expect("json report");
        assert_eq!(report["backupId"], "20261121T120000Z");
    });
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(item, ',' ORDER BY item) FROM orders"
        ),
        "coffee,scone,tea",
        "everything up to the moment, from the snapshot and the archive; not the cake"
    );
}
