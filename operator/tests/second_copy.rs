//! `pgbackup copy` keeps a second copy of a server's backups and WAL in another repository
//! (here: from a volume into S3): a restore from the copy alone brings back the latest
//! rows; a second run copies only what is new; the source loses nothing; a chunk or a WAL
//! file that is not what the source recorded is not copied, and a copy holding another
//! cluster under the same server name is refused.

mod support;

use std::{path::Path, process::Command};

use support::{
    agent::{TestRepo, error_lines, run_err, run_ok},
    postgres::PgServer,
    s3::S3Server,
    wal::{
        pgbackup_as_cluster_user, restore_and_start, server_archiving_with_wal_push,
        switch_and_wait_archived,
    },
};

/// `pgbackup copy` from `repo` into `copy` (an S3 prefix), the copy's endpoint and keys
/// given as its own.
fn copy_command(pg: &PgServer, repo: &TestRepo<'_>, s3: &S3Server, copy: &TestRepo<'_>) -> Command {
    let mut command = pgbackup_as_cluster_user(pg, repo, &["copy", "--to", &copy.url()]);
    command
        .env("PGBACKUP_COPY_S3_ENDPOINT", s3.endpoint())
        .env("PGBACKUP_COPY_S3_FORCE_PATH_STYLE", "true")
        .env("PGBACKUP_COPY_AWS_ACCESS_KEY_ID", s3.access_key())
        .env("PGBACKUP_COPY_AWS_SECRET_ACCESS_KEY", s3.secret_key());
    command
}

fn backup(pg: &PgServer, repo: &TestRepo<'_>, method: &str) -> String {
    let out = run_ok(pgbackup_as_cluster_user(
        pg,
        repo,
        &["backup", "--method", method],
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).expect("summary");
    summary["backupId"].as_str().expect("id").to_string()
}

fn complete_backups(pg: &PgServer, repo: &TestRepo<'_>) -> Vec<String> {
    let listed: serde_json::Value = serde_json::from_str(&run_ok(pgbackup_as_cluster_user(
        pg,
        repo,
        &["list", "--json"],
    )))
    .expect("JSON listing");
    listed["backups"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|b| b["complete"].as_bool() != Some(false))
        .map(|b| b["backupId"].as_str().expect("id").to_string())
        .collect()
}

/// Every file under `dir` with its size, for "nothing changed" checks.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).expect("read dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                found.push((entry.path().display().to_string(), meta.len()));
            }
        }
    }
    found.sort();
    found
}

/// Flips one byte in the middle of a file.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_copy_restores_alone_and_a_rerun_copies_only_what_is_new() {
    let s3 = S3Server::start().await;
    let (pg, repo) = server_archiving_with_wal_push();
    let copy = TestRepo::S3(&s3, "second-copy".into());
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int, note text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    );
    let first = backup(&pg, &repo, "physical");
    let logical = backup(&pg, &repo, "logical");
    switch_and_wait_archived(&pg, &repo);
    let source_before = files(repo.dir().expect("dir"));

    let out = run_ok(copy_command(&pg, &repo, &s3, &copy));
    assert!(out.contains(&format!("copied backup {first}")), "{out}");
    assert!(out.contains(&format!("copied backup {logical}")), "{out}");
    assert!(out.contains("2 backup(s) and "), "{out}");
    assert_eq!(
        files(repo.dir().expect("dir")),
        source_before,
        "the source is left as it was"
    );
    let again = run_ok(copy_command(&pg, &repo, &s3, &copy));
    assert!(
        again.contains("0 backup(s) and 0 WAL file(s) copied"),
        "a second run finds everything there: {again}"
    );

    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1001, 1500) g",
    );
    let second = backup(&pg, &repo, "physical");
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'after the last backup' FROM generate_series(1501, 1600) g",
    );
    switch_and_wait_archived(&pg, &repo);
    let out = run_ok(copy_command(&pg, &repo, &s3, &copy));
    assert!(
        out.contains(&format!("copied backup {second}")) && out.contains("1 backup(s) and "),
        "only the new backup: {out}"
    );
    assert!(!out.contains("0 WAL file(s) copied"), "the new WAL: {out}");
    assert_eq!(
        complete_backups(&pg, &copy),
        vec![first.clone(), logical.clone(), second.clone()],
        "the copy lists every backup"
    );
    run_ok(pgbackup_as_cluster_user(&pg, &copy, &["verify", "--wal"]));

    // The copy's own retention: the newest backup of each kind stays in the copy, the
    // older physical one goes from it (not from the source) and is not copied again.
    let source_before = files(repo.dir().expect("dir"));
    let mut keeping = copy_command(&pg, &repo, &s3, &copy);
    keeping.args(["--keep-last", "1"]);
    let out = run_ok(keeping);
    assert!(
        out.contains(&format!("copy: delete physical {first}")),
        "{out}"
    );
    assert_eq!(complete_backups(&pg, &copy), vec![logical, second.clone()]);
    assert_eq!(files(repo.dir().expect("dir")), source_before);
    let mut again = copy_command(&pg, &repo, &s3, &copy);
    again.args(["--keep-last", "1"]);
    let out = run_ok(again);
    assert!(
        out.contains("1 backup(s) not copied")
            && out.contains("0 backup(s) and 0 WAL file(s) copied"),
        "{out}"
    );

    // The first repository is gone: the copy alone restores to the latest moment.
    drop(repo);
    let (restored, _) = restore_and_start(
        &pg,
        &copy,
        pg.bin_dir(),
        &["--backup", &second, "--target-latest"],
    );
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "1600");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_as_recorded_is_not_copied_and_another_cluster_is_refused() {
    let s3 = S3Server::start().await;
    let (pg, repo) = server_archiving_with_wal_push();
    let copy = TestRepo::S3(&s3, "second-copy".into());
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) id",
    );
    switch_and_wait_archived(&pg, &repo);
    let root = repo.dir().expect("dir").to_path_buf();
    let wal = files(&root)
        .into_iter()
        .map(|(path, _)| path)
        .find(|path| {
            path.contains("/wal/") && !path.ends_with(".json") && !path.ends_with(".history")
        })
        .expect("a WAL file");
    corrupt(Path::new(&wal));
    let err = run_err(copy_command(&pg, &repo, &s3, &copy));
    assert!(
        error_lines(&err)
            .iter()
            .any(|l| l.contains("does not read back") && l.contains("not copied")),
        "{err}"
    );

    // A backup whose data chunk was altered after it was stored.
    std::fs::remove_file(&wal).expect("remove the bad WAL file");
    let id = backup(&pg, &repo, "physical");
    let chunk = files(&root)
        .into_iter()
        .map(|(path, _)| path)
        .find(|path| path.contains(&id) && path.contains("data.tar"))
        .expect("the backup's data");
    corrupt(Path::new(&chunk));
    let err = run_err(copy_command(&pg, &repo, &s3, &copy));
    assert!(
        error_lines(&err)
            .iter()
            .any(|l| l.contains("is not what backup") && l.contains(&id)),
        "{err}"
    );
    assert!(
        !complete_backups(&pg, &copy).contains(&id),
        "no complete copy of a backup whose data is not as recorded"
    );

    // Another cluster archiving under the same server name is not mixed into the copy
    // (which holds the first cluster's archive since its first run).
    let (other, other_repo) = server_archiving_with_wal_push();
    switch_and_wait_archived(&other, &other_repo);
    let err = run_err(copy_command(&other, &other_repo, &s3, &copy));
    assert!(err.contains("refusing to mix two clusters"), "{err}");
}
