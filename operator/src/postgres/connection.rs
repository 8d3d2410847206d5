//! Connection settings for PostgreSQL with libpq's environment fallbacks (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`/`PGPASSFILE`, `PGSSLMODE`,
//! `PGSSLROOTCERT`), our own tokio-postgres connection (TLS as `sslmode` says), and the
//! environment handed to PostgreSQL's tools. The password
//! never appears in an argument list.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use tokio_postgres::{Client, error::SqlState};

use super::{
    ServerRole,
    login_guard::{Guarded, GuardedTls, WeakLoginRefused},
};

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "PostgreSQL connection ended");
        }
    });
}

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

    /// Connects to `database` (default: the configured one); the connection task runs on the
    /// current runtime.
    pub async fn connect(&self, database: Option<&str>) -> Result<Client, ConnectionError> {
        use super::CertificateCheck;
        use tokio_postgres::config::SslMode;
        let root = self.roots.as_ref();
        let (ssl_mode, check) = match self.args.pg_sslmode.as_str() {
            "disable" => (SslMode::Disable, CertificateCheck::None),
            "allow" | "prefer" => (SslMode::Prefer, CertificateCheck::None),
            "require" if root.is_some() => (SslMode::Require, CertificateCheck::Chain),
            "require" => (SslMode::Require, CertificateCheck::None),
            "verify-ca" => (SslMode::Require, CertificateCheck::Chain),
            "verify-full" => (SslMode::Require, CertificateCheck::ChainAndName),
            other => return Err(ConnectionError::BadSslMode(other.to_string())),
        };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(super::client_config(check, root)?);
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.args.pg_host)
            .port(self.args.pg_port)
            .user(&self.args.pg_user)
            .dbname(database.unwrap_or(&self.args.pg_database))
            .application_name("pgbackup")
            .options(self.args.pg_options.as_deref().unwrap_or(""))
            .ssl_mode(ssl_mode)
            .connect_timeout(Duration::from_secs(self.args.pg_connect_timeout));
        if let Some(password) = &self.password {
            config.password(password);
            // Over TLS the SCRAM exchange is bound to the session (SCRAM-SHA-256-PLUS), so a
            // server in the middle cannot pass it on.
            if self.binds_channel() {
                config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
            }
        }
        let seconds = self.args.pg_connect_timeout;
        let connecting = self.connect_guarded(&config, tls, ssl_mode != SslMode::Disable);
        match tokio::time::timeout(Duration::from_secs(seconds + 1), connecting).await {
            Err(_) => Err(ConnectionError::Timeout {
                target: self.target(),
                seconds,
            }),
            Ok(result) => result,
        }
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

    /// Connects over a socket whose server side [`login_guard`] checks (a socket
    /// directory, local to this machine, is connected to as it is).
    async fn connect_guarded(
        &self,
        config: &tokio_postgres::Config,
        mut tls: tokio_postgres_rustls::MakeRustlsConnect,
        tls_request: bool,
    ) -> Result<Client, ConnectionError> {
        use tokio_postgres::tls::MakeTlsConnect;
        let host = &self.args.pg_host;
        if host.starts_with('/') {
            let (client, connection) = config.connect(tls).await.map_err(|e| self.classify(e))?;
            spawn_connection(connection);
            return Ok(client);
        }
        let socket = tokio::net::TcpStream::connect((host.as_str(), self.args.pg_port))
            .await
            .map_err(|source| ConnectionError::Socket {
                target: self.target(),
                source,
            })?;
        let _ = socket.set_nodelay(true);
        // As libpq and tokio-postgres do: long sessions (a snapshot's backup mode, the
        // archiver's) notice a peer that vanished.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(120));
        let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);
        let checked = !self.args.pg_allow_weak_auth;
        let socket = if checked {
            Guarded::socket(socket, tls_request)
        } else {
            Guarded::unchecked(socket)
        };
        let connector =
            MakeTlsConnect::<Guarded<tokio::net::TcpStream>>::make_tls_connect(&mut tls, host)
                .map_err(|e| ConnectionError::Tls(super::TlsError::Setup(e.to_string())))?;
        let (client, connection) = config
            .connect_raw(socket, GuardedTls::new(connector, checked))
            .await
            .map_err(|e| self.classify(e))?;
        spawn_connection(connection);
        Ok(client)
    }

    fn classify(&self, err: tokio_postgres::Error) -> ConnectionError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(current) = cause {
            if let Some(refusal) = current
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<WeakLoginRefused>())
            {
                return ConnectionError::Authentication {
                    target: self.target(),
                    reason: format!(
                        "{refusal}; allow it with allowWeakAuthentication (--pg-allow-weak-auth) only for a server you trust"
                    ),
                };
            }
            cause = current.source();
        }
        let auth_codes = [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        ];
        if let Some(db) = err.as_db_error()
            && auth_codes.contains(db.code())
        {
            crate::redact::name(&self.args.pg_user);
            return ConnectionError::Authentication {
                target: self.target(),
                reason: crate::redact::text(db.message()).into_owned(),
            };
        }
        if err.to_string().contains("password missing") {
            return ConnectionError::Authentication {
                target: self.target(),
                reason: "the server asks for a password and none was given (set PGPASSWORD or PGPASSFILE)".into(),
            };
        }
        let text = crate::agent::error_chain(&err);
        if text.contains("TLS") || text.contains("tls") || text.contains("certificate") {
            return ConnectionError::TlsHandshake {
                target: self.target(),
                mode: self.args.pg_sslmode.clone(),
                source: err,
            };
        }
        ConnectionError::Unreachable {
            target: self.target(),
            source: err,
        }
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

/// The password for these settings from a libpq password file, if any line matches.
fn password_from_file(args: &ConnectionArgs) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let wanted = [
        args.pg_host.as_str(),
        &args.pg_port.to_string(),
        &args.pg_database,
        &args.pg_user,
    ]
    .map(str::to_string);
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass_line(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(&wanted)
                .all(|(field, value)| field == "*" || field == value);
            matches.then(|| fields[4].clone())
        })
}

/// Splits a `.pgpass` line on unescaped `:`; `\:` and `\\` are literal.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ':' => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass_line(r"db\:host:5432:*:me:pa\:ss\\"),
            ["db:host", "5432", "*", "me", r"pa:ss\"]
        );
    }
}
