//! What a CSI volume snapshot of a PostgreSQL data directory is, on a local disk: a copy
//! taken while the server runs, and its restore — the copy, the backup label the server
//! returned when backup mode ended, and the archived WAL — started as a new server.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::postgres::{PgServer, postgres_user_if_root};

/// A directory the server's `archive_command` copies WAL into.
pub fn archive_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgbackup-test-archive-")
        .tempdir()
        .expect("tempdir");
    if let Some((uid, gid)) = postgres_user_if_root() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    }
    dir
}

/// The settings that archive WAL into `archive`.
pub fn archiving_into(archive: &Path) -> Vec<String> {
    vec![
        "archive_mode = on".into(),
        format!("archive_command = 'cp %p {}/%f'", archive.display()),
    ]
}

/// Copies a data directory as a volume snapshot would capture it, less what a restore
/// must not bring along (the running server's pid file and its WAL).
pub fn snapshot(data: &Path, into: &Path) {
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

/// Waits until `segment` is in the archive.
pub fn wait_for_archived(archive: &Path, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(segment).exists() {
        assert!(Instant::now() < deadline, "{segment} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a server from the snapshot copy in `staging` with `label_file` as its
/// `backup_label`, replaying WAL from `archive` until it is consistent, and waits until it
/// has left recovery.
pub fn restore_snapshot(
    pg: &PgServer,
    staging: &Path,
    label_file: &str,
    archive: &Path,
) -> PgServer {
    let restored = PgServer::start_restored(pg.password(), pg.bin_dir(), |dir| {
        snapshot(staging, dir);
        std::fs::write(dir.join("backup_label"), label_file).expect("label");
        std::fs::write(dir.join("recovery.signal"), "").expect("signal");
        let settings = format!(
            "\nrestore_command = 'cp {}/%f %p'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\narchive_mode = off\n",
            archive.display()
        );
        let auto = dir.join("postgresql.auto.conf");
        let before = std::fs::read_to_string(&auto).unwrap_or_default();
        std::fs::write(&auto, before + &settings).expect("settings");
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored.psql("postgres", "SELECT pg_is_in_recovery()") == "t" {
        assert!(
            Instant::now() < deadline,
            "recovery did not end:\n{}",
            restored.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    restored
}

/// A standby of `pg`: its data directory, shut down cleanly, started in recovery. `pg` is
/// stopped.
pub fn standby_of(pg: &PgServer) -> PgServer {
    assert!(pg.pg_ctl(&["stop", "-m", "fast"]).status.success());
    PgServer::start_restored(pg.password(), pg.bin_dir(), |dir| {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", pg.data_dir().display()))
            .arg(dir)
            .status()
            .expect("cp");
        assert!(status.success());
        std::fs::write(dir.join("standby.signal"), "").expect("signal");
    })
}
