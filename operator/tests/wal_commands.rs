//! `wal-push` as PostgreSQL's `archive_command` and `wal-fetch` as its `restore_command`:
//! a server that archives through `wal-push` is restored to its latest state; pushing the
//! same file twice is harmless, a different file under an archived name is refused, and
//! `wal-fetch` answers with the exit codes recovery depends on.

mod support;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use support::{
    agent::{TestRepo, pgbackup, run, run_ok},
    postgres::{PgConfig, PgServer},
    wal::{archived_wal, binary_for_cluster_user, pgbackup_as_cluster_user, restore_and_start},
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
