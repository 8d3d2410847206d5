//! Client-side encryption end to end: backups and archived WAL are stored as age files
//! nobody without the key can read, restore with the key (also after a key rotation), and
//! fail clearly with a wrong or missing key.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use support::{
    agent::{TestRepo, pgbackup, run, run_ok},
    postgres::PgServer,
    s3::S3Server,
    wal::{
        Archiver, SERVER, binary_for_cluster_user, fs_repo_for, pgbackup_as_cluster_user,
        restore_and_start, scratch_dir_for, switch_and_wait_archived, switch_wal,
        wait_for_archived,
    },
};

/// A row no stored byte may show.
const MARKER: &str = "the-secret-recipe-4711";

fn new_key() -> String {
    let mut keygen = Command::new(env!("CARGO_BIN_EXE_pgbackup"));
    keygen.arg("keygen");
    run_ok(keygen)
}

fn with_key(mut command: Command, key: &str) -> Command {
    command.env("PGBACKUP_ENCRYPTION_KEY", key);
    command
}

/// Every file under `root`, read whole.
fn stored_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path.to_string_lossy().into_owned(), bytes));
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every archived WAL file under `root` is an age file (`.age`) that shows no row.
fn assert_wal_encrypted(root: &Path) {
    let wal: Vec<_> = stored_files(root)
        .into_iter()
        .filter(|(path, _)| path.contains("/wal/0000"))
        .collect();
    assert!(!wal.is_empty(), "WAL was archived");
    for (path, bytes) in &wal {
        assert!(path.ends_with(".age"), "{path}");
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{path}");
        assert!(!contains(bytes, MARKER.as_bytes()), "{path} shows the row");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_logical_backup_in_s3_restores_only_with_its_key() {
    let s3 = S3Server::start().await;
    tokio::task::block_in_place(|| {
        let pg = PgServer::start();
        let repo = TestRepo::S3(&s3, "enc".into());
        pg.psql("postgres", "CREATE DATABASE kitchen");
        pg.psql(
            "kitchen",
            &format!("CREATE TABLE recipes (body text); INSERT INTO recipes VALUES ('{MARKER}')"),
        );
        let key = new_key();
        // Uncompressed, so that only the encryption stands between the row and the bucket.
        let summary = run_ok(with_key(
            pgbackup(
                &pg,
                &repo,
                &["backup", "--method", "logical", "--compression", "none"],
            ),
            &key,
        ));
        assert!(summary.contains("\"encrypted\": true"), "{summary}");
        let secret_line = key.lines().find(|l| l.starts_with("AGE-SECRET-KEY-"));
        let secret_line = secret_line.expect("secret line");
        // The server's own metadata files sit beside the objects, named with a dot.
        let objects = stored_files(&s3.storage_dir())
            .into_iter()
            .filter(|(path, _)| !path.rsplit('/').next().unwrap_or("").starts_with('.'));
        for (path, bytes) in objects {
            assert!(!contains(&bytes, MARKER.as_bytes()), "{path} shows the row");
            assert!(
                !contains(&bytes, secret_line.as_bytes()),
                "{path} holds the key"
            );
            if !path.ends_with("manifest.json") {
                assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{path}");
            }
        }

        pg.psql("postgres", "DROP DATABASE kitchen");
        let restore = || {
            pgbackup(
                &pg,
                &repo,
                &["restore", "--logical", "--database", "kitchen"],
            )
        };
        let err = String::from_utf8_lossy(&run(restore()).stderr).into_owned();
        assert!(
            err.contains("is encrypted: give the repository's encryption key"),
            "{err}"
        );
        let err =
            String::from_utf8_lossy(&run(with_key(restore(), &new_key())).stderr).into_owned();
        assert!(err.contains("none of the keys given opens it"), "{err}");
        let err = String::from_utf8_lossy(&run(with_key(restore(), "hunter2")).stderr).into_owned();
        assert!(err.contains("is not an age identity"), "{err}");
        assert!(
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'kitchen'"
            ) == "0",
            "failed restores created nothing"
        );

        // After a rotation the Secret holds the new key first and the old one below it.
        let rotated = format!("{}{key}", new_key());
        run_ok(with_key(restore(), &rotated));
        assert_eq!(pg.psql("kitchen", "SELECT body FROM recipes"), MARKER);
        // `verify` reads encrypted objects with the key, and fails without it.
        run_ok(with_key(pgbackup(&pg, &repo, &["verify"]), &rotated));
        assert!(!run(pgbackup(&pg, &repo, &["verify"])).status.success());
    });
}

#[test]
fn encrypted_wal_and_base_backup_recover_to_a_point_in_time() {
    let key = new_key();
    let repo = TestRepo::fs();
    let dir = repo.dir().expect("fs repository").to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // The server's archive_command reads the key from a file only its user can read.
    let key_dir = tempfile::tempdir().expect("key dir");
    let key_file = key_dir.path().join("age.key");
    std::fs::write(&key_file, &key).expect("key");
    std::fs::set_permissions(key_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let archive_command = format!(
        "archive_command = '\"{}\" wal-push --repository file://{} --server {SERVER} --encryption-key-file {} %p'",
        binary_for_cluster_user().display(),
        dir.display(),
        key_file.display()
    );
    let pg = PgServer::start_with(support::postgres::PgConfig {
        settings: vec!["archive_mode = on".into(), archive_command],
        ..support::postgres::PgConfig::default()
    });
    pg.psql("postgres", "CREATE TABLE orders (item text)");
    run_ok(with_key(
        pgbackup_as_cluster_user(&pg, &repo, &["backup", "--method", "physical"]),
        &key,
    ));
    pg.psql(
        "postgres",
        &format!("INSERT INTO orders VALUES ('{MARKER}')"),
    );
    pg.psql("postgres", "SELECT pg_create_restore_point('noon')");
    pg.psql("postgres", "INSERT INTO orders VALUES ('after noon')");
    switch_and_wait_archived(&pg, &repo);

    assert_wal_encrypted(&dir);

    let target = ["--target-name", "noon", "--backup", "latest"];
    let scratch = support::wal::scratch_dir_for(&pg);
    let plain = scratch.path().join("no-key");
    let plain_arg = plain.to_string_lossy().into_owned();
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();
    let out = run(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            &plain_arg,
            "--recover",
            "--pg-bin",
            &pg_bin,
            "--target-name",
            "noon",
            "--backup",
            "latest",
        ],
    ));
    assert!(!out.status.success(), "no key, no restore");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is encrypted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let key_arg = key_file.to_string_lossy().into_owned();
    let mut with_file = vec!["--encryption-key-file", key_arg.as_str()];
    with_file.extend_from_slice(&target);
    let (restored, summary) = restore_and_start(&pg, &repo, pg.bin_dir(), &with_file);
    assert!(summary.contains("noon"), "{summary}");
    assert_eq!(
        restored.psql("postgres", "SELECT string_agg(item, ',') FROM orders"),
        MARKER
    );
}

#[test]
fn the_streaming_archiver_stores_encrypted_wal_a_restore_replays() {
    let key = new_key();
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    let key_dir = scratch_dir_for(&pg);
    let key_file = key_dir.path().join("age.key");
    std::fs::write(&key_file, &key).expect("key");
    let key_arg = key_file.to_string_lossy().into_owned();
    pg.psql("postgres", "CREATE TABLE t (phase text)");
    let archiver = Archiver::start(
        &pg,
        &repo,
        &[
            "--partial-upload-seconds",
            "1",
            "--encryption-key-file",
            &key_arg,
        ],
    );
    run_ok(with_key(
        pgbackup_as_cluster_user(&pg, &repo, &["backup", "--method", "physical"]),
        &key,
    ));
    pg.psql("postgres", &format!("INSERT INTO t VALUES ('{MARKER}')"));
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(30));
    archiver.stop();
    assert_wal_encrypted(repo.dir().expect("fs repository"));
    let (restored, _) = restore_and_start(
        &pg,
        &repo,
        pg.bin_dir(),
        &["--encryption-key-file", &key_arg, "--target-latest"],
    );
    assert_eq!(restored.psql("postgres", "SELECT phase FROM t"), MARKER);
}

/// The key and the S3 credentials are pgbackup's alone: PostgreSQL's tools it starts (here
/// `pg_dump` and `pg_dumpall`, which run the server's code and extensions' output) do not
/// inherit them.
#[tokio::test(flavor = "multi_thread")]
async fn the_tools_a_backup_runs_do_not_inherit_the_key_or_the_s3_credentials() {
    let s3 = S3Server::start().await;
    tokio::task::block_in_place(|| {
        let pg = PgServer::start();
        let repo = TestRepo::S3(&s3, "env".into());
        let bin = tempfile::tempdir().expect("temp dir");
        let seen = bin.path().join("seen");
        for entry in std::fs::read_dir(pg.bin_dir()).expect("bin dir").flatten() {
            let name = entry.file_name();
            if name == "pg_dump" || name == "pg_dumpall" {
                // Records its environment, then runs the real tool.
                let script = format!(
                    "#!/bin/sh\nenv >> \"{}\"\nexec \"{}\" \"$@\"\n",
                    seen.display(),
                    entry.path().display()
                );
                let path = bin.path().join(&name);
                std::fs::write(&path, script).expect("write wrapper");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            } else {
                std::os::unix::fs::symlink(entry.path(), bin.path().join(&name)).expect("link");
            }
        }
        let key = new_key();
        let mut command = with_key(
            pgbackup(&pg, &repo, &["backup", "--method", "logical"]),
            &key,
        );
        command.env("PGBACKUP_PG_BIN", bin.path());
        let summary = run_ok(command);
        assert!(summary.contains("\"encrypted\": true"), "{summary}");
        let seen = std::fs::read_to_string(&seen).expect("the tools ran");
        assert!(seen.contains("PGHOST="), "the tools got their own settings");
        for name in [
            "PGBACKUP_ENCRYPTION_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(
                !seen.contains(&format!("{name}=")),
                "a tool inherited {name}"
            );
        }
        assert!(!seen.contains("AGE-SECRET-KEY-"), "a tool saw the key");
    });
}

#[test]
fn a_manifest_altered_or_written_without_the_key_is_refused() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = TestRepo::fs();
    let key = new_key();
    run_ok(with_key(
        pgbackup(
            &pg,
            &repo,
            &["backup", "--method", "logical", "--database", "shop"],
        ),
        &key,
    ));
    pg.psql("postgres", "DROP DATABASE shop");
    let manifest = support::agent::find_file(repo.dir().expect("dir"), "manifest.json");
    let original = std::fs::read(&manifest).expect("manifest");
    let doc: serde_json::Value = serde_json::from_slice(&original).expect("json");
    assert!(
        doc["mac"].is_string(),
        "the manifest carries its MAC: {doc}"
    );
    let rewrite = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut doc: serde_json::Value = serde_json::from_slice(&original).expect("json");
        change(&mut doc);
        std::fs::write(&manifest, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    };
    let restore = |allow: bool| {
        let mut command = with_key(
            pgbackup(&pg, &repo, &["restore", "--logical", "--no-globals"]),
            &key,
        );
        if allow {
            command.env("PGBACKUP_ALLOW_UNENCRYPTED", "true");
        }
        run(command)
    };
    let refused = |allow: bool, words: &str| {
        let out = restore(allow);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(words), "{words:?} in {stderr}");
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'shop'"
            ),
            "0",
            "nothing was restored"
        );
    };

    // Altered by someone without the key: refused, even where plaintext is accepted.
    rewrite(&|doc| doc["databases"] = serde_json::json!(["shop", "postgres"]));
    refused(false, "is not authenticated by the encryption key");
    refused(true, "is not authenticated by the encryption key");
    // Written without a MAC: refused unless unauthenticated data is accepted.
    rewrite(&|doc| {
        doc.as_object_mut().expect("object").remove("mac");
    });
    refused(false, "carries no MAC under the encryption key");
    let out = restore(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql("postgres", "DROP DATABASE shop");

    // As written: restored.
    std::fs::write(&manifest, &original).expect("write");
    let out = restore(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM t"), "1");
}
