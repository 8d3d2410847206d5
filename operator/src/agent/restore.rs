//! `pgbackup restore`: a logical backup into a running server (`--logical`), or a physical
//! base backup laid down in an empty data directory (`--pgdata`). Everything that can be
//! checked is checked before anything is changed; nothing existing is overwritten unless
//! asked (`--clean`).

use std::path::PathBuf;

use clap::Args;

use super::{
    AgentError,
    process::{PgBin, Tool, drain, pipe_into, unpack_tar},
    repository_args::RepositoryArgs,
};
use crate::{
    postgres::{ConnectionArgs, PgConnection, ServerInfo},
    repository::{
        BackupDir, BackupKind, Catalog, Manifest, ObjectRole, ObjectStore, Store, open_object,
    },
};

/// Options of `pgbackup restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,

    /// Backup id to restore, or `latest`.
    #[arg(long, default_value = "latest")]
    pub backup: String,

    /// Restore a logical backup into the server given by the connection options.
    #[arg(long, conflicts_with = "pgdata")]
    pub logical: bool,

    /// Lay a physical backup down in this data directory (it must be empty or absent).
    /// PostgreSQL started on it recovers to the end of the backup with the WAL included.
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Database to restore (logical; repeat for several). Default: all in the backup.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,

    /// Do not restore roles and tablespaces (logical).
    #[arg(long)]
    pub no_globals: bool,

    /// Drop and re-create databases that already exist (logical). Without it, an existing
    /// database stops the restore before anything is changed.
    #[arg(long)]
    pub clean: bool,

    /// Parallel pg_restore jobs per database (logical). Above 1 the dump is first fetched
    /// into `--scratch-dir`, since pg_restore cannot restore in parallel from a stream.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,

    /// Where dumps are fetched for `--jobs` above 1. Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// Directory of PostgreSQL's programs (pg_restore, psql). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// Restores; returns a summary line.
pub async fn run(args: &RestoreArgs) -> Result<String, AgentError> {
    if !args.logical && args.pgdata.is_none() {
        return Err(AgentError::Invalid(
            "say what to restore into: --logical (a running server) or --pgdata DIR".into(),
        ));
    }
    let store = args.repository.open().await?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    let (entry, manifest) = catalog.find(&args.backup).ok_or_else(|| {
        AgentError::Invalid(format!(
            "no complete backup {} of server {}",
            args.backup, args.repository.server
        ))
    })?;
    check_objects_present(&store, &entry.dir, manifest).await?;
    match &args.pgdata {
        Some(pgdata) => restore_physical(&store, &entry.dir, manifest, pgdata).await,
        None => restore_logical(args, &store, &entry.dir, manifest).await,
    }
}

/// Every chunk the manifest names is in the store with the recorded size.
async fn check_objects_present(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
) -> Result<(), AgentError> {
    let present = store.list(&dir.prefix()).await?;
    for chunk in manifest.objects.iter().flat_map(|o| &o.chunks) {
        let key = dir.key(&chunk.file);
        match present.iter().find(|p| p.key == key) {
            None => {
                return Err(AgentError::Corrupt(format!(
                    "object {key} of backup {} is missing",
                    dir.backup_id
                )));
            }
            Some(p) if p.size != chunk.size => {
                return Err(AgentError::Corrupt(format!(
                    "object {key} is corrupt: {} bytes stored, {} recorded in the manifest",
                    p.size, chunk.size
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn restore_physical(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    pgdata: &std::path::Path,
) -> Result<String, AgentError> {
    if manifest.kind != BackupKind::Physical {
        return Err(AgentError::Invalid(format!(
            "backup {} is {}, not physical: restore it with --logical",
            dir.backup_id,
            manifest.kind.as_str()
        )));
    }
    let existed = pgdata.exists();
    if existed {
        let mut entries = std::fs::read_dir(pgdata).map_err(|source| AgentError::Io {
            path: pgdata.display().to_string(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(AgentError::Invalid(format!(
                "{} is not empty: restore into an empty or new directory",
                pgdata.display()
            )));
        }
    }
    let data = manifest.object(ObjectRole::Data, None).ok_or_else(|| {
        AgentError::Corrupt(format!("backup {} has no data object", dir.backup_id))
    })?;
    let reader = open_object(store, dir, data, manifest.compression).await?;
    if let Err(err) = unpack_tar(reader, pgdata).await {
        // Leave nothing half-restored behind.
        if existed {
            if let Ok(entries) = std::fs::read_dir(pgdata) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(pgdata);
        }
        return Err(err);
    }
    Ok(format!(
        "restored physical backup {} (PostgreSQL {}, WAL {}..{}) into {}",
        dir.backup_id,
        manifest.server_version,
        manifest.begin_lsn.as_deref().unwrap_or("?"),
        manifest.end_lsn.as_deref().unwrap_or("?"),
        pgdata.display()
    ))
}

async fn restore_logical(
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
        let reader = open_object(store, dir, globals, manifest.compression).await?;
        // Roles that exist already make CREATE ROLE fail; the ALTER ROLE after it still
        // applies, so errors do not stop the script.
        let tool = Tool::spawn(
            &pg_bin.program("psql"),
            &["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-"],
            &env,
            true,
        )?;
        for line in pipe_into(reader, tool)
            .await?
            .iter()
            .filter(|l| l.contains("ERROR"))
        {
            tracing::warn!("globals: {line}");
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
            drain(open_object(store, dir, object, manifest.compression).await?).await?;
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
    let reader = open_object(store, dir, object, manifest.compression).await?;
    let mut restore_args = vec![
        "--create".to_string(),
        "--dbname=postgres".to_string(),
        "--no-password".to_string(),
    ];
    if replacing {
        restore_args.extend(["--clean".to_string(), "--if-exists".to_string()]);
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
