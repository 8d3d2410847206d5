//! The throwaway PostgreSQL of the test support works: it starts, answers SQL over TCP with
//! password authentication, accepts replication connections, and is gone after drop.

mod support;

use support::postgres::PgServer;

#[tokio::test]
async fn throwaway_postgres_answers_queries() {
    let pg = PgServer::start();
    let client = pg.connect("postgres").await;

    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g").await.expect("create and fill a table");
    let row = client
        .query_one("SELECT count(*), sum(id) FROM t", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>(0), 100);
    assert_eq!(row.get::<_, i64>(1), 5050);

    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(
        wal_level, "replica",
        "physical backups and WAL streaming need wal_level=replica"
    );
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(!in_recovery);
}

#[tokio::test]
async fn throwaway_postgres_accepts_replication_and_refuses_wrong_passwords() {
    let pg = PgServer::start();

    // pg_basebackup needs a replication connection: prove one is allowed by pg_hba.conf.
    let wrong = pg
        .connection_string("postgres")
        .replace(pg.password(), "not-the-password");
    let refused = tokio_postgres::connect(&wrong, tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "a wrong password must be refused");

    let out = std::process::Command::new(pg.bin_dir().join("pg_receivewal"))
        .envs(pg.libpq_env())
        .args(["--create-slot", "--slot", "support_probe"])
        .output()
        .expect("run pg_receivewal");
    assert!(
        out.status.success(),
        "replication connection refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = pg.connect("postgres").await;
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'support_probe'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(slots, 1);
}

#[tokio::test]
async fn throwaway_postgres_is_removed_on_drop() {
    let pg = PgServer::start();
    let data_dir = pg.data_dir();
    let port = pg.port();
    assert!(data_dir.join("PG_VERSION").exists());
    drop(pg);
    assert!(!data_dir.exists(), "the data directory is deleted");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped"
    );
}
