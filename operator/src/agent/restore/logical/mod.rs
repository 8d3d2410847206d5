//! Restoring a logical backup into a running server: globals statement by statement over
//! the agent's own connection ([`super::globals`]), each database with pg_restore — whole,
//! into its own name or another (`--into-database`), or in part ([`super::selection`]).
//! What exists is replaced only with `--clean`, and only after its dump has been read whole
//! and checked; a database this restore created is dropped again when its restore fails.
//! Read top-down: which databases → the server restored into ([`destination`]) → its roles
//! and tablespaces ([`globals_replay`]) → each database's dump ([`pg_restore`]).

mod destination;
mod globals_replay;
mod pg_restore;

pub(crate) use globals_replay::read_whole;

use destination::{Destination, drop_partial_database};
use pg_restore::{Target, describe, restore_part, restore_whole};

use super::{RestoreArgs, dump_archive::DumpArchive};
use crate::{
    agent::{
        AgentError,
        process::{PgBin, drain},
    },
    repository::{BackupDir, BackupKind, Keys, Manifest, Store, open_object},
};

/// Restores a logical backup: which databases, the server restored into, its roles and
/// tablespaces, then each database's dump.
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
    let databases = chosen_databases(args, dir, manifest)?;
    let destination = Destination::connect(args, dir, manifest).await?;
    destination.check_clashes(args, &databases)?;
    let mut env = destination.connection.libpq_env();
    env.retain(|(k, _)| *k != "PGDATABASE");
    env.push(("PGDATABASE", "postgres".to_string()));
    let run = Run {
        args,
        store,
        dir,
        manifest,
        keys,
        pg_bin: PgBin(args.pg_bin.clone()),
        destination,
        env,
    };
    let selection = &args.selection;
    if selection.is_partial() || selection.into_database.is_some() {
        tracing::info!(
            "roles and tablespaces left as they are: only a whole restore into the databases' own names replays them"
        );
    } else if !args.no_globals {
        let client = &run.destination.client;
        globals_replay::restore_globals(client, store, dir, manifest, run.keys.as_ref()).await?;
    }
    for database in &databases {
        run.restore_database(database).await?;
    }
    Ok(summary(
        args,
        dir,
        &databases,
        &run.destination.connection.target(),
    ))
}

/// The databases to restore: those asked for (each must be in the backup) or all of the
/// backup's; one only when part of a dump is restored or into another name. The names of
/// the selection are checked before anything is read or changed.
fn chosen_databases(
    args: &RestoreArgs,
    dir: &BackupDir,
    manifest: &Manifest,
) -> Result<Vec<String>, AgentError> {
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
    let selection = &args.selection;
    let into_database = selection.into_database.as_deref();
    if (selection.is_partial() || into_database.is_some()) && databases.len() != 1 {
        return Err(AgentError::Invalid(format!(
            "--schema, --table, --data-only and --into-database restore one database: name it with --database (backup {} holds {:?})",
            dir.backup_id, manifest.databases
        )));
    }
    // Names are checked before anything is read or changed.
    selection.seed_runs().map_err(AgentError::Invalid)?;
    if selection.is_partial() && args.jobs > 1 {
        tracing::info!("restoring part of a dump in one transaction: --jobs is not used");
    }
    Ok(databases)
}

/// One logical restore: what was asked, the backup, and the server restored into.
struct Run<'a> {
    args: &'a RestoreArgs,
    store: &'a Store,
    dir: &'a BackupDir,
    manifest: &'a Manifest,
    keys: Option<Keys>,
    pg_bin: PgBin,
    destination: Destination,
    /// libpq's environment for pg_restore, which connects to `postgres` first.
    env: Vec<(&'static str, String)>,
}

impl Run<'_> {
    /// One database's dump restored, whole or in part; a database the restore created is
    /// dropped again when its restore fails.
    async fn restore_database(&self, database: &str) -> Result<(), AgentError> {
        let (args, store, dir, manifest) = (self.args, self.store, self.dir, self.manifest);
        let keys = self.keys.as_ref();
        let selection = &args.selection;
        let into_database = selection.into_database.as_deref();
        let object = manifest.dump_of(database).ok_or_else(|| {
            AgentError::Corrupt(format!(
                "backup {} lists database {database} but has no dump of it",
                dir.backup_id
            ))
        })?;
        let into = into_database.unwrap_or(database);
        let whole = !selection.is_partial();
        let archive = DumpArchive::open(
            store,
            dir,
            manifest,
            object,
            keys,
            &self.pg_bin,
            whole && args.jobs > 1,
            args.scratch_dir.as_deref(),
        )
        .await?;
        let exists = self.destination.holds(into);
        if exists && !archive.is_local() && (args.clean || !whole) {
            // The database changes in place: prove the dump whole before that.
            drain(open_object(store, dir, object, manifest, keys).await?).await?;
        }
        let target = Target {
            database: into,
            exists,
        };
        let restored = if !whole {
            restore_part(
                args,
                &self.destination.connection,
                &archive,
                &target,
                &self.env,
                database,
            )
            .await
        } else {
            restore_whole(
                args,
                &archive,
                &target,
                into_database.is_some(),
                &self.env,
                &self.destination.client,
            )
            .await
        };
        if let Err(err) = restored {
            if !exists {
                drop_partial_database(&self.destination.client, into).await;
            }
            return Err(err);
        }
        tracing::info!(database = %database, into = %into, "restored database {database}");
        Ok(())
    }
}

/// What the restore says it did.
fn summary(
    args: &RestoreArgs,
    dir: &BackupDir,
    databases: &[String],
    client_target: &str,
) -> String {
    let selection = &args.selection;
    let into_database = selection.into_database.as_deref();
    if !selection.is_partial() && into_database.is_none() {
        return format!(
            "restored logical backup {} ({} databases) into {client_target}",
            dir.backup_id,
            databases.len(),
        );
    }
    format!(
        "restored {} of database {} of logical backup {} into database {} on {client_target}",
        if selection.is_partial() {
            describe(selection)
        } else {
            "all".to_string()
        },
        databases[0],
        dir.backup_id,
        into_database.unwrap_or(&databases[0]),
    )
}
