//! The server a logical backup is restored into: the primary of the hosts given, checked to
//! be the cluster asked for and of the same or a newer major version; the databases it
//! holds, which only `--clean` replaces; and creating, or after a failure dropping, a
//! database the restore makes.

use crate::{
    agent::{
        AgentError,
        restore::{
            RestoreArgs,
            same_cluster::{self, ExpectedCluster},
        },
    },
    postgres::{PgConnection, ServerInfo},
    repository::{BackupDir, Manifest},
};

/// The server restored into, as the restore found it.
pub(super) struct Destination {
    pub connection: PgConnection,
    pub client: tokio_postgres::Client,
    /// The databases it held before the restore.
    existing: Vec<String>,
}

impl Destination {
    /// Connects to the server and checks that the backup may be restored into it.
    pub(super) async fn connect(
        args: &RestoreArgs,
        dir: &BackupDir,
        manifest: &Manifest,
    ) -> Result<Self, AgentError> {
        // Of several hosts (`PGHOST` listing a StatefulSet's pods), the one of the role asked
        // for: a restore writes, so the primary.
        let connection = PgConnection::resolve(&args.connection)
            .choose_server()
            .await?;
        let client = connection.connect(None).await?;
        let server = ServerInfo::query(&client).await?;
        if let Some(expected) = &args.expect_cluster {
            // The server restored into is the cluster the backup must be of.
            let expected = match expected {
                ExpectedCluster::DataDir => ExpectedCluster::Id(
                    server.system_identifier.clone().ok_or_else(|| {
                        AgentError::OtherCluster(format!(
                            "{} does not say which cluster it is (reading pg_control_system() needs pg_monitor or superuser)",
                            connection.target()
                        ))
                    })?,
                ),
                id => id.clone(),
            };
            same_cluster::check(&expected, manifest, None, None)?;
        }
        if server.major() < manifest.server_version_num / 10_000 {
            return Err(AgentError::Invalid(format!(
                "backup {} comes from PostgreSQL {}; restore it into the same or a newer major version, not {}",
                dir.backup_id, manifest.server_version, server.version
            )));
        }
        let existing: Vec<String> = client
            .query("SELECT datname FROM pg_database", &[])
            .await
            .map_err(|source| crate::postgres::ConnectionError::Query {
                what: "listing the databases",
                source,
            })?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Self {
            connection,
            client,
            existing,
        })
    }

    /// Whether the server held `database` before the restore.
    pub(super) fn holds(&self, database: &str) -> bool {
        self.existing.iter().any(|d| d == database)
    }

    /// Refuses to replace databases that exist without `--clean`.
    pub(super) fn check_clashes(
        &self,
        args: &RestoreArgs,
        databases: &[String],
    ) -> Result<(), AgentError> {
        let selection = &args.selection;
        let into_database = selection.into_database.as_deref();
        let whole_targets: Vec<&str> = match into_database {
            _ if selection.is_partial() => Vec::new(),
            Some(into) => vec![into],
            None => databases.iter().map(String::as_str).collect(),
        };
        let clashes: Vec<&str> = whole_targets
            .into_iter()
            .filter(|d| self.holds(d))
            .collect();
        if !clashes.is_empty() && !args.clean {
            return Err(AgentError::Invalid(format!(
                "databases {clashes:?} already exist on {}: drop them first or pass --clean to replace them",
                self.connection.target()
            )));
        }
        Ok(())
    }
}

pub(super) async fn create_database(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), AgentError> {
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
        .await
        .map_err(|source| {
            AgentError::from(crate::postgres::ConnectionError::Query {
                what: "creating the database to restore into",
                source,
            })
        })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops a database a failed restore created, so that no half-restored copy is left.
pub(super) async fn drop_partial_database(client: &tokio_postgres::Client, database: &str) {
    if let Err(err) = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}",
            quote_ident(database)
        ))
        .await
    {
        tracing::warn!(database, error = %err, "could not drop the partly restored database");
    }
}
