//! Restoring a logical backup into a running server: globals statement by statement over
//! the agent's own connection ([`super::globals`]), each database with pg_restore. An existing database is replaced only with `--clean`, and only after its
//! dump has been read whole and checked; a database this restore created is dropped again
//! when its restore fails.

use std::path::PathBuf;

use tokio::io::AsyncReadExt;

use super::{
    RestoreArgs,
    same_cluster::{self, ExpectedCluster},
};
use crate::{
    agent::{
        AgentError,
        process::{PgBin, Tool, drain, pipe_into},
    },
    postgres::{PgConnection, ServerInfo},
    repository::{BackupDir, BackupKind, Manifest, ObjectRole, Store, open_object},
};

/// Largest globals script read: roles and tablespaces, never this much.
const GLOBALS_LIMIT: u64 = 64 << 20;

pub(super) async fn restore(
    args: &RestoreArgs,
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
) -> Result<String, AgentError> {
    if manifest.kind != BackupKind::Logical {
        return Err(AgentError::Invalid(format!(
            "backup {} is {}, not logical: restore it with --pgdata",
            dir.backup_id,
            manifest.kind.as_str()
        )));
    }
    let keys = args.repository.keys()?;
    let databases = if args.databases.is_empty() {
        manifest.databases.clone()
    } else {
        let missing: Vec<&String> = args
            .databases
            .iter()
            .filter(|d| !manifest.databases.contains(d))
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::Invalid(format!(
                "backup {} has no database {missing:?}",
                dir.backup_id
            )));
        }
        args.databases.clone()
    };
    let connection = PgConnection::resolve(&args.connection);
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
    let clashes: Vec<&String> = databases.iter().filter(|d| existing.contains(d)).collect();
    if !clashes.is_empty() && !args.clean {
        return Err(AgentError::Invalid(format!(
            "databases {clashes:?} already exist on {}: drop them first or pass --clean to replace them",
            connection.target()
        )));
    }

    let pg_bin = PgBin(args.pg_bin.clone());
    let mut env = connection.libpq_env();
    env.retain(|(k, _)| *k != "PGDATABASE");
    env.push(("PGDATABASE", "postgres".to_string()));
    if !args.no_globals
        && let Some(globals) = manifest.object(ObjectRole::Globals, None)
    {
        let reader = open_object(store, dir, globals, manifest, keys.as_ref()).await?;
        let mut script = Vec::new();
        reader
            .take(GLOBALS_LIMIT + 1)
            .read_to_end(&mut script)
            .await
            .map_err(|source| AgentError::Io {
                path: dir.key(&globals.name),
                source,
            })?;
        if script.len() as u64 > GLOBALS_LIMIT {
            return Err(AgentError::Corrupt(format!(
                "the globals of backup {} are larger than {} MiB: no roles script is",
                dir.backup_id,
                GLOBALS_LIMIT >> 20
            )));
        }
        let script = String::from_utf8_lossy(&script);
        // Checked whole before the first statement runs.
        let statements = super::globals::statements(&script)?;
        // Roles that exist already make CREATE ROLE fail; the ALTER ROLE after it still
        // applies, so errors do not stop the script.
        for statement in &statements {
            if let Err(err) = client.batch_execute(statement).await {
                let words = err
                    .as_db_error()
                    .map_or_else(|| err.to_string(), |e| e.message().to_string());
                tracing::warn!("globals: {words}");
            }
        }
    }
    for database in &databases {
        let object = manifest
            .object(ObjectRole::Database, Some(database))
            .ok_or_else(|| {
                AgentError::Corrupt(format!(
                    "backup {} lists database {database} but has no dump of it",
                    dir.backup_id
                ))
            })?;
        let replacing = existing.contains(database);
        if replacing {
            // pg_restore --clean drops the database first: prove the dump whole before that.
            drain(open_object(store, dir, object, manifest, keys.as_ref()).await?).await?;
        }
        let restored =
            restore_database(args, store, dir, manifest, object, replacing, &pg_bin, &env).await;
        if let Err(err) = restored {
            if !replacing {
                drop_partial_database(&client, database).await;
            }
            return Err(err);
        }
        tracing::info!(database = %database, "restored database {database}");
    }
    Ok(format!(
        "restored logical backup {} ({} databases) into {}",
        dir.backup_id,
        databases.len(),
        connection.target()
    ))
}

#[allow(clippy::too_many_arguments)]
async fn restore_database(
    args: &RestoreArgs,
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    object: &crate::repository::ObjectEntry,
    replacing: bool,
    pg_bin: &PgBin,
    env: &[(&str, String)],
) -> Result<(), AgentError> {
    let keys = args.repository.keys()?;
    let reader = open_object(store, dir, object, manifest, keys.as_ref()).await?;
    // pg_restore --create connects to another database to drop and create this one: the
    // `postgres` database itself is replaced from template1.
    let maintenance = if object.database.as_deref() == Some("postgres") {
        "template1"
    } else {
        "postgres"
    };
    let mut restore_args = vec![
        "--create".to_string(),
        format!("--dbname={maintenance}"),
        "--no-password".to_string(),
    ];
    if replacing {
        restore_args.extend(["--clean".to_string(), "--if-exists".to_string()]);
    }
    if args.no_owner {
        restore_args.extend(["--no-owner".to_string(), "--no-privileges".to_string()]);
    }
    if args.jobs > 1 {
        let spooled = spool(reader, args.scratch_dir.as_deref()).await?;
        restore_args.push(format!("--jobs={}", args.jobs));
        restore_args.push(spooled.path().to_string_lossy().into_owned());
        let refs: Vec<&str> = restore_args.iter().map(String::as_str).collect();
        Tool::spawn(&pg_bin.program("pg_restore"), &refs, env, false)?
            .finish()
            .await?;
    } else {
        let refs: Vec<&str> = restore_args.iter().map(String::as_str).collect();
        let tool = Tool::spawn(&pg_bin.program("pg_restore"), &refs, env, true)?;
        pipe_into(reader, tool).await?;
    }
    Ok(())
}

/// Drops a database a failed restore created, so that no half-restored copy is left.
async fn drop_partial_database(client: &tokio_postgres::Client, database: &str) {
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    if let Err(err) = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted}"))
        .await
    {
        tracing::warn!(database, error = %err, "could not drop the partly restored database");
    }
}

/// Fetches a dump into a temporary file (removed when dropped) for a parallel pg_restore.
async fn spool(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    dir: Option<&std::path::Path>,
) -> Result<tempfile::NamedTempFile, AgentError> {
    let dir = dir.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let io_err = |source| AgentError::Io {
        path: dir.display().to_string(),
        source,
    };
    let spooled = tempfile::Builder::new()
        .prefix("pgbackup-restore-")
        .suffix(".dump")
        .tempfile_in(&dir)
        .map_err(io_err)?;
    let mut file = tokio::fs::File::from_std(spooled.reopen().map_err(io_err)?);
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(io_err)?;
    Ok(spooled)
}
