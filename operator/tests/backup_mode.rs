//! Low-level backup mode for volume snapshots, against real servers of every supported
//! major version (13–18): a copy of the data directory taken while the session holds
//! backup mode (what a volume snapshot is), plus the label `pg_backup_stop` returns and
//! the archived WAL, starts as a consistent server that has what was committed before the
//! backup ended and nothing after.

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pgbackup::postgres::{
    BackupModeError, checkpoint, lsn_to_wal_file, parse_lsn, start_backup, stop_backup,
};
use support::postgres::{PgConfig, PgServer, postgres_user_if_root, version_matrix};

fn archive_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgbackup-test-archive-")
        .tempdir()
        .expect("tempdir");
    if let Some((uid, gid)) = postgres_user_if_root() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    }
    dir
}

/// Copies a data directory as a volume snapshot would capture it, less what a restore
/// must not bring along (the running server's pid file and its WAL).
fn snapshot(data: &Path, into: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", data.display()))
        .arg(into)
        .status()
        .expect("cp");
    assert!(status.success());
    for file in ["postmaster.pid", "postmaster.opts"] {
        let _ = std::fs::remove_file(into.join(file));
    }
    for entry in std::fs::read_dir(into.join("pg_wal"))
        .expect("pg_wal")
        .flatten()
    {
        if entry.path().is_file() {
            std::fs::remove_file(entry.path()).expect("remove WAL");
        }
    }
}

fn wait_for_archived(archive: &Path, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(segment).exists() {
        assert!(Instant::now() < deadline, "{segment} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn a_snapshot_in_backup_mode_restores(major: u32, bin: &Path) {
    let archive = archive_dir();
    let pg = PgServer::start_with(PgConfig {
        bin_dir: Some(bin.to_path_buf()),
        settings: vec![
            "archive_mode = on".into(),
            format!("archive_command = 'cp %p {}/%f'", archive.path().display()),
        ],
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

    let restored = PgServer::start_restored(pg.password(), pg.bin_dir(), |dir| {
        snapshot(staging.path(), dir);
        std::fs::write(dir.join("backup_label"), &stopped.label_file).expect("label");
        std::fs::write(dir.join("recovery.signal"), "").expect("signal");
        let settings = format!(
            "\nrestore_command = 'cp {}/%f %p'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\narchive_mode = off\n",
            archive.path().display()
        );
        let auto = dir.join("postgresql.auto.conf");
        let before = std::fs::read_to_string(&auto).unwrap_or_default();
        std::fs::write(&auto, before + &settings).expect("settings");
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored.psql("postgres", "SELECT pg_is_in_recovery()") == "t" {
        assert!(
            Instant::now() < deadline,
            "{major}: recovery did not end:\n{}",
            restored.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        restored.psql("postgres", "SELECT count(*), max(id) FROM t"),
        "3000|3000",
        "{major}: everything committed before backup mode ended, nothing after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_taken_in_backup_mode_restore_on_13_to_18() {
    let matrix = version_matrix();
    assert_eq!(matrix.len(), 6, "13 to 18");
    for (major, bin, _) in matrix {
        a_snapshot_in_backup_mode_restores(major, &bin).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_is_refused_and_checkpoint_runs() {
    let pg = PgServer::start();
    let session = pg.connect("postgres").await;
    checkpoint(&session).await.expect("CHECKPOINT");
    drop(session);
    // A server in recovery: the same data directory, shut down cleanly, started as a standby.
    assert!(pg.pg_ctl(&["stop", "-m", "fast"]).status.success());
    let standby = PgServer::start_restored(pg.password(), pg.bin_dir(), |dir| {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", pg.data_dir().display()))
            .arg(dir)
            .status()
            .expect("cp");
        assert!(status.success());
        std::fs::write(dir.join("standby.signal"), "").expect("signal");
    });
    let client = standby.connect("postgres").await;
    match start_backup(&client, "x", true).await {
        Err(BackupModeError::InRecovery) => {}
        other => panic!("a standby must be refused: {other:?}"),
    }
}
