//! A point-in-time restore over a server's own data directory, as the PointInTimeRestore
//! Job runs it with the server stopped: `restore --set-aside` keeps the old data inside
//! the directory until the restore is proven, `data-dir discard` removes it then, and
//! `data-dir put-back` undoes the restore. Refusals change nothing.

mod support;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use support::{
    agent::{TestRepo, run, run_ok},
    postgres::{PgConfig, PgServer},
    wal::{archived_wal, binary_for_cluster_user, pgbackup_as_cluster_user},
};

fn entries(pg: &PgServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pg.data_dir())
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pgbackup-aside"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_restore_over_the_data_directory_keeps_the_old_data_until_told() {
    let repo = TestRepo::fs();
    let dir = repo.dir().expect("dir").to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let archive_command = format!(
        "archive_command = '\"{}\" wal-push --repository file://{} --server test-pg %p'",
        binary_for_cluster_user().display(),
        dir.display()
    );
    let pg = PgServer::start_with(PgConfig {
        settings: vec!["archive_mode = on".into(), archive_command],
        ..PgConfig::default()
    });
    pg.psql("postgres", "CREATE TABLE orders (item text)");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    pg.psql("postgres", "INSERT INTO orders VALUES ('tea'), ('coffee')");
    pg.psql("postgres", "SELECT pg_create_restore_point('before-cake')");
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal() - 1)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !archived_wal(&repo, None).contains(&last) {
        assert!(std::time::Instant::now() < deadline, "{last} not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.stop();
    let pgdata = pg.data_dir().to_string_lossy().into_owned();
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--pgdata",
            &pgdata,
            "--pg-bin",
            &pg_bin,
            "--set-aside",
            "r1",
        ];
        args.extend_from_slice(extra);
        pgbackup_as_cluster_user(&pg, &repo, &args)
    };

    // A target the archive cannot reach is refused before anything moves.
    let out = run(restore(&["--target-lsn", "FF/0", "--recover"]));
    assert!(!out.status.success());
    assert!(entries(&pg).is_empty(), "nothing was set aside");
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "3");
    pg.stop();

    // The dry run the operator validates with accepts a directory that will be set aside.
    let plan = run_ok(restore(&[
        "--target-name",
        "before-cake",
        "--backup",
        "latest",
        "--dry-run",
    ]));
    assert!(plan.contains("\"backupId\""), "{plan}");

    let summary = run_ok(restore(&[
        "--target-name",
        "before-cake",
        "--backup",
        "latest",
        "--recover",
    ]));
    assert!(summary.contains("recovered backup"), "{summary}");
    assert_eq!(entries(&pg), [".pgbackup-aside-r1"], "the old data is kept");
    pg.start_again();
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(item, ',' ORDER BY item) FROM orders"
        ),
        "coffee,tea"
    );
    assert_eq!(pg.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    pg.stop();

    // Rolled back: the old data, cake and all, is where it was.
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["data-dir", "put-back", "--pgdata", &pgdata, "--name", "r1"],
    ));
    assert!(entries(&pg).is_empty());
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "3");
    pg.stop();

    // Proven this time: the old data goes.
    run_ok(restore(&[
        "--target-name",
        "before-cake",
        "--backup",
        "latest",
        "--recover",
    ]));
    let out = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["data-dir", "discard", "--pgdata", &pgdata, "--name", "r1"],
    ));
    assert!(out.contains("deleted"), "{out}");
    assert!(entries(&pg).is_empty());
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "2");
}
