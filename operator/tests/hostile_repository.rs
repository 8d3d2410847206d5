//! A repository someone else can write to must not be able to attack its reader: a
//! manifest that names files outside its backup leads neither a restore nor a prune to
//! other servers' objects, and a physical backup holding a symbolic link out of the data
//! directory is refused before anything is written through it, and a globals script
//! carrying `psql` commands runs none of them. A backup's configuration loads no library
//! and runs no command in the servers the agent starts on restored data.

mod support;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use support::{
    agent::{TestRepo, error_lines, find_file, pgbackup, run_err, run_ok},
    postgres::PgServer,
    wal::{fs_repo_for, pgbackup_as_cluster_user, scratch_dir_for},
};

/// The one error line of a failed command, which must name `expected`.
fn refused_with(stderr: &str, expected: &str) {
    let lines = error_lines(stderr);
    assert_eq!(lines.len(), 1, "one error line: {lines:?}\n{stderr}");
    assert!(
        lines[0].contains(expected),
        "{expected:?} in {:?}",
        lines[0]
    );
}

/// A backup by the cluster's OS user: its id and the SHA-256 of its manifest, as it
/// reported them.
fn backup_recorded(pg: &PgServer, repo: &TestRepo<'_>, method: &str) -> (String, String) {
    let summary = run_ok(pgbackup_as_cluster_user(
        pg,
        repo,
        &["backup", "--method", method],
    ));
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("summary");
    let field = |name: &str| summary[name].as_str().expect(name).to_string();
    (field("backupId"), field("manifestSha256"))
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    edit(&mut doc);
    std::fs::write(path, serde_json::to_vec(&doc).expect("json")).expect("write");
}

#[test]
fn a_manifest_naming_files_outside_its_backup_is_refused_and_prune_deletes_nothing() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = TestRepo::fs();
    let root = repo.dir().expect("dir").to_path_buf();
    // Another team's backup in the same repository, under its own server name.
    let mut theirs = pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--database", "shop"],
    );
    theirs.env("PGBACKUP_SERVER", "other-team");
    run_ok(theirs);
    let their_dump = find_file(&root.join("other-team"), "shop.dump.zst");
    run_ok(pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--database", "shop"],
    ));

    // Whoever can write to our part of the bucket points our manifest at their dump.
    let manifest = find_file(&root.join("test-pg"), "manifest.json");
    let ours = manifest.parent().expect("backup directory");
    let up = "../".repeat(
        ours.strip_prefix(&root)
            .expect("inside")
            .components()
            .count(),
    );
    let outside = format!(
        "{up}{}",
        their_dump.strip_prefix(&root).expect("inside").display()
    );
    edit_json(&manifest, |doc| {
        for object in doc["objects"].as_array_mut().expect("objects") {
            for chunk in object["chunks"].as_array_mut().expect("chunks") {
                chunk["file"] = outside.clone().into();
            }
        }
    });

    for args in [&["restore", "--logical"][..], &["verify"], &["list"]] {
        let stderr = run_err(pgbackup(&pg, &repo, args));
        refused_with(
            &stderr,
            "is not a plain file name of the backup's directory",
        );
    }
    let stderr = run_err(pgbackup(&pg, &repo, &["prune", "--keep-none", "--delete"]));
    refused_with(&stderr, "is not a plain file name");
    assert!(their_dump.exists(), "the other team's dump is still there");
}

/// Rewrites the stored object `file` (one chunk, zstd) of the only backup in `root`:
/// `change` gets its plain bytes and returns new ones; the manifest's sizes and checksum
/// are made to match, as someone who can write to the repository would.
fn rewrite_object(root: &Path, file: &str, change: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let stored = find_file(root, file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let plain = runtime.block_on(async {
        let compressed = std::fs::read(&stored).expect("object");
        let mut plain = Vec::new();
        async_compression::tokio::bufread::ZstdDecoder::new(compressed.as_slice())
            .read_to_end(&mut plain)
            .await
            .expect("decompress");
        plain
    });
    let plain = change(plain);
    let compressed = runtime.block_on(async {
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdEncoder::new(plain.as_slice())
            .read_to_end(&mut out)
            .await
            .expect("compress");
        out
    });
    std::fs::write(&stored, &compressed).expect("object");
    let manifest = stored.parent().expect("dir").join("manifest.json");
    edit_json(&manifest, |doc| {
        for object in doc["objects"].as_array_mut().expect("objects") {
            if object["chunks"][0]["file"] != file {
                continue;
            }
            object["size"] = plain.len().into();
            let chunks = object["chunks"].as_array_mut().expect("chunks");
            chunks.truncate(1);
            chunks[0]["size"] = compressed.len().into();
            chunks[0]["sha256"] = format!("{:x}", Sha256::digest(&compressed)).into();
        }
    });
}

/// [`rewrite_object`] for the tar of a physical backup: `change` edits the unpacked tree.
fn rewrite_data(root: &Path, change: impl FnOnce(&Path)) {
    rewrite_object(root, "data.tar.zst", |tar| {
        let tree = tempfile::tempdir().expect("temp dir");
        let tar_file = tree.path().join("data.tar");
        std::fs::write(&tar_file, &tar).expect("tar");
        let unpacked = tree.path().join("data");
        std::fs::create_dir(&unpacked).expect("dir");
        let run = |args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new("tar")
                .args(args)
                .status()
                .expect("tar");
            assert!(status.success(), "tar {args:?}");
        };
        run(&[
            "-x".as_ref(),
            "-f".as_ref(),
            tar_file.as_os_str(),
            "-C".as_ref(),
            unpacked.as_os_str(),
        ]);
        change(&unpacked);
        run(&[
            "-c".as_ref(),
            "-f".as_ref(),
            tar_file.as_os_str(),
            "-C".as_ref(),
            unpacked.as_os_str(),
            ".".as_ref(),
        ]);
        std::fs::read(&tar_file).expect("tar")
    });
}

#[test]
fn a_globals_script_with_psql_commands_runs_none_of_them() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE ROLE shopkeeper LOGIN");
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = TestRepo::fs();
    run_ok(pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--database", "shop"],
    ));
    pg.psql("postgres", "DROP DATABASE shop");
    pg.psql("postgres", "DROP ROLE shopkeeper");
    let scratch = tempfile::tempdir().expect("temp dir");
    let pwned = scratch.path().join("pwned");
    rewrite_object(repo.dir().expect("dir"), "globals.sql.zst", |sql| {
        let mut sql = String::from_utf8(sql).expect("utf-8");
        sql.push_str(&format!(
            "CREATE ROLE visitor; \\! touch {}\n",
            pwned.display()
        ));
        sql.into_bytes()
    });
    let stderr = run_err(pgbackup(&pg, &repo, &["restore", "--logical"]));
    refused_with(&stderr, "holds a psql command");
    assert!(!pwned.exists(), "no shell ran in the agent");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('shopkeeper', 'visitor')"
        ),
        "0",
        "nothing of the script ran"
    );
}

#[test]
fn a_physical_backup_with_a_link_out_of_the_data_directory_is_refused() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = TestRepo::fs();
    run_ok(pgbackup(&pg, &repo, &["backup", "--method", "physical"]));
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("written-through-the-link");
    rewrite_data(repo.dir().expect("dir"), |tree| {
        let conf = tree.join("postgresql.auto.conf");
        std::fs::remove_file(&conf).expect("remove");
        std::os::unix::fs::symlink(&target, &conf).expect("symlink");
    });

    let scratch = tempfile::tempdir().expect("temp dir");
    let pgdata: PathBuf = scratch.path().join("restored");
    let stderr = run_err(pgbackup(
        &pg,
        &repo,
        &["restore", "--pgdata", pgdata.to_str().expect("path")],
    ));
    refused_with(&stderr, "holds a symbolic link postgresql.auto.conf -> ");
    assert!(!target.exists(), "nothing was written through the link");
    assert!(!pgdata.exists(), "nothing half-restored is left");
}

#[test]
fn a_restored_configuration_loads_no_library_and_runs_no_command() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = fs_repo_for(&pg);
    let marks = scratch_dir_for(&pg);
    let ran = marks.path().join("command-ran");
    // Whoever runs the server a backup is taken of decides its configuration: a library
    // to preload (missing here, so loading it would stop the server) and a command run
    // when recovery ends. ALTER SYSTEM puts them in the backup without restarting.
    for sql in [
        "ALTER SYSTEM SET shared_preload_libraries = 'planted_library'".to_string(),
        "ALTER SYSTEM SET session_preload_libraries = 'planted_library'".to_string(),
        // Per database, which the server's command line does not override: the restore
        // test's first session is to template1.
        "ALTER DATABASE template1 SET session_preload_libraries = 'planted_library'".to_string(),
        format!(
            "ALTER SYSTEM SET recovery_end_command = 'touch {}'",
            ran.display()
        ),
    ] {
        pg.psql("postgres", &sql);
    }
    let (id, _) = backup_recorded(&pg, &repo, "physical");
    let id = id.as_str();
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();

    let scratch = scratch_dir_for(&pg);
    let pgdata = scratch.path().join("restored");
    let recovered = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "restore",
            "--pgdata",
            pgdata.to_str().expect("path"),
            "--pg-bin",
            &pg_bin,
            "--target-immediate",
            "--recover",
        ],
    ));
    assert!(recovered.contains("recovered backup"), "{recovered}");
    assert!(
        !ran.exists(),
        "recovery ran the backup's recovery_end_command"
    );
    let conf = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).expect("conf");
    assert!(
        conf.contains("planted_library"),
        "the restored configuration is the backup's own: {conf}"
    );

    let verify_scratch = scratch_dir_for(&pg);
    let verified = run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "verify",
            "--restore",
            "--json",
            "--backup",
            id,
            "--scratch-dir",
            verify_scratch.path().to_str().expect("path"),
            "--pg-bin",
            &pg_bin,
        ],
    ));
    let verified: serde_json::Value = serde_json::from_str(&verified).expect("report");
    assert_eq!(verified["verified"], true, "{verified}");
    assert!(
        !ran.exists(),
        "the restore test ran the backup's recovery_end_command"
    );
}

#[test]
fn a_restore_test_pinned_to_its_backup_refuses_a_manifest_someone_else_wrote() {
    let pg = PgServer::start();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g",
    );
    let repo = fs_repo_for(&pg);
    let (id, sha256) = backup_recorded(&pg, &repo, "logical");
    let pg_bin = pg.bin_dir().to_string_lossy().into_owned();
    let verify = |expected: &str| {
        let scratch = scratch_dir_for(&pg);
        let scratch_arg = scratch.path().to_string_lossy().into_owned();
        support::agent::run(pgbackup_as_cluster_user(
            &pg,
            &repo,
            &[
                "verify",
                "--restore",
                "--json",
                "--backup",
                &id,
                "--expect-sha256",
                expected,
                "--scratch-dir",
                &scratch_arg,
                "--pg-bin",
                &pg_bin,
            ],
        ))
    };

    let out = verify(&sha256);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Someone with write access to the bucket replaces the manifest (here: a row count
    // that a planted dump would match).
    let manifest = find_file(repo.dir().expect("dir"), "manifest.json");
    edit_json(&manifest, |doc| {
        doc["rowCounts"][0]["rows"] = 11.into();
    });
    let out = verify(&sha256);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    refused_with(&stderr, "is not the one written when it was made");
}

#[test]
fn a_restore_pinned_to_its_backup_refuses_a_manifest_someone_else_wrote() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = fs_repo_for(&pg);
    let (id, sha256) = backup_recorded(&pg, &repo, "physical");
    let scratch = scratch_dir_for(&pg);
    let restore = |dir: &str, extra: &[&str]| {
        let pgdata = scratch.path().join(dir);
        let pgdata = pgdata.to_string_lossy().into_owned();
        let mut args = vec![
            "restore",
            "--pgdata",
            &pgdata,
            "--backup",
            &id,
            "--expect-sha256",
            &sha256,
        ];
        args.extend_from_slice(extra);
        support::agent::run(pgbackup_as_cluster_user(&pg, &repo, &args))
    };
    let out = restore("as-recorded", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = find_file(repo.dir().expect("dir"), "manifest.json");
    edit_json(&manifest, |doc| {
        doc["toolVersion"] = "pgbackup 0.0.0".into();
    });
    for (dir, extra) in [
        ("plain", &[][..]),
        ("to-a-target", &["--target-immediate"][..]),
    ] {
        let out = restore(dir, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        refused_with(&stderr, "is not the one written when it was made");
        assert!(!scratch.path().join(dir).exists(), "nothing was written");
    }
}
