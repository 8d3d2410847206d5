//! Selective logical restores on a real server, from both dump formats: one table with what
//! belongs to it, a schema, rows only, definitions only, into the same database or another;
//! what clashes with the live database is refused whole, and nothing changes.

mod support;

use support::{
    agent::{TestRepo, pgbackup, run_err, run_ok},
    postgres::PgServer,
};

/// `shop`: `sales."Orders"` (serial key, default, index, a foreign key to
/// `public.customers`, a view on it) and `public.customers` (a comment, a trigger).
fn populate(pg: &PgServer) {
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        r#"CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL);
           COMMENT ON TABLE public.customers IS 'who buys';
           INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;
           CREATE SCHEMA sales;
           CREATE TABLE sales."Orders" (id serial PRIMARY KEY, status text DEFAULT 'new',
             customer int REFERENCES public.customers (id), total numeric(10,2));
           CREATE INDEX orders_by_status ON sales."Orders" (status);
           INSERT INTO sales."Orders" (customer, total) SELECT 1 + g % 50, g FROM generate_series(1, 1000) g;
           CREATE VIEW sales.big_orders AS SELECT * FROM sales."Orders" WHERE total > 900;"#,
    );
}

fn orders(pg: &PgServer, database: &str) -> String {
    pg.psql(
        database,
        r#"SELECT count(*) || ' ' || sum(total) FROM sales."Orders""#,
    )
}

fn restore(backup: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "restore",
        "--logical",
        "--backup",
        backup,
        "--database",
        "shop",
    ];
    args.extend(extra);
    args.into_iter().map(String::from).collect()
}

fn run_restore_ok(pg: &PgServer, repo: &TestRepo<'_>, args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(pgbackup(pg, repo, &refs))
}

fn run_restore_err(pg: &PgServer, repo: &TestRepo<'_>, args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_err(pgbackup(pg, repo, &refs))
}

fn databases(pg: &PgServer) -> String {
    pg.psql(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate",
    )
}

fn selective_restores(format: &[&str]) {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    populate(&pg);
    let full = orders(&pg, "shop");
    let mut backup = vec!["backup", "--method", "logical", "--database", "shop"];
    backup.extend(format);
    let summary: serde_json::Value =
        serde_json::from_str(&run_ok(pgbackup(&pg, &repo, &backup))).expect("summary");
    let id = summary["backupId"].as_str().expect("id").to_string();

    // "I deleted rows": the table as it was, into a new database next to the live one.
    pg.psql("shop", r#"DELETE FROM sales."Orders" WHERE id > 10"#);
    let live = orders(&pg, "shop");
    let done = run_restore_ok(
        &pg,
        &repo,
        &restore(
            &id,
            &["--table", "sales.Orders", "--into-database", "shop_then"],
        ),
    );
    assert!(done.contains("into database shop_then"), "{done}");
    assert_eq!(orders(&pg, "shop_then"), full);
    assert_eq!(orders(&pg, "shop"), live, "the live table is untouched");
    // With its key, default, owned sequence and index; not the view, not the foreign key to
    // a table that was not restored.
    assert_eq!(
        pg.psql(
            "shop_then",
            r#"INSERT INTO sales."Orders" (total) VALUES (1) RETURNING id::text || ' ' || status"#
        ),
        "1001 new"
    );
    assert_eq!(
        pg.psql(
            "shop_then",
            "SELECT string_agg(conname || ':' || contype::text, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'sales.\"Orders\"'::regclass"
        ),
        "Orders_pkey:p"
    );
    assert_eq!(
        pg.psql(
            "shop_then",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_by_status'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "shop_then",
            "SELECT count(*) FROM pg_views WHERE schemaname = 'sales'"
        ),
        "0"
    );

    // Into the live database, the table clashes: refused whole, nothing changes (no rows
    // appended to the live table).
    let refused = run_restore_err(&pg, &repo, &restore(&id, &["--table", "sales.Orders"]));
    assert!(
        refused.contains("already exists") && refused.contains("--clean"),
        "{refused}"
    );
    assert_eq!(orders(&pg, "shop"), live);
    // --clean cannot drop a table a view depends on: refused whole too.
    let refused = run_restore_err(
        &pg,
        &repo,
        &restore(&id, &["--table", "sales.Orders", "--clean"]),
    );
    assert!(refused.contains("depend"), "{refused}");
    assert_eq!(orders(&pg, "shop"), live);

    // Rows only, into the live table emptied first.
    pg.psql("shop", r#"TRUNCATE sales."Orders""#);
    run_restore_ok(
        &pg,
        &repo,
        &restore(&id, &["--table", "sales.Orders", "--data-only"]),
    );
    assert_eq!(orders(&pg, "shop"), full);

    // A whole schema with its view, into another database; definitions only.
    run_restore_ok(
        &pg,
        &repo,
        &restore(
            &id,
            &[
                "--schema",
                "sales",
                "--schema-only",
                "--into-database",
                "shop_empty",
                "--table",
                "customers",
            ],
        ),
    );
    assert_eq!(
        pg.psql("shop_empty", r#"SELECT count(*) FROM sales."Orders""#),
        "0"
    );
    assert_eq!(
        pg.psql("shop_empty", "SELECT count(*) FROM sales.big_orders"),
        "0"
    );
    assert_eq!(
        pg.psql(
            "shop_empty",
            "SELECT obj_description('public.customers'::regclass)"
        ),
        "who buys"
    );

    // Names that match nothing are refused before any database is made.
    let before = databases(&pg);
    let refused = run_restore_err(
        &pg,
        &repo,
        &restore(
            &id,
            &["--table", "sales.orders", "--into-database", "shop_none"],
        ),
    );
    assert!(
        refused.contains("matches") && refused.contains("sales.orders"),
        "{refused}"
    );
    assert_eq!(databases(&pg), before);

    // The whole dump into another database; an existing one only with --clean.
    run_restore_ok(&pg, &repo, &restore(&id, &["--into-database", "shop_copy"]));
    assert_eq!(orders(&pg, "shop_copy"), full);
    let refused = run_restore_err(&pg, &repo, &restore(&id, &["--into-database", "shop_copy"]));
    assert!(refused.contains("already exist"), "{refused}");
}

#[test]
fn parts_of_a_custom_format_dump_restore_into_the_same_or_another_database() {
    selective_restores(&[]);
}

#[test]
fn parts_of_a_directory_format_dump_restore_into_the_same_or_another_database() {
    selective_restores(&["--format", "directory", "--jobs", "2"]);
}
