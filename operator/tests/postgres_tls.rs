//! pgbackup's own connection speaks TLS as libpq's `sslmode` says, against a PostgreSQL
//! server with a certificate from a throwaway CA: `require` encrypts, `verify-full` checks
//! the chain and the name, and a certificate that does not pass stops the backup with a
//! clear error before anything is written.

mod support;

use std::{path::Path, process::Command};

use support::{
    agent::{TestRepo, error_lines, pgbackup, run_err, run_ok},
    controlplane::certs::openssl,
    postgres::{PgConfig, PgServer, postgres_user_if_root},
};

/// A CA, and a server certificate for `localhost` signed by it; and an unrelated CA.
fn certificates(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN=pgbackup test {ca}"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("write");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    if let Some((uid, gid)) = postgres_user_if_root() {
        for file in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).expect("chown");
        }
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    }
}

fn backup(pg: &PgServer, repo: &TestRepo<'_>, env: &[(&str, &str)]) -> Command {
    let mut command = pgbackup(
        pg,
        repo,
        &["backup", "--method", "logical", "--database", "postgres"],
    );
    command.envs(env.iter().copied());
    command
}

#[test]
fn sslmodes_encrypt_and_check_the_certificate_as_libpq_does() {
    let dir = tempfile::tempdir().expect("dir");
    certificates(dir.path());
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let pg = PgServer::start_with(PgConfig {
        settings: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", cert.display()),
            format!("ssl_key_file = '{}'", key.display()),
        ],
        ..PgConfig::default()
    });
    let plain = PgServer::start();
    let repo = TestRepo::fs();
    let ca = dir.path().join("ca.crt").display().to_string();
    let other_ca = dir.path().join("other-ca.crt").display().to_string();

    run_ok(backup(&pg, &repo, &[("PGSSLMODE", "require")]));
    run_ok(backup(
        &pg,
        &repo,
        &[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
            ("PGHOST", "localhost"),
        ],
    ));
    run_ok(backup(
        &pg,
        &repo,
        &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", &ca)],
    ));
    let backups_before = std::fs::read_dir(repo.dir().expect("dir").join("test-pg/logical"))
        .expect("backups")
        .count();

    let refused = |env: &[(&str, &str)], server: &PgServer| {
        let stderr = run_err(backup(server, &repo, env));
        let lines = error_lines(&stderr);
        assert_eq!(lines.len(), 1, "{stderr}");
        lines[0].to_string()
    };
    // The certificate names localhost, not 127.0.0.1.
    let err = refused(&[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)], &pg);
    assert!(err.contains("TLS with PostgreSQL at 127.0.0.1"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    // Signed by another CA.
    let err = refused(
        &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", &other_ca)],
        &pg,
    );
    assert!(err.contains("certificate"), "{err}");
    // No root certificate to check against.
    let err = refused(&[("PGSSLMODE", "verify-full")], &pg);
    assert!(err.contains("--pg-sslrootcert"), "{err}");
    // A server without TLS cannot satisfy require.
    let err = refused(&[("PGSSLMODE", "require")], &plain);
    assert!(err.contains("sslmode require"), "{err}");
    let backups_after = std::fs::read_dir(repo.dir().expect("dir").join("test-pg/logical"))
        .expect("backups")
        .count();
    assert_eq!(
        backups_before, backups_after,
        "a refused connection wrote a backup"
    );
}
