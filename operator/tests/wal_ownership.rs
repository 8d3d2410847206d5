//! An archive holds only its cluster's WAL: another cluster's files left in a spool are
//! set aside and never stored, `wal-push` refuses a segment or history file that is not
//! the cluster's at the place its name says, `verify --wal` names any stored object that
//! does not belong, and a segment of a timeline without history blocks no restore that
//! does not need it.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use support::{
    agent::{TestRepo, run_err, run_ok},
    postgres::PgServer,
    wal::{
        Archiver, SERVER, archived_wal, fs_repo_for, pgbackup_as_cluster_user, restore_and_start,
        scratch_dir_for, server_archiving_with_wal_push, switch_and_wait_archived, switch_wal,
        wait_for_archived,
    },
};

fn write_rows(pg: &PgServer, from: u32, rows: u32) {
    pg.psql(
        "postgres",
        &format!(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({from}, {}) g",
            from + rows - 1
        ),
    );
}

fn system_identifier(pg: &PgServer) -> String {
    pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )
}

/// Segment number of a WAL file name.
fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).expect("hex");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("hex");
    log * 0x100 + seg
}

/// The one `.partial` file in `dir`.
fn spooled_partial(dir: &Path) -> PathBuf {
    let partials: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "partial"))
        .collect();
    assert_eq!(partials.len(), 1, "one partial segment in {dir:?}");
    partials[0].clone()
}

#[test]
fn wal_of_another_cluster_left_in_a_spool_is_set_aside_and_never_stored() {
    // Cluster Y is archived, and its archiver killed with WAL in its spool.
    let other = PgServer::start();
    let other_repo = fs_repo_for(&other);
    other.psql("postgres", "CREATE TABLE t (id int, pad text)");
    let archiver = Archiver::start(&other, &other_repo, &["--partial-upload-seconds", "0"]);
    for round in 0..4 {
        write_rows(&other, round * 1000, 1000);
        switch_wal(&other);
    }
    write_rows(&other, 10_000, 1000);
    std::thread::sleep(Duration::from_secs(2));
    let spool = archiver.kill();
    let spool_dir = spool.path().to_path_buf();
    let partial = spooled_partial(&spool_dir);
    let bytes = std::fs::read(&partial).expect("partial");
    assert_ne!(&bytes[..2], &[0, 0], "Y's partial segment holds no WAL yet");
    // And a segment of Y under a complete segment's name.
    let partial_name = partial
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let segment_name = partial_name.trim_end_matches(".partial").to_string();
    std::fs::write(spool_dir.join(&segment_name), &bytes).expect("copy");

    // Cluster X (another initdb) is archived next under the same server name, on the same
    // spool.
    let pg = PgServer::start();
    let repo = fs_repo_for(&pg);
    pg.psql("postgres", "CREATE TABLE t (id int, pad text)");
    let current = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(
        segno(&segment_name) > segno(&current) + 2,
        "Y's WAL ({segment_name}) must lie beyond where X streams ({current})"
    );
    let archiver = Archiver::start_in(&pg, &repo, &["--partial-upload-seconds", "0"], spool);
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    write_rows(&pg, 0, 3000);
    let last = switch_wal(&pg);
    wait_for_archived(&repo, None, &last, &archiver, Duration::from_secs(60));

    // Y's WAL is not in X's archive; both files were moved aside and the log names them.
    let archived = archived_wal(&repo, None);
    assert!(
        !archived
            .iter()
            .any(|n| n == &segment_name || n == &partial_name),
        "Y's WAL in X's archive: {archived:?}"
    );
    let rejected: Vec<String> = std::fs::read_dir(spool_dir.join("rejected"))
        .expect("rejected files")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .any(|n| n.starts_with(&format!("{segment_name}.")))
            && rejected
                .iter()
                .any(|n| n.starts_with(&format!("{partial_name}."))),
        "{rejected:?}"
    );
    let y = system_identifier(&other);
    let log = archiver.log();
    for name in [&segment_name, &partial_name] {
        assert!(
            log.lines()
                .any(|l| l.contains(name.as_str()) && l.contains("is not WAL of cluster")),
            "no error naming {name} in:\n{log}"
        );
    }
    assert!(log.contains(&format!("written by cluster {y}")), "{log}");
    assert!(
        archiver
            .metrics()
            .contains("pgbackup_wal_files_rejected_total 2"),
        "{}",
        archiver.metrics()
    );
    archiver.stop();
    let verified = run_ok(pgbackup_as_cluster_user(&pg, &repo, &["verify", "--wal"]));
    assert!(verified.contains("files verified"), "{verified}");
    let (restored, _) = restore_and_start(&pg, &repo, pg.bin_dir(), &["--target-latest"]);
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "3000");
}

#[test]
fn wal_push_stores_only_the_clusters_wal_at_the_place_its_name_says() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    switch_and_wait_archived(&pg, &repo);
    let stored = archived_wal(&repo, None);
    let first = stored
        .iter()
        .find(|n| n.len() == 24)
        .expect("a stored segment")
        .clone();
    let scratch = scratch_dir_for(&pg);
    let fetched = scratch.path().join("fetched");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &[
            "wal-fetch",
            "--prefetch",
            "0",
            &first,
            &fetched.to_string_lossy(),
        ],
    ));
    let data_dir = pg.data_dir().to_string_lossy().into_owned();
    let push = |name: &str, content: &[u8]| {
        let path = scratch.path().join(name);
        std::fs::write(&path, content).expect("write");
        let mut command = pgbackup_as_cluster_user(
            &pg,
            &repo,
            &["wal-push", "--pgdata", &data_dir, &path.to_string_lossy()],
        );
        command.current_dir(scratch.path());
        command
    };
    let segment = std::fs::read(&fetched).expect("fetched segment");

    // The segment under the name of timeline 2, and under the next segment's name.
    let other_timeline = format!("00000002{}", &first[8..]);
    let err = run_err(push(&other_timeline, &segment));
    assert!(err.contains("first page is of timeline 1"), "{err}");
    let next = format!("{}{:08X}", &first[..16], segno(&first) % 0x100 + 1);
    let err = run_err(push(&next, &segment));
    assert!(err.contains("not at 0/"), "{err}");
    // A history file whose past differs from the stored history of its parent.
    run_ok(push(
        "00000002.history",
        b"1\t0/4000000\tno recovery target specified\n",
    ));
    let err = run_err(push(
        "00000003.history",
        b"1\t0/3000000\tx\n2\t0/6000000\tx\n",
    ));
    assert!(
        err.contains("differs from the stored history of timeline 2"),
        "{err}"
    );
    let err = run_err(push("00000004.history", b"this is not a history\n"));
    assert!(err.contains("not a timeline history"), "{err}");
    run_ok(push(
        "00000003.history",
        b"1\t0/4000000\tx\n2\t0/6000000\tx\n",
    ));
    let archived = archived_wal(&repo, None);
    assert!(
        !archived.contains(&other_timeline) && !archived.contains(&next),
        "{archived:?}"
    );
    assert!(
        !archived.iter().any(|n| n == "00000004.history"),
        "{archived:?}"
    );
}

/// Copies the stored object of `name` in `from`'s archive into `to`'s archive as `as_name`
/// (same content, so its SHA-256 still matches).
fn plant(from: &TestRepo<'_>, name: &str, to: &TestRepo<'_>, as_name: &str) -> String {
    let wal = |repo: &TestRepo<'_>, timeline: &str| {
        repo.dir()
            .expect("file repository")
            .join(SERVER)
            .join("wal")
            .join(timeline)
    };
    let source_dir = wal(from, &name[..8]);
    let object = std::fs::read_dir(&source_dir)
        .expect("archive")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|o| o.starts_with(&format!("{name}.")))
        .expect("stored object");
    let target_dir = wal(to, &as_name[..8]);
    std::fs::create_dir_all(&target_dir).expect("mkdir");
    let planted = object.replacen(name, as_name, 1);
    let copy = target_dir.join(&planted);
    std::fs::copy(source_dir.join(&object), &copy).expect("copy");
    // Readable by the cluster's OS user, who runs the agent.
    std::fs::set_permissions(&target_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    planted
}

#[test]
fn verify_names_what_does_not_belong_and_restores_that_do_not_need_it_go_on() {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g FROM generate_series(1001, 2000) g",
    );
    switch_and_wait_archived(&pg, &repo);
    let verified = run_ok(pgbackup_as_cluster_user(&pg, &repo, &["verify", "--wal"]));
    assert!(verified.contains("files verified"), "{verified}");

    // A segment of a timeline the archive has no history of: nothing on timeline 1 needs
    // it, and a restore to the latest state goes on along timeline 1.
    let own = archived_wal(&repo, None)
        .into_iter()
        .rfind(|n| n.len() == 24)
        .expect("a segment");
    let stray = format!("00000005{}", &own[8..]);
    let stray_key = plant(&repo, &own, &repo, &stray);
    let (restored, _) = restore_and_start(&pg, &repo, pg.bin_dir(), &["--target-latest"]);
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "2000");
    drop(restored);

    // A segment of another cluster under a name this one has not reached.
    let (other, other_repo) = server_archiving_with_wal_push();
    for _ in 0..6 {
        other.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS u AS SELECT 1 AS x; INSERT INTO u VALUES (1)",
        );
        switch_and_wait_archived(&other, &other_repo);
    }
    let foreign = archived_wal(&other_repo, None)
        .into_iter()
        .rfind(|n| n.len() == 24)
        .expect("a segment");
    assert!(
        !archived_wal(&repo, None).contains(&foreign),
        "{foreign} is a name this cluster reached"
    );
    let foreign_key = plant(&other_repo, &foreign, &repo, &foreign);

    let err = run_err(pgbackup_as_cluster_user(&pg, &repo, &["verify", "--wal"]));
    assert!(
        err.contains(&foreign_key)
            && err.contains(&format!("written by cluster {}", system_identifier(&other))),
        "{err}"
    );
    assert!(
        err.contains(&stray_key) && err.contains("first page is of timeline 1"),
        "{err}"
    );
    assert!(
        err.contains("WAL of timeline 5 is stored but its history file (00000005.history) is not"),
        "{err}"
    );
}
