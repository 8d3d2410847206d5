//! `wal-push` as PostgreSQL's `archive_command` and `wal-fetch` as its `restore_command`:
//! a server that archives through `wal-push` is restored to its latest state; pushing the
//! same file twice is harmless, a different file under an archived name is refused, and
//! `wal-fetch` answers with the exit codes recovery depends on.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use support::{
    agent::{TestRepo, pgbackup, run, run_ok},
    postgres::{PgConfig, PgServer},
    wal::{
        SERVER, archived_wal, binary_for_cluster_user, pgbackup_as_cluster_user, restore_and_start,
        scratch_dir_for, server_archiving_with_wal_push, switch_and_wait_archived,
    },
};

#[test]
fn archive_command_and_restore_command_round_trip() {
    let repo = TestRepo::fs();
    let dir = repo.dir().expect("dir").to_path_buf();
    // archive_command runs as the server's OS user.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // The server's OS user runs archive_command: the binary must be where it can.
    let binary = binary_for_cluster_user();
    let archive_command = format!(
        "archive_command = '\"{}\" wal-push --repository file://{} --server test-pg %p'",
        binary.display(),
        dir.display()
    );
    let pg = PgServer::start_with(PgConfig {
        settings: vec!["archive_mode = on".into(), archive_command],
        ..PgConfig::default()
    });
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g FROM generate_series(1001, 5000) g",
    );
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal() - 1)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !archived_wal(&repo, None).contains(&last) {
        assert!(
            std::time::Instant::now() < deadline,
            "{last} not archived: {:?}\n{}",
            archived_wal(&repo, None),
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (restored, _) = restore_and_start(&pg, &repo, pg.bin_dir(), &["--target-latest"]);
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "5000");

    // wal-fetch: found, not found (1), corrupt (above 125), misused (above 125).
    let scratch = tempfile::tempdir().expect("dir");
    let fetched = scratch.path().join(&last);
    let fetch = |name: &str, dest: &std::path::Path| {
        let dest = dest.to_string_lossy().into_owned();
        run(pgbackup(
            &pg,
            &repo,
            &["wal-fetch", "--prefetch", "0", name, &dest],
        ))
    };
    let out = fetch(&last, &fetched);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&fetched).expect("fetched").len(),
        16 << 20
    );
    let out = fetch("0000000100000000000000FF", &scratch.path().join("x"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(pgbackup(
        &pg,
        &repo,
        &["wal-fetch", "--no-such-flag", &last],
    ));
    assert_eq!(out.status.code(), Some(255));

    // With the repository's key given, what is stored unencrypted is refused — anyone who
    // can write to the repository could have put it there — unless allowed (objects stored
    // before encryption was turned on).
    let mut keygen = std::process::Command::new(env!("CARGO_BIN_EXE_pgbackup"));
    keygen.arg("keygen");
    let key = run_ok(keygen);
    let keyed = |args: &[&str], allow: bool| {
        let mut command = pgbackup(&pg, &repo, args);
        command.env("PGBACKUP_ENCRYPTION_KEY", &key);
        if allow {
            command.env("PGBACKUP_ALLOW_UNENCRYPTED", "true");
        }
        run(command)
    };
    let dest = scratch.path().join("keyed").to_string_lossy().into_owned();
    let wal_fetch = ["wal-fetch", "--prefetch", "0", &last, &dest];
    for args in [&wal_fetch[..], &["verify"]] {
        let out = keyed(args, false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("is not encrypted, but the repository's encryption key is given"),
            "{stderr}"
        );
        let out = keyed(args, true);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // wal-push: the same file again is a no-op; a different one under the name is refused.
    let pgdata = pg.data_dir().to_string_lossy().into_owned();
    let push = |path: &std::path::Path| {
        let path = path.to_string_lossy().into_owned();
        run(pgbackup(
            &pg,
            &repo,
            &["wal-push", "--pgdata", &pgdata, &path],
        ))
    };
    let out = push(&fetched);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("archived already"));
    let mut bytes = std::fs::read(&fetched).expect("read");
    bytes[100_000] ^= 0xFF;
    std::fs::write(&fetched, &bytes).expect("write");
    let out = push(&fetched);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is already archived"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A stored object damaged in the repository: fetching it must stop recovery.
    let object = support::agent::find_file_starting(&dir, &format!("{last}.")).to_path_buf();
    let mut stored = std::fs::read(&object).expect("read object");
    let middle = stored.len() / 2;
    stored[middle] ^= 0xFF;
    std::fs::write(&object, &stored).expect("damage object");
    let out = fetch(&last, &scratch.path().join("damaged"));
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!scratch.path().join("damaged").exists());
}

/// The name of the segment after `name` (16 MiB segments).
fn next_segment(name: &str) -> String {
    let log = u64::from_str_radix(&name[8..16], 16).expect("hex");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("hex") + 1;
    let (log, seg) = if seg == 0x100 {
        (log + 1, 0)
    } else {
        (log, seg)
    };
    format!("{}{log:08X}{seg:08X}", &name[..8])
}

#[test]
fn wal_fetch_prefetches_the_next_segments_without_holding_back_the_one_asked_for() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql("postgres", "CREATE TABLE t (x int)");
    for _ in 0..3 {
        pg.psql("postgres", "INSERT INTO t SELECT generate_series(1, 1000)");
        switch_and_wait_archived(&pg, &repo);
    }
    let segments: Vec<String> = archived_wal(&repo, None)
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let [.., asked, last] = &segments[..] else {
        panic!("two segments at least: {segments:?}");
    };
    assert_eq!(&next_segment(asked), last, "{segments:?}");
    // The segment after the last one is stored as a pipe that nothing writes into yet: a
    // download of it waits until the test lets it go.
    let stuck = next_segment(last);
    let wal_dir = repo
        .dir()
        .expect("file repository")
        .join(SERVER)
        .join("wal")
        .join(&stuck[..8]);
    let pipe = wal_dir.join(format!("{stuck}.{}.zst", "0".repeat(64)));
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "666"])
        .arg(&pipe)
        .status()
        .expect("mkfifo");
    assert!(made.success());

    let scratch = scratch_dir_for(&pg);
    let pg_wal = scratch.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).expect("mkdir");
    if let Some((uid, gid)) = pg.os_user() {
        std::os::unix::fs::chown(&pg_wal, Some(uid), Some(gid)).expect("chown");
    }
    let fetch = |name: &str| {
        let dest = pg_wal.join("RECOVERYXLOG").to_string_lossy().into_owned();
        let mut command =
            pgbackup_as_cluster_user(&pg, &repo, &["wal-fetch", "--prefetch", "3", name, &dest]);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().expect("wal-fetch")
    };
    // The asked-for segment comes back at once, while prefetching waits on the pipe.
    let mut child = fetch(asked);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wal-fetch held {asked} back behind its prefetching");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(pg_wal.join("RECOVERYXLOG"))
            .expect("fetched")
            .len(),
        16 << 20
    );
    // The next segment arrives in the prefetch directory meanwhile, and is served from there.
    let prefetch = pg_wal.join(".pgbackup-prefetch");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !prefetch.join(last).exists() {
        assert!(Instant::now() < deadline, "{last} was not prefetched");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        prefetch.join(".prefetching").exists(),
        "the prefetching process still waits on {stuck}"
    );
    let out = fetch(last).wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !prefetch.join(last).exists(),
        "{last} was served from the prefetch directory (moved into place)"
    );
    assert_eq!(
        std::fs::metadata(pg_wal.join("RECOVERYXLOG"))
            .expect("fetched")
            .len(),
        16 << 20
    );

    // Let the pipe go: the prefetching process ends, and lets go of its lock.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pipe)
            .expect("pipe"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while prefetch.join(".prefetching").exists() {
        assert!(
            Instant::now() < deadline,
            "the prefetching process did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!prefetch.join(&stuck).exists(), "a pipe is not a segment");
}
