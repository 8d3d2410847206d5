//! Connection settings for PostgreSQL with libpq's environment fallbacks (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`/`PGPASSFILE`, `PGSSLMODE`,
//! `PGSSLROOTCERT`), our own tokio-postgres connection (TLS as `sslmode` says), and the
//! environment handed to PostgreSQL's tools. The password never appears in an argument
//! list. Here: the settings and the tools' environment; connecting in `connect`, the
//! password file in `pgpass`.

mod connect;
mod pgpass;

use std::path::PathBuf;

use clap::Args;

use super::ServerRole;
use pgpass::password_from_file;

/// Where the database is and how to log in.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Host name or address of the PostgreSQL server; several, comma-separated, to choose
    /// among by `--pg-server-role`.
    #[arg(long, env = "PGHOST", default_value = "localhost")]
    pub pg_host: String,
    /// Which of the hosts to use: `any` (the first that answers), `primary` (the one not in
    /// recovery), `standby` or `prefer-standby` (a standby, else the primary).
    #[arg(long, env = "PGBACKUP_SERVER_ROLE", value_enum, default_value_t = ServerRole::Any)]
    pub pg_server_role: ServerRole,
    /// TCP port of the server.
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    pub pg_port: u16,
    /// Role to connect as. Physical backups need REPLICATION.
    #[arg(long, env = "PGUSER", default_value = "postgres")]
    pub pg_user: String,
    /// Database to connect to for SQL.
    #[arg(long, env = "PGDATABASE", default_value = "postgres")]
    pub pg_database: String,
    /// libpq `sslmode`: disable, allow, prefer, require, verify-ca or verify-full.
    #[arg(long, env = "PGSSLMODE", default_value = "prefer")]
    pub pg_sslmode: String,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (verify-ca,
    /// verify-full; with require, it makes require check the chain as libpq does).
    #[arg(long, env = "PGSSLROOTCERT", value_name = "FILE")]
    pub pg_sslrootcert: Option<PathBuf>,
    /// Seconds to wait for the server to answer.
    #[arg(long, default_value_t = 10)]
    pub pg_connect_timeout: u64,
    /// Let the server ask for the password in clear text or as an MD5 hash. Without it
    /// pgbackup's connections send a password only through SCRAM (bound to the TLS
    /// session when sslmode requires TLS), and PostgreSQL's tools are given
    /// `PGREQUIREAUTH=scram-sha-256,none` (honoured by libpq 16 and later) and then
    /// `PGCHANNELBINDING=require`.
    #[arg(long, env = "PGBACKUP_ALLOW_WEAK_AUTH")]
    pub pg_allow_weak_auth: bool,
    /// Server settings for every session (libpq's `PGOPTIONS`), set by the agent itself
    /// for servers it started on restored data.
    #[arg(skip)]
    pub pg_options: Option<String>,
}

/// Connecting failed, said so that the user knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Nothing answered at the address.
    #[error("cannot reach PostgreSQL at {target}")]
    Unreachable {
        /// `host:port`.
        target: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The socket could not be opened.
    #[error("cannot reach PostgreSQL at {target}")]
    Socket {
        /// `host:port`.
        target: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("PostgreSQL at {target} did not answer within {seconds} s")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The timeout.
        seconds: u64,
    },
    /// The server refused the credentials.
    /// The role is not named: it comes from a Secret.
    #[error("PostgreSQL at {target} refused the login with the credentials given: {reason}")]
    Authentication {
        /// `host:port`.
        target: String,
        /// What the server said, with the role redacted.
        reason: String,
    },
    /// TLS could not be set up as asked.
    #[error(transparent)]
    Tls(#[from] super::TlsError),
    /// The TLS handshake failed (the server has no TLS, or its certificate did not pass).
    #[error("TLS with PostgreSQL at {target} failed (sslmode {mode})")]
    TlsHandshake {
        /// `host:port`.
        target: String,
        /// The sslmode.
        mode: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An unknown sslmode.
    #[error("unknown sslmode {0:?}: use disable, allow, prefer, require, verify-ca or verify-full")]
    BadSslMode(String),
    /// None of the hosts listed is a server of the role asked for.
    #[error("no {wanted} to connect to: {reason}")]
    NoServer {
        /// The role asked for.
        wanted: &'static str,
        /// What each host answered.
        reason: String,
    },
    /// A query failed.
    #[error("{what} failed")]
    Query {
        /// What was being asked.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Resolved connection settings, password included (never in `Debug` output).
#[derive(Clone)]
pub struct PgConnection {
    /// The arguments.
    pub args: ConnectionArgs,
    password: Option<String>,
    roots: Option<super::RootCertificates>,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("args", &self.args)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("roots", &self.roots)
            .finish()
    }
}

impl PgConnection {
    /// Resolves the password from `PGPASSWORD`, else the password file (`PGPASSFILE`, default
    /// `~/.pgpass`).
    pub fn resolve(args: &ConnectionArgs) -> Self {
        let password = std::env::var("PGPASSWORD")
            .ok()
            .or_else(|| password_from_file(args));
        Self {
            args: args.clone(),
            password,
            roots: args
                .pg_sslrootcert
                .clone()
                .map(super::RootCertificates::File),
        }
    }

    /// Settings with the password and CA certificates given rather than looked up (the
    /// operator reads them from the target's Secrets).
    pub fn with_secrets(
        args: ConnectionArgs,
        password: Option<String>,
        ca_pem: Option<Vec<u8>>,
    ) -> Self {
        let roots = ca_pem.map(super::RootCertificates::Pem).or_else(|| {
            args.pg_sslrootcert
                .clone()
                .map(super::RootCertificates::File)
        });
        Self {
            args,
            password,
            roots,
        }
    }

    /// The same settings for one host of the list.
    pub fn with_host(&self, host: &str) -> Self {
        let mut args = self.args.clone();
        args.pg_host = host.to_string();
        args.pg_server_role = ServerRole::Any;
        Self {
            password: self.password.clone().or_else(|| password_from_file(&args)),
            args,
            roots: self.roots.clone(),
        }
    }

    /// `host:port`, for messages.
    pub fn target(&self) -> String {
        format!("{}:{}", self.args.pg_host, self.args.pg_port)
    }

    /// Whether logins must bind SCRAM to the TLS session: a password is sent, TLS is
    /// required (`require`, `verify-ca`, `verify-full`) and weak logins are not allowed.
    fn binds_channel(&self) -> bool {
        self.password.is_some()
            && !self.args.pg_allow_weak_auth
            && matches!(
                self.args.pg_sslmode.as_str(),
                "require" | "verify-ca" | "verify-full"
            )
    }

    /// The libpq environment for PostgreSQL's tools (`pg_dump`, `pg_basebackup`, …).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.args.pg_host.clone()),
            ("PGPORT", self.args.pg_port.to_string()),
            ("PGUSER", self.args.pg_user.clone()),
            ("PGDATABASE", self.args.pg_database.clone()),
            ("PGSSLMODE", self.args.pg_sslmode.clone()),
            ("PGAPPNAME", "pgbackup".to_string()),
            (
                "PGCONNECT_TIMEOUT",
                self.args.pg_connect_timeout.to_string(),
            ),
        ];
        if let Some(root) = &self.args.pg_sslrootcert {
            env.push(("PGSSLROOTCERT", root.display().to_string()));
        }
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.clone()));
        }
        if !self.args.pg_allow_weak_auth {
            env.push(("PGREQUIREAUTH", "scram-sha-256,none".into()));
        }
        if self.binds_channel() {
            env.push(("PGCHANNELBINDING", "require".into()));
        }
        if let Some(options) = &self.args.pg_options {
            env.push(("PGOPTIONS", options.clone()));
        }
        env
    }
}
