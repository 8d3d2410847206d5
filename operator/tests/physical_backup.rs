//! Physical backups end to end: a database of a few hundred MB made by `pgbench -i` is
//! backed up into S3 with `pg_basebackup`, the backup verifies with `pg_verifybackup`, is
//! restored into a new data directory, PostgreSQL starts on it and every row is there. The
//! agent's peak memory stays bounded while it streams far more than its buffers.

mod support;

use std::time::Duration;

use support::{
    agent::{TestRepo, pgbackup, run_ok},
    postgres::{PgServer, peak_rss_kib},
    s3::S3Server,
};

/// pgbench scale: 100,000 accounts per unit, about 15 MB each.
const SCALE: u32 = 20;
/// The agent's memory bound (RSS).
const MAX_RSS_MIB: u64 = 150;

#[tokio::test(flavor = "multi_thread")]
async fn physical_backup_to_s3_restores_every_row_with_bounded_memory() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();
    let repo = TestRepo::S3(&s3, "phys".into());
    // Uncompressed, so that hundreds of MiB go through the multipart upload, far more than
    // its buffers (part size x concurrency = 64 MiB).
    tokio::task::block_in_place(|| round_trip(&pg, &repo, SCALE, &["--compression", "none"]));
}

#[test]
fn physical_backup_to_a_directory_restores_every_row() {
    let pg = PgServer::start();
    round_trip(&pg, &TestRepo::fs(), 5, &[]);
}

fn round_trip(pg: &PgServer, repo: &TestRepo<'_>, scale: u32, extra: &[&str]) {
    let init = pg.tool(
        "pgbench",
        &["-i", "-q", "-s", &scale.to_string(), "postgres"],
    );
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let db_bytes: u64 = pg
        .psql("postgres", "SELECT pg_database_size('postgres')")
        .parse()
        .expect("size");
    let before = pg.psql("postgres", "SELECT count(*) || ' ' || sum(abalance) || ' ' || md5(string_agg(aid::text, ',' ORDER BY aid)) FROM pgbench_accounts");

    // Run the backup and watch its memory while it streams.
    let mut args = vec!["backup", "--method", "physical", "--progress-interval", "1"];
    args.extend_from_slice(extra);
    let mut command = pgbackup(pg, repo, &args);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().expect("start backup");
    let pid = child.id();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let out = child.wait_with_output().expect("backup ran");
    let peak_kib = watcher.join().expect("watcher");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let size = summary["size"].as_u64().expect("size");
    println!(
        "physical backup: database {} MiB, streamed {} MiB, stored {} MiB, agent peak RSS {} MiB",
        db_bytes >> 20,
        size >> 20,
        summary["storedSize"].as_u64().unwrap_or_default() >> 20,
        peak_kib >> 10
    );
    assert!(
        size >= db_bytes / 2,
        "the tar stream holds the database ({size} of {db_bytes} bytes)"
    );
    assert!(
        peak_kib >> 10 < MAX_RSS_MIB,
        "agent peak RSS {} MiB is over {MAX_RSS_MIB} MiB",
        peak_kib >> 10
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("complete:") && stderr.contains("ratio"),
        "a closing summary line is logged: {stderr}"
    );
    for field in [
        "beginLsn",
        "endLsn",
        "beginWal",
        "endWal",
        "systemIdentifier",
        "serverVersion",
    ] {
        assert!(summary[field].is_string(), "{field} recorded: {summary}");
    }
    assert_eq!(summary["timeline"], 1);
    let backup_id = summary["backupId"].as_str().expect("id").to_string();

    let verified = run_ok(pgbackup(pg, repo, &["verify", "--backup", &backup_id]));
    assert!(verified.contains("physical: ok"), "{verified}");

    // Rows written after the backup must not appear in the restore.
    pg.psql("postgres", "DELETE FROM pgbench_accounts WHERE aid <= 1000");

    let restored = PgServer::start_restored(pg.password(), pg.bin_dir(), |pgdata| {
        run_ok(pgbackup(
            pg,
            repo,
            &[
                "restore",
                "--backup",
                &backup_id,
                "--pgdata",
                &pgdata.to_string_lossy(),
            ],
        ));
    });
    let after = restored.psql("postgres", "SELECT count(*) || ' ' || sum(abalance) || ' ' || md5(string_agg(aid::text, ',' ORDER BY aid)) FROM pgbench_accounts");
    assert_eq!(after, before);
    assert_eq!(restored.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
}
