//! A server that is not the database must not get the password: one that asks for it in
//! clear text or as an MD5 hash gets nothing from pgbackup (unless the weaker login is
//! allowed), and a real PostgreSQL whose `pg_hba.conf` asks for a clear-text password is
//! refused with a message that says what to change.

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    time::Duration,
};

use support::{
    agent::{TestRepo, error_lines, run_err},
    postgres::PgServer,
};

const PASSWORD: &str = "the-database-password";

/// A server on a free port that answers the first login with authentication request
/// `code` (3: clear text, 5: MD5) and returns every byte the client sent afterwards.
fn impostor(code: u32) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let read_message = |socket: &mut std::net::TcpStream| {
            let mut length = [0u8; 4];
            socket.read_exact(&mut length).expect("length");
            let mut body = vec![0u8; u32::from_be_bytes(length) as usize - 4];
            socket.read_exact(&mut body).expect("body");
            body
        };
        let first = read_message(&mut socket);
        if first == [0x04, 0xd2, 0x16, 0x2f] {
            // A TLS request: no TLS here.
            socket.write_all(b"N").expect("answer");
            read_message(&mut socket);
        }
        let mut request = vec![b'R'];
        let body: Vec<u8> = if code == 5 {
            [5u32.to_be_bytes().as_slice(), b"salt"].concat()
        } else {
            code.to_be_bytes().to_vec()
        };
        request.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        request.extend_from_slice(&body);
        socket.write_all(&request).expect("request");
        let mut sent = Vec::new();
        let _ = socket.read_to_end(&mut sent);
        sent
    });
    (port, server)
}

fn backup_against(
    port: u16,
    extra_env: &[(&str, &str)],
) -> (std::process::Command, TestRepo<'static>) {
    let repo = TestRepo::fs();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgbackup"));
    command
        .args(["backup", "--method", "logical"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PGBACKUP_REPOSITORY", repo.url())
        .env("PGBACKUP_SERVER", "impostor")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "backup")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "prefer")
        .envs(extra_env.iter().copied());
    (command, repo)
}

#[test]
fn a_server_asking_for_the_password_in_clear_text_or_md5_gets_nothing() {
    for (code, words) in [(3, "the password in clear text"), (5, "an MD5 hash")] {
        let (port, server) = impostor(code);
        let (command, _repo) = backup_against(port, &[]);
        let stderr = run_err(command);
        let lines = error_lines(&stderr);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(words) && l.contains("SCRAM")),
            "{stderr}"
        );
        let sent = server.join().expect("server");
        assert!(
            !sent.contains(&b'p'),
            "the client answered the request: {sent:?}"
        );
        assert!(!String::from_utf8_lossy(&sent).contains(PASSWORD));

        // Allowed, the same server gets an answer: the refusal above is the guard's.
        let (port, server) = impostor(code);
        let (command, _repo) = backup_against(port, &[("PGBACKUP_ALLOW_WEAK_AUTH", "true")]);
        let _ = run_err(command);
        let sent = server.join().expect("server");
        assert_eq!(sent.first(), Some(&b'p'), "{sent:?}");
    }
}

#[test]
fn a_database_asking_for_a_clear_text_password_is_refused_with_what_to_change() {
    let pg = PgServer::start();
    let hba = pg.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, format!("host all all 127.0.0.1/32 password\n{rules}"))
        .expect("pg_hba.conf");
    pg.pg_ctl(&["reload"]);
    std::thread::sleep(Duration::from_millis(500));
    let repo = TestRepo::fs();
    let stderr = run_err(support::agent::pgbackup(
        &pg,
        &repo,
        &["backup", "--method", "logical"],
    ));
    assert!(
        stderr.contains("the password in clear text") && stderr.contains("allowWeakAuthentication"),
        "{stderr}"
    );
    assert!(!stderr.contains(pg.password()), "{stderr}");
}
