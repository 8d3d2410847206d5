//! Parallel logical dumps (`--format directory --jobs N`) on a real server: stored file by
//! file as pg_dump writes them, so the local disk never holds the whole dump; restored in
//! parallel, and read back by `verify`.

mod support;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use support::{
    agent::{TestRepo, pgbackup, run, run_ok},
    postgres::PgServer,
    s3::S3Server,
};

const TABLES: usize = 24;

/// 24 tables of about 1 MiB of random text each, which compress only about 2:1.
fn populate(pg: &PgServer) {
    pg.psql("postgres", "CREATE DATABASE shop");
    for t in 0..TABLES {
        pg.psql(
            "shop",
            &format!(
                "CREATE TABLE t{t} (id int PRIMARY KEY, body text);
                 INSERT INTO t{t} SELECT g, repeat(md5(random()::text), 4) FROM generate_series(1, 7500) g"
            ),
        );
    }
}

fn fingerprint(pg: &PgServer) -> Vec<String> {
    (0..TABLES)
        .map(|t| {
            pg.psql(
                "shop",
                &format!(
                    "SELECT count(*) || ' ' || md5(string_agg(body, ',' ORDER BY id)) FROM t{t}"
                ),
            )
        })
        .collect()
}

fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_dump_is_stored_file_by_file_and_restores_in_parallel() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();
    let repo = TestRepo::S3(&s3, "prod/pg".into());
    tokio::task::block_in_place(|| {
        populate(&pg);
        let before = fingerprint(&pg);
        // The scratch directory is watched while the backup runs.
        let scratch = tempfile::tempdir().expect("scratch");
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (peak, done, dir) = (peak.clone(), done.clone(), scratch.path().to_path_buf());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(bytes_under(&dir), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let scratch_arg = scratch.path().display().to_string();
        let out = run(pgbackup(
            &pg,
            &repo,
            &[
                "backup",
                "--method",
                "logical",
                "--database",
                "shop",
                "--format",
                "directory",
                "--jobs",
                "3",
                "--scratch-dir",
                &scratch_arg,
                "--scratch-limit-mib",
                "2",
                // Slower to store than pg_dump is to write: pg_dump has to wait.
                "--compression",
                "gzip",
                "--compression-level",
                "9",
            ],
        ));
        done.store(true, Ordering::Relaxed);
        watcher.join().expect("watcher");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
        let objects = summary["objects"].as_array().expect("objects");
        let dump = objects
            .iter()
            .find(|o| o["name"] == "shop.dir.tar" && o["role"] == "databaseDirectory")
            .unwrap_or_else(|| panic!("no directory dump in {objects:?}"));
        let dump_size = dump["size"].as_u64().expect("size");
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak > 0, "the dump went through the scratch directory");
        // Paused above 2 MiB: the limit, the three tables being written and the one being
        // stored, not the whole dump.
        assert!(
            peak < dump_size / 2,
            "the scratch directory held {peak} bytes at most of a {dump_size}-byte dump"
        );
        assert_eq!(bytes_under(scratch.path()), 0, "nothing is left behind");

        let verified = run_ok(pgbackup(&pg, &repo, &["verify"]));
        assert!(verified.contains("logical: ok"), "{verified}");

        pg.psql("postgres", "DROP DATABASE shop");
        run_ok(pgbackup(
            &pg,
            &repo,
            &[
                "restore",
                "--logical",
                "--database",
                "shop",
                "--jobs",
                "3",
                "--scratch-dir",
                &scratch_arg,
            ],
        ));
        assert_eq!(fingerprint(&pg), before);
        assert_eq!(
            bytes_under(scratch.path()),
            0,
            "the unpacked dump is removed"
        );
    });
    let keys = s3.keys("prod/pg/test-pg/logical/").await;
    assert!(
        keys.iter().any(|k| k.ends_with("/shop.dir.tar.gz")),
        "{keys:?}"
    );
}

#[test]
fn a_failing_parallel_dump_stores_no_backup() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    // pg_dump cannot lock a table it may not read: the dump fails after it started.
    pg.psql("postgres", "CREATE ROLE dumper LOGIN PASSWORD 'dumper'");
    let mut command = pgbackup(
        &pg,
        &repo,
        &[
            "backup",
            "--method",
            "logical",
            "--database",
            "shop",
            "--no-globals",
            "--format",
            "directory",
            "--jobs",
            "2",
            "--pg-user",
            "dumper",
            "--no-row-counts",
        ],
    );
    command.env("PGPASSWORD", "dumper");
    let out = run(command);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pg_dump failed"), "{stderr}");
    let listed = run_ok(pgbackup(&pg, &repo, &["list"]));
    assert!(!listed.contains("logical"), "{listed}");
    let left = bytes_under(repo.dir().expect("fs repository"));
    assert_eq!(left, 0, "what the failed backup stored is removed");
}
