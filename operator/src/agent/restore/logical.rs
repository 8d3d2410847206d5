//! Restoring a logical backup into a running server: globals statement by statement over
//! the agent's own connection ([`super::globals`]), each database with pg_restore — whole,
//! into its own name or another (`--into-database`), or in part ([`super::selection`]).
//! What exists is replaced only with `--clean`, and only after its dump has been read whole
//! and checked; a database this restore created is dropped again when its restore fails.

use std::io::Write;

use tokio::io::AsyncReadExt;

use super::{
    RestoreArgs,
    dump_archive::DumpArchive,
    same_cluster::{self, ExpectedCluster},
    selection::{self, Selection},
};
use crate::{
    agent::{
        AgentError,
        process::{PgBin, drain},
    },
    postgres::{PgConnection, ServerInfo},
    repository::{BackupDir, BackupKind, Keys, Manifest, ObjectRole, Store, open_object},
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
    let whole_targets: Vec<&str> = match into_database {
        _ if selection.is_partial() => Vec::new(),
        Some(into) => vec![into],
        None => databases.iter().map(String::as_str).collect(),
    };
    let clashes: Vec<&str> = whole_targets
        .into_iter()
        .filter(|d| existing.iter().any(|e| e == d))
        .collect();
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
    if selection.is_partial() || into_database.is_some() {
        tracing::info!(
            "roles and tablespaces left as they are: only a whole restore into the databases' own names replays them"
        );
    } else if !args.no_globals {
        restore_globals(&client, store, dir, manifest, keys.as_ref()).await?;
    }
    let client_target = connection.target();
    for database in &databases {
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
            keys.as_ref(),
            &pg_bin,
            whole && args.jobs > 1,
            args.scratch_dir.as_deref(),
        )
        .await?;
        let exists = existing.iter().any(|d| d == into);
        if exists && !archive.is_local() && (args.clean || !whole) {
            // The database changes in place: prove the dump whole before that.
            drain(open_object(store, dir, object, manifest, keys.as_ref()).await?).await?;
        }
        let target = Target {
            database: into,
            exists,
        };
        let restored = if !whole {
            restore_part(args, &connection, &archive, &target, &env, database).await
        } else {
            restore_whole(
                args,
                &archive,
                &target,
                into_database.is_some(),
                &env,
                &client,
            )
            .await
        };
        if let Err(err) = restored {
            if !exists {
                drop_partial_database(&client, into).await;
            }
            return Err(err);
        }
        tracing::info!(database = %database, into = %into, "restored database {database}");
    }
    if !selection.is_partial() && into_database.is_none() {
        return Ok(format!(
            "restored logical backup {} ({} databases) into {client_target}",
            dir.backup_id,
            databases.len(),
        ));
    }
    Ok(format!(
        "restored {} of database {} of logical backup {} into database {} on {client_target}",
        if selection.is_partial() {
            describe(selection)
        } else {
            "all".to_string()
        },
        databases[0],
        dir.backup_id,
        into_database.unwrap_or(&databases[0]),
    ))
}

/// The whole of one object of a backup, checked against its manifest; `None` when it is
/// larger than `limit` bytes (no more than that is read).
pub(crate) async fn read_whole(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    object: &crate::repository::ObjectEntry,
    keys: Option<&Keys>,
    limit: u64,
) -> Result<Option<Vec<u8>>, AgentError> {
    let reader = open_object(store, dir, object, manifest, keys).await?;
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| AgentError::Io {
            path: dir.key(&object.name),
            source,
        })?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Replays the backup's roles and tablespaces, statement by statement.
async fn restore_globals(
    client: &tokio_postgres::Client,
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    keys: Option<&Keys>,
) -> Result<(), AgentError> {
    let Some(globals) = manifest.object(ObjectRole::Globals, None) else {
        return Ok(());
    };
    let script = read_whole(store, dir, manifest, globals, keys, GLOBALS_LIMIT)
        .await?
        .ok_or_else(|| {
            AgentError::Corrupt(format!(
                "the globals of backup {} are larger than {} MiB: no roles script is",
                dir.backup_id,
                GLOBALS_LIMIT >> 20
            ))
        })?;
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
    Ok(())
}

/// The database a dump is restored into.
struct Target<'a> {
    database: &'a str,
    /// It existed before the restore (else the restore created it, and drops it on failure).
    exists: bool,
}

/// A whole dump: into its own database (`--create`, replacing it with `--clean`), or into
/// `--into-database` (created when missing, its objects replaced with `--clean`).
async fn restore_whole(
    args: &RestoreArgs,
    archive: &DumpArchive<'_>,
    target: &Target<'_>,
    elsewhere: bool,
    env: &[(&str, String)],
    client: &tokio_postgres::Client,
) -> Result<(), AgentError> {
    let mut restore_args = vec!["--no-password".to_string()];
    if elsewhere {
        if !target.exists {
            create_database(client, target.database).await?;
        }
        restore_args.push(format!("--dbname={}", target.database));
    } else {
        // pg_restore --create connects to another database to drop and create this one:
        // the `postgres` database itself is replaced from template1.
        let maintenance = if target.database == "postgres" {
            "template1"
        } else {
            "postgres"
        };
        restore_args.extend(["--create".to_string(), format!("--dbname={maintenance}")]);
    }
    if target.exists {
        restore_args.extend(["--clean".to_string(), "--if-exists".to_string()]);
    }
    restore_args.extend(common_args(args));
    if args.jobs > 1 {
        restore_args.push(format!("--jobs={}", args.jobs));
    }
    archive.restore(&restore_args, env).await
}

/// Part of a dump (`--schema`, `--table`, `--data-only`) in one transaction: what
/// pg_restore's filters match, with what belongs to it, into a database that is created
/// when missing. A clash with an existing object fails it whole; `--clean` replaces them.
async fn restore_part(
    args: &RestoreArgs,
    connection: &PgConnection,
    archive: &DumpArchive<'_>,
    target: &Target<'_>,
    env: &[(&str, String)],
    database: &str,
) -> Result<(), AgentError> {
    let selection = &args.selection;
    let toc = selection::parse_toc(&archive.list(&["--verbose".to_string()]).await?);
    let mut seed = std::collections::BTreeSet::new();
    for run in selection.seed_runs().map_err(AgentError::Invalid)? {
        seed.extend(selection::listed_ids(&archive.list(&run).await?));
    }
    if seed.is_empty() {
        return Err(AgentError::Invalid(format!(
            "nothing in the dump of database {database} matches {} (names are matched exactly, case included)",
            describe(selection)
        )));
    }
    if !target.exists {
        create_database(&connection.connect(None).await?, target.database).await?;
    }
    let client = connection.connect(Some(target.database)).await?;
    let schemas: Vec<String> = client
        .query("SELECT nspname FROM pg_namespace", &[])
        .await
        .map_err(|source| crate::postgres::ConnectionError::Query {
            what: "listing the schemas",
            source,
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let chosen = selection::select(&toc, &seed, |name| !schemas.iter().any(|s| s == name));
    tracing::info!(
        database,
        into = target.database,
        entries = chosen.len(),
        "restoring {} of database {database}: {} entries of its dump",
        describe(selection),
        chosen.len()
    );
    let mut list = tempfile::Builder::new()
        .prefix("pgbackup-restore-")
        .suffix(".list")
        .tempfile_in(args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|source| AgentError::Io {
            path: "the restore list".into(),
            source,
        })?;
    for entry in &chosen {
        writeln!(list, "{}", entry.line).map_err(|source| AgentError::Io {
            path: list.path().display().to_string(),
            source,
        })?;
    }
    let mut restore_args = vec![
        "--no-password".to_string(),
        format!("--dbname={}", target.database),
        format!("--use-list={}", list.path().display()),
        "--single-transaction".to_string(),
    ];
    if args.clean {
        restore_args.extend(["--clean".to_string(), "--if-exists".to_string()]);
    }
    restore_args.extend(common_args(args));
    archive.restore(&restore_args, env).await.map_err(|err| {
        match err {
            AgentError::Tool(tool) if tool.to_string().contains("already exists") && !args.clean => {
                AgentError::Invalid(format!(
                    "{tool}; nothing was restored: pass --clean to replace what exists, or restore into another database with --into-database"
                ))
            }
            other => other,
        }
    })
}

/// Options every pg_restore run of this restore takes.
fn common_args(args: &RestoreArgs) -> Vec<String> {
    let mut common = Vec::new();
    if args.no_owner {
        common.extend(["--no-owner".to_string(), "--no-privileges".to_string()]);
    }
    if args.selection.schema_only {
        common.push("--schema-only".to_string());
    }
    if args.selection.data_only {
        common.push("--data-only".to_string());
    }
    common
}

/// What a selection asks for, for messages.
fn describe(selection: &Selection) -> String {
    let mut parts = Vec::new();
    if !selection.schemas.is_empty() {
        parts.push(format!("schemas {:?}", selection.schemas));
    }
    if !selection.tables.is_empty() {
        parts.push(format!("tables {:?}", selection.tables));
    }
    if parts.is_empty() {
        parts.push("every table's rows".to_string());
    }
    parts.join(" and ")
}

async fn create_database(client: &tokio_postgres::Client, name: &str) -> Result<(), AgentError> {
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
async fn drop_partial_database(client: &tokio_postgres::Client, database: &str) {
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
