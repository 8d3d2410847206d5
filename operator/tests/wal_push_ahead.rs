//! `wal-push` storing ahead: a server whose archiving fell behind has many segments ready at
//! once; the worker `wal-push` starts stores them in parallel and each `archive_command`
//! answers from its acknowledgement. Killing the worker at any moment loses nothing: the
//! `archive_command` of a file it did not acknowledge stores the file itself.

mod support;

use std::time::{Duration, Instant};

use support::{
    agent::run_ok,
    postgres::PgServer,
    wal::{
        SERVER, archived_wal, binary_for_cluster_user, pgbackup_as_cluster_user, restore_and_start,
        server_archiving_with_wal_push,
    },
};

/// Segments left ready before archiving starts.
const BACKLOG: usize = 16;

#[test]
fn a_backlog_is_stored_ahead_and_a_killed_worker_loses_nothing() {
    let (pg, repo) = server_archiving_with_wal_push();
    let dir = repo.dir().expect("dir").to_path_buf();
    pg.psql("postgres", "CREATE TABLE t (id int, note text)");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    // Archiving stops (an empty command): every segment completed from now on stays ready.
    set_archive_command(&pg, "");
    let mut segments = Vec::new();
    for round in 0..BACKLOG {
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
                round * 1000 + 1,
                round * 1000 + 1000
            ),
        );
        segments.push(pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let ready = || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
        )
        .parse::<usize>()
        .expect("count")
    };
    assert!(
        ready() >= BACKLOG,
        "the backlog is not ready:\n{}",
        pg.log()
    );

    let command = format!(
        "\"{}\" wal-push --repository file://{} --server {SERVER} %p",
        binary_for_cluster_user().display(),
        dir.display()
    );
    set_archive_command(&pg, &command);

    // The worker shows up with its lock file; kill it with SIGKILL once it has stored some.
    let spool = pg.data_dir().join("pg_wal/.pgbackup-push");
    let lock = spool.join(".pushing");
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker = loop {
        if let Some(pid) = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no worker started:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    while archived_wal(&repo, None).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = std::process::Command::new("kill")
        .args(["-9", &worker.to_string()])
        .status()
        .expect("kill");

    let deadline = Instant::now() + Duration::from_secs(60);
    while ready() > 0 {
        assert!(
            Instant::now() < deadline,
            "archiving did not catch up:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let archived = archived_wal(&repo, None);
    for segment in &segments {
        assert!(
            archived.contains(segment),
            "{segment} not archived: {archived:?}"
        );
    }
    let log = pg.log();
    assert!(
        log.contains("(stored ahead)"),
        "no archive_command was answered by the worker (killed: {killed}):\n{log}"
    );

    // What was stored restores: every row of the backlog.
    let (restored, _) = restore_and_start(&pg, &repo, pg.bin_dir(), &["--target-latest"]);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM t"),
        (BACKLOG * 1000).to_string()
    );
}

fn set_archive_command(pg: &PgServer, command: &str) {
    pg.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            command.replace('\'', "''")
        ),
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
}
