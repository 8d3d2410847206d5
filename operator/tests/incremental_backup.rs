//! Incremental physical backups on PostgreSQL 17 and 18 (`backup --incremental`): a full
//! backup and two incremental ones with writes in between, each restored to its end and to
//! a moment between them, with rows compared; on S3 with encryption and on a file
//! repository; retention and `prune` over chains; and the refusals (too old a server,
//! `summarize_wal` off or off for a while, no parent of the cluster, a parent deleted
//! while the incremental runs, a chain with a damaged member).

mod support;

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use support::{
    agent::{TestRepo, error_lines, run_err, run_ok},
    postgres::{PgConfig, PgServer, covered_version},
    s3::S3Server,
    wal::{
        Archiver, fs_repo_for, pgbackup_as_cluster_user, restore_and_start, switch_wal,
        wait_for_archived, wait_for_window,
    },
};

const NOW_UTC: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn start(server: &Path) -> PgServer {
    PgServer::start_with(PgConfig {
        bin_dir: Some(server.to_path_buf()),
        settings: vec!["summarize_wal = on".into()],
    })
}

/// Runs `pgbackup` as the cluster's user with `args` and the `common` ones (a key file).
fn agent(pg: &PgServer, repo: &TestRepo<'_>, common: &[&str], args: &[&str]) -> Command {
    pgbackup_as_cluster_user(pg, repo, &[args, common].concat())
}

fn backup(
    pg: &PgServer,
    repo: &TestRepo<'_>,
    common: &[&str],
    client: &str,
    extra: &[&str],
) -> Value {
    let mut args = vec!["backup", "--method", "physical", "--pg-bin", client];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(agent(pg, repo, common, &args))).expect("backup summary")
}

/// `backup --method physical --incremental` with the client tools in `client`.
fn incremental_backup(pg: &PgServer, repo: &TestRepo<'_>, client: &str) -> Command {
    agent(
        pg,
        repo,
        &[],
        &[
            "backup",
            "--method",
            "physical",
            "--incremental",
            "--pg-bin",
            client,
        ],
    )
}

fn id(summary: &Value) -> String {
    summary["backupId"].as_str().expect("backup id").to_string()
}

/// The rows per phase, and a digest of every row: what a user compares after a restore.
fn contents(pg: &PgServer) -> (String, String) {
    (
        pg.psql(
            "postgres",
            "SELECT string_agg(phase || ':' || n, ',' ORDER BY phase) FROM (SELECT phase, count(*) n FROM t GROUP BY phase) c",
        ),
        pg.psql(
            "postgres",
            "SELECT md5(string_agg(id || phase || body, ',' ORDER BY id)) FROM t",
        ),
    )
}

/// Writes rows of `phase` and changes a few of the bulk rows, as a day of work would.
fn write(pg: &PgServer, phase: &str) {
    pg.psql(
        "postgres",
        &format!(
            "INSERT INTO t (phase, body) SELECT '{phase}', md5(random()::text) FROM generate_series(1, 200); \
             UPDATE t SET body = md5(body) WHERE id % 997 = 0"
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_and_two_incrementals_restore_to_their_ends_and_between_on_17_and_18() {
    let s3 = S3Server::start().await;
    for major in [17, 18] {
        let Some((server, client)) = covered_version(major, true) else {
            continue;
        };
        let client = client.expect("client tools");
        let pg = tokio::task::block_in_place(|| start(&server));
        // 17 on a file repository with lz4, 18 on S3 encrypted with a key file.
        let key_dir = support::wal::scratch_dir_for(&pg);
        let key_file = key_dir.path().join("key");
        let key_arg = key_file.to_string_lossy().into_owned();
        let (repo, common, compression) = if major == 18 {
            let mut keygen = Command::new(env!("CARGO_BIN_EXE_pgbackup"));
            keygen.arg("keygen");
            std::fs::write(&key_file, run_ok(keygen)).expect("key file");
            if let Some((uid, gid)) = pg.os_user() {
                std::os::unix::fs::chown(&key_file, Some(uid), Some(gid)).expect("chown");
            }
            (
                TestRepo::S3(&s3, format!("incremental-{major}")),
                vec!["--encryption-key-file", key_arg.as_str()],
                "zstd",
            )
        } else {
            (fs_repo_for(&pg), Vec::new(), "lz4")
        };
        let s3_root = (major == 18).then(|| s3.storage_dir());
        let site = Site {
            pg: &pg,
            repo: &repo,
            s3_root: s3_root.as_deref(),
            common: &common,
        };
        tokio::task::block_in_place(|| chain_restores(major, &site, &server, &client, compression));
    }
}

/// The server and the repository a test backs up into.
struct Site<'a> {
    pg: &'a PgServer,
    repo: &'a TestRepo<'a>,
    /// Where s3s-fs stores the objects of an S3 repository.
    s3_root: Option<&'a Path>,
    /// Arguments every command takes (the key file).
    common: &'a [&'a str],
}

fn chain_restores(major: u32, site: &Site<'_>, server: &Path, client: &Path, compression: &str) {
    let Site {
        pg,
        repo,
        s3_root,
        common,
    } = *site;
    let client = client.to_string_lossy().into_owned();
    pg.psql(
        "postgres",
        "CREATE TABLE t (id bigserial PRIMARY KEY, phase text, body text); \
         INSERT INTO t (phase, body) SELECT 'base', md5(random()::text) || md5(random()::text) \
         FROM generate_series(1, 150000)",
    );
    let mut archiver_args = vec!["--partial-upload-seconds", "1", "--pg-bin", &client];
    archiver_args.extend(["--compression", compression]);
    archiver_args.extend_from_slice(common);
    let archiver = Archiver::start(pg, repo, &archiver_args);
    let with = ["--compression", compression];
    let incremental = [&with[..], &["--incremental"]].concat();
    let at_full = contents(pg);
    let full = backup(pg, repo, common, &client, &with);
    write(pg, "one");
    let at_inc1 = contents(pg);
    let inc1 = backup(pg, repo, common, &client, &incremental);
    write(pg, "two");
    let at_between = contents(pg);
    let between = pg.psql("postgres", NOW_UTC);
    std::thread::sleep(Duration::from_millis(50));
    write(pg, "three");
    let at_inc2 = contents(pg);
    let inc2 = backup(pg, repo, common, &client, &incremental);
    write(pg, "four");
    let last = switch_wal(pg);
    wait_for_archived(repo, s3_root, &last, &archiver, Duration::from_secs(60));
    wait_for_window(pg, repo, &between, Duration::from_secs(60));
    archiver.stop();

    let what = format!("PostgreSQL {major}");
    assert_eq!(inc1["chain"], serde_json::json!([id(&full)]), "{what}");
    assert_eq!(
        inc2["chain"],
        serde_json::json!([id(&full), id(&inc1)]),
        "{what}"
    );
    let (full_stored, inc_stored) = (
        full["storedSize"].as_u64().expect("size"),
        inc1["storedSize"].as_u64().expect("size"),
    );
    // Both carry the WAL segment their backup spans (16 MiB, partly last round's WAL that
    // does not compress): on a small database that is most of what an incremental stores.
    assert!(
        inc_stored * 4 < full_stored * 3,
        "{what}: an incremental stores what changed: {inc_stored} bytes against the full's {full_stored}"
    );

    let listed = run_ok(agent(pg, repo, common, &["list"]));
    let line_of = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{what}: {id} not listed:\n{listed}"))
            .to_string()
    };
    assert!(line_of(&id(&full)).contains(" physical "), "{listed}");
    assert!(
        line_of(&id(&inc2)).contains(" incremental ")
            && line_of(&id(&inc2)).contains(&format!("on top of {} (chain of 3)", id(&inc1))),
        "{what}:\n{listed}"
    );

    let bin = server.to_string_lossy().into_owned();
    assert_eq!(at_inc2.0, "base:150000,one:200,three:200,two:200");
    for (backup, rows) in [(&full, at_full), (&inc1, at_inc1), (&inc2, at_inc2)] {
        let backup_id = id(backup);
        let (restored, summary) = restore_and_start(
            pg,
            repo,
            server,
            &[&["--backup", &backup_id, "--target-immediate"], common].concat(),
        );
        assert_eq!(
            contents(&restored),
            rows,
            "{what}, backup {backup_id}: {summary}"
        );
        drop(restored);
    }
    // A moment between the two incrementals: the first one and the archived WAL after it.
    let (restored, summary) = restore_and_start(
        pg,
        repo,
        server,
        &[&["--target-time", &between], common].concat(),
    );
    assert_eq!(contents(&restored), at_between, "{what}: {summary}");
    assert_eq!(at_between.0, "base:150000,one:200,two:200");
    assert!(
        summary.contains(&format!(
            "recovered backup {} (incremental, on top of {})",
            id(&inc1),
            id(&full)
        )),
        "{what}: restored from the newest incremental before the moment: {summary}"
    );
    drop(restored);

    let verified = run_ok(agent(
        pg,
        repo,
        common,
        &["verify", "--backup", &id(&inc2), "--pg-bin", &bin],
    ));
    assert_eq!(
        verified.lines().count(),
        3,
        "{what}: the chain is verified with it:\n{verified}"
    );
    assert!(
        verified.contains(&format!("{} incremental: ok", id(&inc2))),
        "{verified}"
    );
    // The restore test of the last incremental: the chain combined, recovered, rows counted.
    let scratch = support::wal::scratch_dir_for(pg);
    let scratch_arg = scratch.path().to_string_lossy().into_owned();
    let test: Value = serde_json::from_str(&run_ok(agent(
        pg,
        repo,
        common,
        &[
            "verify",
            "--restore",
            "--json",
            "--backup",
            &id(&inc2),
            "--pg-bin",
            &bin,
            "--scratch-dir",
            &scratch_arg,
        ],
    )))
    .expect("restore test report");
    assert_eq!(test["verified"], true, "{what}: {test}");
    assert_eq!(test["rows"], 150_600, "{what}: {test}");
}

fn refused(command: Command, expected: &str) -> String {
    let stderr = run_err(command);
    let lines = error_lines(&stderr);
    assert!(
        lines.iter().any(|l| l.contains(expected)),
        "expected an error saying {expected:?}, got:\n{stderr}"
    );
    stderr
}

/// The backup directories of the server in a file repository.
fn stored_backups(repo: &TestRepo<'_>) -> Vec<String> {
    let base = repo
        .dir()
        .expect("file repository")
        .join("test-pg")
        .join("base");
    let mut ids: Vec<String> = std::fs::read_dir(&base)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn an_incremental_is_refused_where_the_server_or_the_repository_cannot_give_one() {
    let Some((server, client)) = covered_version(18, true) else {
        return;
    };
    let client = client.expect("client tools").to_string_lossy().into_owned();
    let incremental = ["--incremental"];

    // PostgreSQL 15 has no incremental backups.
    let old = PgServer::start();
    let repo = fs_repo_for(&old);
    refused(
        pgbackup_as_cluster_user(
            &old,
            &repo,
            &["backup", "--method", "physical", "--incremental"],
        ),
        "incremental backups need PostgreSQL 17 or later",
    );
    assert!(stored_backups(&repo).is_empty());
    drop(old);

    // summarize_wal off.
    let plain = PgServer::start_with(PgConfig {
        bin_dir: Some(server.clone()),
        settings: Vec::new(),
    });
    let repo = fs_repo_for(&plain);
    refused(
        incremental_backup(&plain, &repo, &client),
        "summarize_wal is off",
    );
    let fell_back = backup(
        &plain,
        &repo,
        &[],
        &client,
        &["--incremental", "--fall-back-to-full"],
    );
    assert!(
        fell_back["chain"].is_null()
            && fell_back["fullBecause"]
                .as_str()
                .is_some_and(|why| why.contains("summarize_wal is off")),
        "a full backup that says why: {fell_back}"
    );
    let repo = fs_repo_for(&plain);

    // Nothing to build on, then only backups of another cluster under the server's name.
    let pg = start(&server);
    refused(
        incremental_backup(&pg, &repo, &client),
        "take a full backup first",
    );
    backup(&plain, &repo, &[], &client, &[]);
    let other = plain.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    );
    refused(
        incremental_backup(&pg, &repo, &client),
        &format!("they are of {other}"),
    );
    assert_eq!(stored_backups(&repo).len(), 1, "nothing more stored");
    drop(plain);

    // summarize_wal off for a while after the full backup: the server has no summaries of
    // that stretch and refuses; the message says to take a full backup.
    let repo = fs_repo_for(&pg);
    let full = id(&backup(&pg, &repo, &[], &client, &[]));
    pg.psql("postgres", "ALTER SYSTEM SET summarize_wal = off");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    pg.psql(
        "postgres",
        "CREATE TABLE gap AS SELECT g FROM generate_series(1, 100000) g; SELECT pg_switch_wal(); CHECKPOINT",
    );
    pg.psql("postgres", "ALTER SYSTEM SET summarize_wal = on");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    refused(
        agent(
            &pg,
            &repo,
            &[],
            &[
                &["backup", "--method", "physical", "--pg-bin", &client],
                &incremental[..],
            ]
            .concat(),
        ),
        &format!("the server has no WAL summaries back to backup {full}"),
    );
    assert_eq!(
        stored_backups(&repo),
        std::slice::from_ref(&full),
        "the refused backup left nothing"
    );
    // Asked to fall back, it takes a full backup and says why.
    let fell_back = backup(
        &pg,
        &repo,
        &[],
        &client,
        &["--incremental", "--fall-back-to-full"],
    );
    assert!(
        fell_back["chain"].is_null()
            && fell_back["fullBecause"]
                .as_str()
                .is_some_and(|why| why.contains(&format!("no WAL summaries back to backup {full}"))),
        "{fell_back}"
    );
}

#[test]
fn the_chain_policy_takes_a_full_backup_every_n_backups() {
    let Some((server, client)) = covered_version(18, true) else {
        return;
    };
    let client = client.expect("client tools").to_string_lossy().into_owned();
    let pg = start(&server);
    pg.psql(
        "postgres",
        "CREATE TABLE t (id bigserial PRIMARY KEY, phase text, body text)",
    );
    let repo = fs_repo_for(&pg);
    let policy = ["--incremental", "--full-every", "3", "--full-after", "7d"];
    let kinds: Vec<(usize, String)> = (0..4)
        .map(|n| {
            write(&pg, &format!("round{n}"));
            let summary = backup(&pg, &repo, &[], &client, &policy);
            let chain = summary["chain"].as_array().map_or(0, Vec::len);
            (
                chain,
                summary["fullBecause"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let chains: Vec<usize> = kinds.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        chains,
        [0, 1, 2, 0],
        "full, two incrementals, full: {kinds:?}"
    );
    assert!(kinds[0].1.contains("a new chain starts"), "{kinds:?}");
    assert!(kinds[3].1.contains("holds 3 backups"), "{kinds:?}");
}

/// A `pg_basebackup` that says it started (a file `started` beside it) and waits a few
/// seconds before running the real one, beside links to the other tools.
fn slow_pg_basebackup(pg: &PgServer, client: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::wal::scratch_dir_for(pg);
    for entry in std::fs::read_dir(client).expect("bin dir").flatten() {
        if entry.file_name() != "pg_basebackup" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))
                .expect("link");
        }
    }
    let script = format!(
        "#!/bin/sh\ntouch \"{}/started\"\nsleep 4\nexec \"{}\" \"$@\"\n",
        dir.path().display(),
        client.join("pg_basebackup").display()
    );
    let path = dir.path().join("pg_basebackup");
    std::fs::write(&path, script).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[test]
fn chains_survive_retention_and_a_damaged_or_deleted_member_is_named() {
    let Some((server, client)) = covered_version(18, true) else {
        return;
    };
    let client_path = client.expect("client tools");
    let client = client_path.to_string_lossy().into_owned();
    let bin = server.to_string_lossy().into_owned();
    let pg = start(&server);
    pg.psql(
        "postgres",
        "CREATE TABLE t (id bigserial PRIMARY KEY, phase text, body text); \
         INSERT INTO t (phase, body) SELECT 'base', md5(random()::text) FROM generate_series(1, 20000)",
    );
    let repo = fs_repo_for(&pg);

    // A parent deleted while an incremental runs on it: the incremental fails and leaves
    // nothing.
    let doomed = id(&backup(&pg, &repo, &[], &client, &[]));
    let slow = slow_pg_basebackup(&pg, &client_path);
    let slow_bin = slow.path().to_string_lossy().into_owned();
    let running = agent(
        &pg,
        &repo,
        &[],
        &[
            "backup",
            "--method",
            "physical",
            "--incremental",
            "--pg-bin",
            &slow_bin,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start the incremental backup");
    let started = slow.path().join("started");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_basebackup never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run_ok(agent(
        &pg,
        &repo,
        &[],
        &["prune", "--backup-id", &doomed, "--delete"],
    ));
    let output = running.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "backup {doomed}, which this incremental backup builds on, was deleted while it ran"
        )),
        "{stderr}"
    );
    assert!(
        stored_backups(&repo).is_empty(),
        "{:?}",
        stored_backups(&repo)
    );

    // A chain: retention keeps it whole; deleting its full backup alone is refused.
    let full = id(&backup(&pg, &repo, &[], &client, &[]));
    write(&pg, "one");
    let inc = id(&backup(&pg, &repo, &[], &client, &["--incremental"]));
    let kept = run_ok(agent(&pg, &repo, &[], &["prune", "--keep-last", "1"]));
    for backup in [&full, &inc] {
        assert!(
            kept.contains(&format!("keep   physical {backup}")),
            "{kept}"
        );
    }
    refused(
        agent(
            &pg,
            &repo,
            &[],
            &["prune", "--backup-id", &full, "--delete"],
        ),
        &format!("incremental backups {inc} build on the backups named"),
    );
    assert_eq!(stored_backups(&repo), [full.clone(), inc.clone()]);

    // A damaged full backup: verifying the incremental names it.
    let data = std::fs::read_dir(repo.dir().expect("dir").join("test-pg/base").join(&full))
        .expect("backup dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("data.tar"))
        })
        .expect("data object");
    let mut bytes = std::fs::read(&data).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes).expect("write");
    let stderr = run_err(agent(
        &pg,
        &repo,
        &[],
        &["verify", "--backup", &inc, "--pg-bin", &bin],
    ));
    assert!(
        stderr.contains(&format!("{full} physical: FAILED"))
            && stderr.contains(&format!(
                "{inc} incremental: FAILED: backup {full}, which it builds on, failed its check"
            )),
        "{stderr}"
    );

    // Its data gone: the restore of the incremental refuses before touching anything.
    std::fs::remove_file(&data).expect("remove");
    let target = support::wal::scratch_dir_for(&pg);
    let pgdata = target.path().join("restored");
    let pgdata_arg = pgdata.to_string_lossy().into_owned();
    refused(
        agent(
            &pg,
            &repo,
            &[],
            &[
                "restore",
                "--backup",
                &inc,
                "--pgdata",
                &pgdata_arg,
                "--target-immediate",
                "--pg-bin",
                &bin,
            ],
        ),
        &format!("backup {full} of the chain: object"),
    );
    assert!(!pgdata.exists(), "nothing was laid down");
}
