//! Logical backups end to end, on both repository backends: databases with tables, rows, a
//! large object and roles are backed up, everything is dropped, the backup is restored, and
//! the data and the roles are back.

mod support;

use support::{
    agent::{TestRepo, pgbackup, run_err, run_ok},
    postgres::PgServer,
    s3::S3Server,
};

const ODD_DB: &str = "odd name/ü";

fn populate(pg: &PgServer) {
    pg.psql(
        "postgres",
        "CREATE ROLE shop_owner LOGIN PASSWORD 'owner-secret'",
    );
    pg.psql("postgres", "CREATE ROLE shop_reader NOLOGIN");
    pg.psql("postgres", "CREATE DATABASE shop OWNER shop_owner");
    pg.psql("postgres", &format!("CREATE DATABASE \"{ODD_DB}\""));
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric(10,2), placed timestamptz);
         INSERT INTO orders SELECT g, 'customer ' || (g % 97), g * 1.25, '2026-01-01'::timestamptz + g * interval '1 minute'
           FROM generate_series(1, 20000) g;
         ALTER TABLE orders OWNER TO shop_owner;
         GRANT SELECT ON orders TO shop_reader;
         SELECT lo_from_bytea(424242, convert_to(repeat('large object payload ', 5000), 'UTF8'));",
    );
    pg.psql(ODD_DB, "CREATE TABLE notes (id serial PRIMARY KEY, body text); INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 500) g");
}

/// What a user would compare: row counts and content checksums, the large object, roles.
fn fingerprint(pg: &PgServer) -> Vec<String> {
    vec![
        pg.psql("shop", "SELECT count(*) || ' ' || md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o"),
        pg.psql("shop", "SELECT md5(lo_get(424242))"),
        pg.psql("shop", "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"),
        pg.psql("shop", "SELECT has_table_privilege('shop_reader', 'orders', 'SELECT')::text"),
        pg.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"),
        pg.psql("postgres", "SELECT string_agg(rolname || ':' || rolcanlogin, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'shop_%'"),
        pg.psql(ODD_DB, "SELECT count(*) || ' ' || md5(string_agg(body, ',' ORDER BY id)) FROM notes"),
    ]
}

fn round_trip(pg: &PgServer, repo: &TestRepo<'_>) {
    populate(pg);
    let before = fingerprint(pg);

    let summary = run_ok(pgbackup(pg, repo, &["backup", "--method", "logical"]));
    let summary: serde_json::Value =
        serde_json::from_str(&summary).expect("backup prints a JSON summary");
    let databases = summary["databases"].as_array().expect("databases listed");
    for db in ["postgres", "shop", ODD_DB] {
        assert!(databases.iter().any(|d| d == db), "{db} in {databases:?}");
    }
    assert!(summary["storedSize"].as_u64().expect("stored size") > 0);
    let backup_id = summary["backupId"].as_str().expect("id").to_string();

    // Disaster: the databases and the roles are gone.
    pg.psql("postgres", "DROP DATABASE shop");
    pg.psql("postgres", &format!("DROP DATABASE \"{ODD_DB}\""));
    pg.psql("postgres", "DROP ROLE shop_owner");
    pg.psql("postgres", "DROP ROLE shop_reader");

    let listed = run_ok(pgbackup(pg, repo, &["list"]));
    assert!(
        listed.contains(&backup_id) && listed.contains("complete"),
        "{listed}"
    );
    let verified = run_ok(pgbackup(pg, repo, &["verify"]));
    assert!(
        verified.contains(&format!("{backup_id} logical: ok")),
        "{verified}"
    );

    // The postgres database was not lost: restore the two that were.
    let everything = run_err(pgbackup(
        pg,
        repo,
        &["restore", "--logical", "--backup", &backup_id],
    ));
    assert!(
        everything.contains(r#"["postgres"] already exist"#),
        "{everything}"
    );
    run_ok(pgbackup(
        pg,
        repo,
        &[
            "restore",
            "--logical",
            "--backup",
            &backup_id,
            "--database",
            "shop",
            "--database",
            ODD_DB,
        ],
    ));
    assert_eq!(
        fingerprint(pg),
        before,
        "the restored data and roles equal the backed-up ones"
    );

    // Restoring again over the existing databases is refused without --clean, and nothing
    // changes; with --clean it replaces them.
    pg.psql(
        "shop",
        "INSERT INTO orders VALUES (999999, 'after the backup', 1, now())",
    );
    let refused = run_err(pgbackup(
        pg,
        repo,
        &["restore", "--logical", "--database", "shop"],
    ));
    assert!(
        refused.contains("already exist") && refused.contains("--clean"),
        "{refused}"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM orders WHERE id = 999999"),
        "1"
    );
    run_ok(pgbackup(
        pg,
        repo,
        &[
            "restore",
            "--logical",
            "--clean",
            "--database",
            "shop",
            "--jobs",
            "2",
        ],
    ));
    assert_eq!(fingerprint(pg), before);
}

#[test]
fn logical_backup_restores_data_and_roles_from_a_directory() {
    let pg = PgServer::start();
    round_trip(&pg, &TestRepo::fs());
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_backup_restores_data_and_roles_from_s3() {
    let s3 = S3Server::start().await;
    let pg = PgServer::start();
    let repo = TestRepo::S3(&s3, "prod/pg".into());
    tokio::task::block_in_place(|| round_trip(&pg, &repo));
    let keys = s3.keys("prod/pg/test-pg/logical/").await;
    assert!(
        keys.iter().any(|k| k.ends_with("/manifest.json")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with("/shop.dump.zst")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with("/globals.sql.zst")),
        "{keys:?}"
    );
}

#[test]
fn a_logical_backup_of_another_cluster_is_refused_where_the_same_cluster_is_expected() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t AS SELECT 1 AS id");
    let repo = TestRepo::fs();
    run_ok(pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical", "--database", "shop"],
    ));
    let restore = [
        "restore",
        "--logical",
        "--no-globals",
        "--expect-cluster",
        "pgdata",
    ];

    let other = PgServer::start();
    let stderr = run_err(pgbackup(&other, &repo, &restore));
    assert!(stderr.contains("is of cluster"), "{stderr}");
    assert_eq!(
        other.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop'"
        ),
        "0",
        "nothing was restored"
    );

    pg.psql("postgres", "DROP DATABASE shop");
    run_ok(pgbackup(&pg, &repo, &restore));
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM t"), "1");
}
