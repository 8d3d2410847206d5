//! What a backup stores besides its data (`--configuration`, the server's configuration
//! files), read back with `pgbackup configuration`, against a real server: a `pg_hba.conf`
//! kept outside the data directory, as Bitnami's image keeps it, comes with a physical
//! backup; a logical backup brings every configuration file; the Kubernetes objects come
//! back byte for byte.

mod support;

use support::{
    agent::{TestRepo, pgbackup, run_err, run_ok},
    postgres::PgServer,
};

const KUBERNETES: &str = "# Secrets the StatefulSet references (not stored): pg-auth\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: pg\n";

/// A server whose `pg_hba.conf` is outside its data directory.
fn server_with_hba_outside() -> (PgServer, String) {
    let pg = PgServer::start();
    let outside = pg.data_dir().parent().expect("root").join("conf");
    std::fs::create_dir_all(&outside).expect("conf dir");
    let hba = outside.join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(pg.data_dir().join("pg_hba.conf")).expect("hba");
    rules.push_str("\n# kept outside the data directory\n");
    std::fs::write(&hba, rules).expect("hba outside");
    if let Some((uid, gid)) = pg.os_user() {
        for path in [&outside, &hba] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET hba_file = '{}'", hba.display()),
    );
    pg.restart();
    (pg, hba.display().to_string())
}

#[test]
fn a_backup_keeps_the_kubernetes_objects_and_the_files_outside_its_data() {
    let (pg, hba) = server_with_hba_outside();
    let repo = TestRepo::fs();
    let work = tempfile::tempdir().expect("temp dir");
    let objects = work.path().join("kubernetes.yaml");
    std::fs::write(&objects, KUBERNETES).expect("objects");

    run_ok(pgbackup(
        &pg,
        &repo,
        &[
            "backup",
            "--method",
            "physical",
            "--configuration",
            &objects.to_string_lossy(),
        ],
    ));
    let printed = run_ok(pgbackup(&pg, &repo, &["configuration"]));
    assert_eq!(
        printed, KUBERNETES,
        "the objects as the operator wrote them"
    );

    let out = work.path().join("physical");
    let said = run_ok(pgbackup(
        &pg,
        &repo,
        &["configuration", "--output-dir", &out.to_string_lossy()],
    ));
    assert!(said.contains(&hba), "{said}");
    let restored_hba = std::fs::read_to_string(out.join("pg_hba.conf")).expect("pg_hba.conf");
    assert!(restored_hba.contains("# kept outside the data directory"));
    assert!(
        !out.join("postgresql.conf").exists(),
        "postgresql.conf is in the data directory, which the backup holds"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("kubernetes.yaml")).expect("kubernetes.yaml"),
        KUBERNETES
    );

    // A dump holds no file of the server: every configuration file comes with it. A
    // configuration file that cannot be read leaves the backup as it is.
    run_ok(pgbackup(
        &pg,
        &repo,
        &[
            "backup",
            "--method",
            "logical",
            "--configuration",
            "/nonexistent/kubernetes.yaml",
        ],
    ));
    let err = run_err(pgbackup(&pg, &repo, &["configuration"]));
    assert!(err.contains("holds no Kubernetes configuration"), "{err}");
    let out = work.path().join("logical");
    run_ok(pgbackup(
        &pg,
        &repo,
        &["configuration", "--output-dir", &out.to_string_lossy()],
    ));
    for file in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        assert!(out.join(file).exists(), "{file}");
    }
    let conf = std::fs::read_to_string(out.join("postgresql.conf")).expect("postgresql.conf");
    assert!(
        conf.contains("max_wal_senders = 10"),
        "the server's own file"
    );
    // Checked like every object: verify reads them too.
    run_ok(pgbackup(&pg, &repo, &["verify"]));
}
