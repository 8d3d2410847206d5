//! A point-in-time restore over a server's own data directory, as the PointInTimeRestore
//! Job runs it with the server stopped: `restore --set-aside` keeps the old data inside
//! the directory until the restore is proven, `data-dir discard` removes it then, and
//! `data-dir put-back` undoes the restore. Refusals change nothing.

mod support;

use support::{
    agent::{run, run_ok},
    postgres::PgServer,
    wal::{pgbackup_as_cluster_user, server_archiving_with_wal_push, switch_and_wait_archived},
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
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql("postgres", "CREATE TABLE orders (item text)");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    pg.psql("postgres", "INSERT INTO orders VALUES ('tea'), ('coffee')");
    pg.psql("postgres", "SELECT pg_create_restore_point('before-cake')");
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    switch_and_wait_archived(&pg, &repo);
    pg.stop();
    // A link of the user's own in the data directory (a WAL volume, say) goes aside with
    // the old data: only links that come from the backup are refused.
    std::os::unix::fs::symlink("/var/tmp", pg.data_dir().join("users-own-link")).expect("link");
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

#[test]
fn a_backup_of_another_cluster_is_not_restored_over_a_database() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql("postgres", "CREATE TABLE orders (item text)");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    switch_and_wait_archived(&pg, &repo);
    let other = PgServer::start();
    other.psql("postgres", "CREATE TABLE ledger (entry text)");
    other.stop();
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();
    let restore_over = |server: &PgServer| {
        let pgdata = server.data_dir().to_string_lossy().into_owned();
        run(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &[
                "restore",
                "--pgdata",
                &pgdata,
                "--pg-bin",
                &pg_bin,
                "--set-aside",
                "r1",
                "--target-immediate",
                "--recover",
                "--expect-cluster",
                "pgdata",
            ],
        ))
    };

    let out = restore_over(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is of cluster"), "{stderr}");
    assert!(entries(&other).is_empty(), "nothing was set aside");
    other.start_again();
    assert_eq!(other.psql("postgres", "SELECT count(*) FROM ledger"), "0");

    // Over the data directory of the cluster it was taken of, the same backup restores.
    pg.stop();
    let out = restore_over(&pg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(entries(&pg), [".pgbackup-aside-r1"]);
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "0");
}
