//! Bad input and faults: each ends in a non-zero exit with one clear error line naming the
//! cause, no manifest, and no stray objects or multipart uploads in the repository.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path};

use support::{
    agent::{TestRepo, error_lines, find_file, pgbackup, run_err, run_ok},
    free_port,
    postgres::PgServer,
    s3::S3Server,
};

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.path().display().to_string());
            }
        }
    }
    out
}

fn one_error_line(stderr: &str, expected: &str) {
    let lines = error_lines(stderr);
    assert_eq!(
        lines.len(),
        1,
        "one error line, got {lines:?} in:\n{stderr}"
    );
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {:?}",
        lines[0]
    );
}

#[test]
fn unreachable_database_writes_nothing() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let port = free_port().to_string();
    let mut command = pgbackup(&pg, &repo, &["backup", "--method", "logical"]);
    command.env("PGPORT", &port);
    let stderr = run_err(command);
    one_error_line(
        &stderr,
        &format!("cannot reach PostgreSQL at 127.0.0.1:{port}"),
    );
    assert!(files_under(repo.dir().expect("dir")).is_empty());
}

#[test]
fn wrong_password_writes_nothing() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let mut command = pgbackup(&pg, &repo, &["backup", "--method", "physical"]);
    command.env("PGPASSWORD", "not-the-password");
    let stderr = run_err(command);
    one_error_line(
        &stderr,
        "refused the login with the credentials given: password authentication failed for user \"[redacted]\"",
    );
    assert!(files_under(repo.dir().expect("dir")).is_empty());
}

/// Security: a credentials Secret's `usernameKey` may name any key of any Secret; the
/// login fails, and what the agent reports must not carry the value — not in its error, its
/// result (the pod's termination message, then status and events), or its logs.
#[test]
fn values_from_secrets_never_appear_in_the_agents_output() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let stolen = "ghp_5xQ9tokenOfAnotherApp";
    let password = "pw-of-another-app-8812";
    let result = tempfile::NamedTempFile::new().expect("result file");
    for format in ["json", "text"] {
        let mut command = pgbackup(&pg, &repo, &["backup", "--method", "logical"]);
        command
            .env("PGUSER", stolen)
            .env("PGPASSWORD", password)
            .env("PGBACKUP_LOG_FORMAT", format)
            .env("RUST_LOG", "debug")
            .env("PGBACKUP_RESULT_FILE", result.path());
        let stderr = run_err(command);
        let reported = std::fs::read_to_string(result.path()).expect("result");
        for output in [&stderr, &reported] {
            assert!(output.contains("refused the login"), "{output}");
            assert!(!output.contains(stolen), "the user name leaked:\n{output}");
            assert!(!output.contains(password), "the password leaked:\n{output}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_and_wrong_s3_credentials_are_named() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();

    let missing = TestRepo::S3(&s3, "x".into());
    let mut command = pgbackup(&pg, &missing, &["backup", "--method", "logical"]);
    command.env("PGBACKUP_REPOSITORY", "s3://no-such-bucket/x");
    let stderr = tokio::task::block_in_place(|| run_err(command));
    one_error_line(&stderr, "bucket no-such-bucket does not exist");

    let repo = TestRepo::S3(&s3, "x".into());
    let mut command = pgbackup(&pg, &repo, &["backup", "--method", "logical"]);
    command.env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    let stderr = tokio::task::block_in_place(|| run_err(command));
    one_error_line(&stderr, "secret access key is wrong");

    assert!(s3.keys("").await.is_empty(), "nothing was written");
}

/// A `pg_dump` that dies after writing `bytes` bytes, beside links to the real tools.
fn dying_pg_dump(pg: &PgServer, bytes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(pg.bin_dir()).expect("bin dir").flatten() {
        if entry.file_name() != "pg_dump" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))
                .expect("link");
        }
    }
    let script = format!(
        "#!/bin/sh\n\"{}\" \"$@\" | head -c {bytes}\nkill -9 $$\n",
        pg.bin_dir().join("pg_dump").display()
    );
    let path = dir.path().join("pg_dump");
    std::fs::write(&path, script).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_that_dies_half_way_fails_and_leaves_nothing() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();
    // Random text compresses poorly: the dump is well past one 5 MiB part when it dies.
    pg.psql("postgres", "CREATE TABLE noise AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS a FROM generate_series(1, 600000) g");
    let bin = dying_pg_dump(&pg, 30_000_000);
    let repo = TestRepo::S3(&s3, "faults".into());
    let mut command = pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--s3-part-size-mib", "5"],
    );
    command.env("PGBACKUP_PG_BIN", bin.path());
    let stderr = tokio::task::block_in_place(|| run_err(command));
    one_error_line(&stderr, "pg_dump failed");

    let keys = s3.keys("").await;
    assert!(
        keys.is_empty(),
        "no objects of the failed backup remain: {keys:?}"
    );
    // The test server does not implement ListMultipartUploads; it keeps the parts of
    // unfinished uploads as files, so an aborted upload leaves no file behind. (It keeps the
    // metadata sidecars of deleted objects, which hold no data.)
    let leftovers: Vec<String> = files_under(&s3.storage_dir())
        .into_iter()
        .filter(|f| !f.ends_with(".metadata.json") && !f.ends_with(".internal.json"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no multipart upload parts are left behind: {leftovers:?}"
    );
    let listed = tokio::task::block_in_place(|| run_ok(pgbackup(&pg, &repo, &["list"])));
    assert_eq!(listed.trim(), "no backups");
}

#[test]
fn corrupt_and_truncated_objects_fail_verify_and_restore_by_name() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
    );
    let repo = TestRepo::fs();
    run_ok(pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--database", "shop"],
    ));
    pg.psql("postgres", "DROP DATABASE shop");

    // Flip one byte in the middle of the dump: same size, different content.
    let dump = find_file(repo.dir().expect("dir"), "shop.dump.zst");
    let mut bytes = std::fs::read(&dump).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&dump, &bytes).expect("write");
    let stderr = run_err(pgbackup(&pg, &repo, &["verify"]));
    one_error_line(&stderr, "shop.dump.zst is corrupt");
    let stderr = run_err(pgbackup(&pg, &repo, &["restore", "--logical"]));
    one_error_line(&stderr, "shop.dump.zst is corrupt");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop'"
        ),
        "0",
        "a corrupt restore leaves no database behind"
    );

    // A database that exists is not dropped for a dump that turns out corrupt.
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE precious AS SELECT 42 AS answer");
    let stderr = run_err(pgbackup(
        &pg,
        &repo,
        &["restore", "--logical", "--clean", "--database", "shop"],
    ));
    one_error_line(&stderr, "shop.dump.zst is corrupt");
    assert_eq!(
        pg.psql("shop", "SELECT answer FROM precious"),
        "42",
        "the existing data is untouched"
    );

    // Truncate it: restore refuses before it starts.
    std::fs::write(&dump, &bytes[..middle]).expect("truncate");
    let stderr = run_err(pgbackup(&pg, &repo, &["restore", "--logical"]));
    one_error_line(&stderr, "shop.dump.zst is corrupt");
    let stderr = run_err(pgbackup(&pg, &repo, &["verify"]));
    one_error_line(&stderr, "shop.dump.zst is corrupt: truncated");
}

/// Starts a physical backup of a server with some incompressible rows, waits until
/// `stored` says it stored something, sends it SIGTERM and checks it ends with one clear
/// error line.
fn stop_half_way(pg: &PgServer, repo: &TestRepo<'_>, stored: impl Fn() -> bool) {
    pg.psql(
        "postgres",
        "CREATE TABLE filler AS SELECT i, md5(random()::text) || md5(random()::text) AS t \
         FROM generate_series(1, 1500000) i",
    );
    let args = ["backup", "--method", "physical", "--s3-part-size-mib", "5"];
    let mut child = pgbackup(pg, repo, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbackup backup");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stored() {
        assert!(std::time::Instant::now() < deadline, "nothing stored");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the backup finished before it could be stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success(), "a stopped backup does not succeed");
    one_error_line(
        &String::from_utf8_lossy(&out.stderr),
        "stopped by a signal before backup",
    );
}

/// A backup Job's pod is sent SIGTERM when its PostgresBackup is deleted or the pod is
/// evicted. The backup it was writing is not kept: nothing reports it, so nothing would
/// ever delete it. Not a file (temporary ones included) stays.
#[test]
fn a_backup_stopped_by_a_signal_removes_what_it_stored() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let dir = repo.dir().expect("dir");
    let base = || -> Vec<String> {
        files_under(dir)
            .into_iter()
            .filter(|f| f.contains("/base/"))
            .collect()
    };
    stop_half_way(&pg, &repo, || !base().is_empty());
    assert!(base().is_empty(), "the stopped backup left {:?}", base());
}

/// The same on S3: no object, and no part of an unfinished multipart upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_stopped_by_a_signal_leaves_no_upload_on_s3() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();
    let repo = TestRepo::S3(&s3, "stopped".into());
    // The test server keeps the parts of unfinished uploads as files (and metadata
    // sidecars of deleted objects, which hold no data).
    let stored = || -> Vec<String> {
        files_under(&s3.storage_dir())
            .into_iter()
            .filter(|f| !f.ends_with(".metadata.json") && !f.ends_with(".internal.json"))
            .collect()
    };
    tokio::task::block_in_place(|| stop_half_way(&pg, &repo, || !stored().is_empty()));
    assert_eq!(s3.keys("").await, Vec::<String>::new());
    // A part upload cut off mid-body leaves the test server's temporary file for that
    // request until the server notices the closed connection (S3 keeps nothing of it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored().iter().any(|f| f.contains("/.tmp.")) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        stored().is_empty(),
        "the stopped backup left {:?}",
        stored()
    );
}
