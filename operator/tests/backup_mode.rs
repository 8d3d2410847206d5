//! Low-level backup mode for volume snapshots, against real servers of every supported
//! major version (13–18): a copy of the data directory taken while the session holds
//! backup mode (what a volume snapshot is), plus the label `pg_backup_stop` returns and
//! the archived WAL, starts as a consistent server that has what was committed before the
//! backup ended and nothing after.

mod support;

use std::path::Path;

use pgbackup::postgres::{
    BackupModeError, checkpoint, lsn_to_wal_file, parse_lsn, start_backup, stop_backup,
};
use support::{
    postgres::{PgConfig, PgServer, covered_version},
    snapshot::{
        archive_dir, archiving_into, restore_snapshot, snapshot, standby_of, wait_for_archived,
    },
};

async fn a_snapshot_in_backup_mode_restores(major: u32, bin: &Path) {
    let archive = archive_dir();
    let pg = PgServer::start_with(PgConfig {
        bin_dir: Some(bin.to_path_buf()),
        settings: archiving_into(archive.path()),
    });
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    let session = pg.connect("postgres").await;
    let started = start_backup(&session, "pgbackup test", true)
        .await
        .expect("start backup");
    assert!(parse_lsn(&started).is_some(), "{started}");

    // Work goes on while the snapshot is cut, and after it before backup mode ends.
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(1001, 2000)",
    );
    let staging = tempfile::tempdir().expect("tempdir");
    snapshot(&pg.data_dir(), staging.path());
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(2001, 3000)",
    );
    let stopped = stop_backup(&session).await.expect("stop backup");
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(3001, 4000)",
    );

    let label = &stopped.label;
    assert_eq!(label.timeline, 1, "{major}");
    assert_eq!(label.label, "pgbackup test");
    assert_eq!(
        label.start_lsn, started,
        "{major}: the label starts where pg_backup_start said"
    );
    let end = parse_lsn(&stopped.end_lsn).expect("end LSN");
    assert!(
        end >= parse_lsn(&label.start_lsn).expect("start"),
        "{major}"
    );
    assert!(stopped.tablespace_map.trim().is_empty());

    pg.psql("postgres", "SELECT pg_switch_wal()");
    wait_for_archived(archive.path(), &lsn_to_wal_file(1, end, 16 * 1024 * 1024));

    let restored = restore_snapshot(&pg, staging.path(), &stopped.label_file, archive.path());
    assert_eq!(
        restored.psql("postgres", "SELECT count(*), max(id) FROM t"),
        "3000|3000",
        "{major}: everything committed before backup mode ended, nothing after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_taken_in_backup_mode_restore_on_13_to_18() {
    for major in 13..=18 {
        if let Some((bin, _)) = covered_version(major, false) {
            a_snapshot_in_backup_mode_restores(major, &bin).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_is_refused_and_checkpoint_runs() {
    let pg = PgServer::start();
    let session = pg.connect("postgres").await;
    let redo = "SELECT redo_lsn::text FROM pg_control_checkpoint()";
    session
        .batch_execute("CREATE TABLE dirty AS SELECT generate_series(1, 10000) AS x")
        .await
        .expect("write");
    let before: String = session.query_one(redo, &[]).await.expect("redo").get(0);
    checkpoint(&session).await.expect("CHECKPOINT");
    let after: String = session.query_one(redo, &[]).await.expect("redo").get(0);
    let moved: bool = session
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn) > 0",
            &[&after, &before],
        )
        .await
        .expect("compare")
        .get(0);
    assert!(
        moved,
        "the checkpoint's redo point stayed at {before} (now {after})"
    );
    drop(session);
    // A server in recovery: the same data directory, shut down cleanly, started as a standby.
    let standby = standby_of(&pg);
    let client = standby.connect("postgres").await;
    match start_backup(&client, "x", true).await {
        Err(BackupModeError::InRecovery) => {}
        other => panic!("a standby must be refused: {other:?}"),
    }
}
