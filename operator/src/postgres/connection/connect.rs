//! Opening our own tokio-postgres session (TLS as `sslmode` says, SCRAM bound to the TLS
//! session, the login checked by `login_guard`), and saying why it failed in words the user
//! can act on.

use std::time::Duration;

use tokio_postgres::{Client, error::SqlState};

use super::{ConnectionError, PgConnection};
use crate::postgres::login_guard::{Guarded, GuardedTls, WeakLoginRefused};

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

impl PgConnection {
    /// Connects to `database` (default: the configured one); the connection task runs on the
    /// current runtime.
    pub async fn connect(&self, database: Option<&str>) -> Result<Client, ConnectionError> {
        use crate::postgres::CertificateCheck;
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
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::postgres::client_config(
            check, root,
        )?);
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
                .map_err(|e| {
                    ConnectionError::Tls(crate::postgres::TlsError::Setup(e.to_string()))
                })?;
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
}
