//! A throwaway PostgreSQL server for the restore test: it runs on a data directory inside
//! a private scratch directory, listens only on a Unix socket there, trusts local
//! connections (nobody else can reach the socket), archives nothing, loads no extension
//! libraries the agent's image may lack, and is stopped and deleted with the test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

use crate::agent::{AgentError, process::PgBin};

/// Port number in the socket's name (no TCP port is opened).
const PORT: u16 = 5432;

/// How long the server may take to accept connections (crash recovery of a large restored
/// directory is not needed: it was shut down cleanly after recovery).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// A running scratch server.
#[derive(Debug)]
pub(super) struct ScratchServer {
    pgdata: PathBuf,
    sockets: PathBuf,
    pg_bin: PgBin,
    child: Child,
    log: PathBuf,
    user: String,
    /// `options` of every session ([`crate::agent::restore::restored_session_options`]).
    options: String,
}

/// Creates an empty cluster for a logical restore, owned by a superuser named `postgres`.
pub(super) async fn init(pgdata: &Path, pg_bin: &PgBin) -> Result<(), AgentError> {
    let out = crate::agent::process::tool_command(pg_bin.program("initdb"))
        .arg("-D")
        .arg(pgdata)
        .args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .await
        .map_err(|source| AgentError::Io {
            path: pg_bin.program("initdb").display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AgentError::Invalid(format!(
            "initdb of the scratch server failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl ScratchServer {
    /// Starts PostgreSQL on `pgdata`, with sockets and its own configuration files in
    /// `scratch`, and waits until it accepts connections.
    pub async fn start(pgdata: &Path, scratch: &Path, pg_bin: &PgBin) -> Result<Self, AgentError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| AgentError::Io { path, source }
        };
        let sockets = scratch.join("sockets");
        std::fs::create_dir_all(&sockets).map_err(io(&sockets))?;
        let hba = scratch.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\n").map_err(io(&hba))?;
        let log = scratch.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(io(&log))?;
        let mut command = Command::new(pg_bin.program("postgres"));
        command.arg("-D").arg(pgdata);
        let mut settings = vec![
            ("listen_addresses", String::new()),
            ("unix_socket_directories", sockets.display().to_string()),
            ("port", PORT.to_string()),
            ("hba_file", hba.display().to_string()),
            // Certificates the production server names may live outside PGDATA.
            ("ssl", "off".into()),
            ("archive_mode", "off".into()),
            // The production server's memory settings need not fit the test's pod.
            ("shared_buffers", "128MB".into()),
            ("huge_pages", "off".into()),
            ("logging_collector", "off".into()),
            ("lc_messages", "C".into()),
        ];
        // Images that keep the configuration outside PGDATA restore a directory without it.
        if !pgdata.join("postgresql.conf").exists() {
            let conf = scratch.join("postgresql.conf");
            std::fs::write(&conf, "").map_err(io(&conf))?;
            settings.push(("config_file", conf.display().to_string()));
        }
        if !pgdata.join("pg_ident.conf").exists() {
            let ident = scratch.join("pg_ident.conf");
            std::fs::write(&ident, "").map_err(io(&ident))?;
            settings.push(("ident_file", ident.display().to_string()));
        }
        settings.extend(
            crate::agent::restore::RESTORED_CODE_OFF.map(|(name, value)| (name, value.to_string())),
        );
        // The data directory says its major version (login event triggers: 17 and later).
        let major: u32 = std::fs::read_to_string(pgdata.join("PG_VERSION"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if major >= 17 {
            settings.push(("event_triggers", "off".into()));
        }
        for (name, value) in &settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = command.spawn().map_err(io(&pg_bin.program("postgres")))?;
        let mut server = Self {
            pgdata: pgdata.to_path_buf(),
            sockets,
            pg_bin: pg_bin.clone(),
            child,
            log,
            user: String::new(),
            options: crate::agent::restore::restored_session_options(major),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits for the first successful connection (to `template1`, which a restored cluster
    /// has even when its `postgres` database was dropped), as whichever role exists: the
    /// agent's `PGUSER`, else `postgres`.
    async fn wait_ready(&mut self) -> Result<(), AgentError> {
        let mut users = Vec::new();
        if let Ok(user) = std::env::var("PGUSER")
            && !user.is_empty()
        {
            users.push(user);
        }
        users.push("postgres".into());
        users.dedup();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AgentError::Invalid(format!(
                    "the restored server did not start ({status}): {}",
                    self.log_tail()
                )));
            }
            for user in &users {
                match self.connect_as(user, "template1").await {
                    Ok(_) => {
                        self.user = user.clone();
                        return Ok(());
                    }
                    Err(err) => last = err.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(AgentError::Invalid(format!(
            "the restored server did not accept connections within {} s ({last}): {}",
            START_TIMEOUT.as_secs(),
            self.log_tail()
        )))
    }

    async fn connect_as(
        &self,
        user: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.sockets)
            .port(PORT)
            .user(user)
            .dbname(database)
            .application_name("pgbackup verify")
            .options(&self.options)
            .connect(NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A connection to `database` as the role that got in.
    pub async fn connect(&self, database: &str) -> Result<Client, AgentError> {
        self.connect_as(&self.user, database).await.map_err(|err| {
            AgentError::Invalid(format!(
                "cannot connect to database {database:?} of the restored server: {err}"
            ))
        })
    }

    /// The socket directory, for connection settings.
    pub fn socket_dir(&self) -> &Path {
        &self.sockets
    }

    /// The `options` every session must be opened with.
    pub fn session_options(&self) -> &str {
        &self.options
    }

    /// The role connections use.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// Stops the server (fast shutdown); kills it if that fails.
    pub async fn stop(mut self) {
        let stopped = crate::agent::process::tool_command(self.pg_bin.program("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["stop", "-m", "fast", "-w", "-t", "60"])
            .output()
            .await
            .is_ok_and(|out| out.status.success());
        if !stopped {
            let _ = self.child.kill().await;
        }
        let _ = self.child.wait().await;
    }
}
