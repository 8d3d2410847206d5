//! What a container image is on the local node: there is no container runtime, so each
//! image the tests use maps to local programs. The agent image (`pgbackup/agent:<major>-…`)
//! and the operator image run the built `pgbackup` with the PostgreSQL tools of the
//! image's major version on `PATH`; a PostgreSQL image (`postgres:<major>…`,
//! `…/postgresql:<major>…`) runs a real `postgres` on the pod's data volume, set up the way
//! the official image's entry point does.

use std::path::{Path, PathBuf};

/// How to run a container of an image.
#[derive(Debug, Clone)]
pub struct Program {
    /// `PATH` inside the container.
    pub path: String,
    /// The user the image runs as when the pod does not say (`USER` of the image).
    pub default_user: u32,
    /// Replaces the container's command when the image's own entry point is emulated.
    pub entrypoint: Option<Vec<String>>,
    /// Directories the image has that must be private and writable in each container.
    pub private_dirs: Vec<&'static str>,
}

/// The PostgreSQL major version in an image tag (`16.4`, `16-bookworm`, `16`).
pub fn major_of(image: &str) -> Option<u32> {
    let tag = image.rsplit_once(':')?.1;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The directories of a major's tools: `(server, client)` from the version matrix that
/// `.ci/fetch-postgres` writes, else the system's PostgreSQL.
pub fn tool_dirs(major: u32) -> (PathBuf, PathBuf) {
    let matrix = crate::support::postgres::version_matrix();
    let system = crate::support::postgres::default_bin_dir();
    let newest_client = matrix
        .iter()
        .filter_map(|(_, _, client)| client.clone())
        .next_back()
        .unwrap_or_else(|| system.clone());
    match matrix.into_iter().find(|(m, _, _)| *m == major) {
        Some((_, server, client)) => (server, client.unwrap_or(newest_client)),
        None => (system.clone(), system),
    }
}

/// The program for `image`, with `bin` (the node's copy of `pgbackup`) first on `PATH`.
pub fn program_for(image: &str, bin: &Path, default_major: u32) -> Option<Program> {
    let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
    let last = name.rsplit('/').next().unwrap_or(name);
    let major = major_of(image).unwrap_or(default_major);
    let (server, client) = tool_dirs(major);
    let path = format!(
        "{}:{}:{}:/usr/local/bin:/usr/bin:/bin",
        bin.display(),
        client.display(),
        server.display()
    );
    match last {
        "agent" | "operator" if name.contains("pgbackup") => Some(Program {
            path,
            default_user: 65532,
            entrypoint: None,
            private_dirs: Vec::new(),
        }),
        "postgres" | "postgresql" => Some(Program {
            path,
            // The official image's `postgres` user; Bitnami's image runs as 1001.
            default_user: if name.contains("bitnami") { 1001 } else { 999 },
            entrypoint: Some(vec![
                "/bin/sh".into(),
                bin.join("postgres-entrypoint.sh").display().to_string(),
            ]),
            private_dirs: vec!["/var/run/postgresql"],
        }),
        _ => None,
    }
}

/// The signal that asks a container of `image` to stop: the image's `STOPSIGNAL`. The
/// official PostgreSQL image sets SIGINT (a fast shutdown: sessions are ended); others get
/// SIGTERM, which PostgreSQL takes as a smart shutdown (it waits for sessions to end).
pub fn stop_signal(image: &str) -> &'static str {
    let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
    if matches!(
        name,
        "postgres" | "docker.io/postgres" | "docker.io/library/postgres"
    ) {
        "INT"
    } else {
        "TERM"
    }
}

/// The official PostgreSQL image's entry point, reduced to what a StatefulSet of it needs:
/// a first start runs `initdb` with `POSTGRES_USER`/`POSTGRES_PASSWORD` (or `_FILE`) and
/// password authentication over TCP; every start runs `postgres` with the container's
/// arguments, listening on the pod's address only (pods share the loopback interface).
pub const POSTGRES_ENTRYPOINT: &str = r#"set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
user="${POSTGRES_USER:-postgres}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"; fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    ${POSTGRES_INITDB_ARGS:-} >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\nhost replication all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    postgres --single -D "$PGDATA" postgres <<SQL >/dev/null
CREATE DATABASE "$POSTGRES_DB";
SQL
  fi
fi
if [ "${1:-}" = postgres ]; then shift; fi
exec postgres -c listen_addresses="$POD_IP" -c unix_socket_directories=/var/run/postgresql,/tmp "$@"
"#;
