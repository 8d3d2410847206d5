//! Logical backups: `pg_dumpall --globals-only`, then one `pg_dump` per database, each
//! streamed into the repository: the custom format straight from pg_dump's output
//! (nothing on local disk), the directory format of a parallel dump file by file
//! ([`super::dump_directory`]).

use super::{BackupContext, MethodResult, counts::DumpSnapshot, dump_directory, store_tool_output};
use crate::{
    agent::AgentError,
    api::DumpFormat,
    postgres::ServerInfo,
    repository::{NewObject, ObjectRole, database_object_name},
};

pub(super) async fn run(ctx: &BackupContext<'_>) -> Result<MethodResult, AgentError> {
    let databases = databases_to_dump(ctx).await?;
    let mut result = MethodResult::default();
    let env = ctx.connection.libpq_env();
    if !ctx.args.no_globals {
        result.objects.push(dump_globals(ctx, &env).await?);
    }
    for database in &databases {
        dump_database(ctx, &env, database, &mut result).await?;
    }
    result.databases = databases;
    Ok(result)
}

/// The databases named with `--database` (each must exist), else every one that accepts
/// connections.
async fn databases_to_dump(ctx: &BackupContext<'_>) -> Result<Vec<String>, AgentError> {
    let available = ServerInfo::databases(ctx.client).await?;
    if ctx.args.databases.is_empty() {
        return Ok(available);
    }
    let missing: Vec<&String> = ctx
        .args
        .databases
        .iter()
        .filter(|d| !available.contains(d))
        .collect();
    if !missing.is_empty() {
        return Err(AgentError::Invalid(format!(
            "no such database (or it refuses connections): {missing:?}"
        )));
    }
    Ok(ctx.args.databases.clone())
}

/// The roles and tablespaces (`pg_dumpall --globals-only`).
async fn dump_globals(
    ctx: &BackupContext<'_>,
    env: &[(&'static str, String)],
) -> Result<crate::repository::ObjectEntry, AgentError> {
    let superuser: bool = ctx
        .client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(false);

    // Only superusers may read role passwords; others still get the roles.
    let mut args = vec!["--globals-only", "--no-password"];
    if !superuser {
        args.push("--no-role-passwords");
    }
    dump(
        ctx,
        "pg_dumpall",
        &args,
        env,
        "globals.sql",
        ObjectRole::Globals,
        None,
    )
    .await
}

/// One database's dump, with its row counts read in the dump's own snapshot.
async fn dump_database(
    ctx: &BackupContext<'_>,
    env: &[(&'static str, String)],
    database: &str,
    result: &mut MethodResult,
) -> Result<(), AgentError> {
    let mut db_env = env.to_vec();
    db_env.retain(|(k, _)| *k != "PGDATABASE");
    db_env.push(("PGDATABASE", database.to_owned()));
    // pg_dump's own compression off: the repository compresses better and faster.
    let snapshot = if ctx.args.no_row_counts {
        None
    } else {
        Some(DumpSnapshot::take(ctx, database).await?)
    };
    let snapshot_arg = snapshot.as_ref().map(|s| format!("--snapshot={}", s.id));
    let mut args = vec!["--no-password"];
    args.extend(snapshot_arg.as_deref());
    let dumped = match ctx.args.format {
        DumpFormat::Custom => {
            args.extend(["--format=custom", "--compress=0"]);
            let name = format!("{}.dump", database_object_name(database));
            let role = ObjectRole::Database;
            dump(
                ctx,
                "pg_dump",
                &args,
                &db_env,
                &name,
                role,
                Some(database.to_owned()),
            )
            .await
        }
        DumpFormat::Directory => {
            let object = NewObject {
                name: format!("{}.dir.tar", database_object_name(database)),
                role: ObjectRole::DatabaseDirectory,
                database: Some(database.to_owned()),
            };
            dump_directory::dump(ctx, &args, &db_env, object).await
        }
    };
    if let Some(snapshot) = snapshot {
        result.row_counts.extend(snapshot.rows.iter().cloned());
        snapshot.release().await;
    }
    let object = dumped?;
    tracing::info!(database = %database, size = object.size, "dumped database {database}");
    result.objects.push(object);
    Ok(())
}

async fn dump(
    ctx: &BackupContext<'_>,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    name: &str,
    role: ObjectRole,
    database: Option<String>,
) -> Result<crate::repository::ObjectEntry, AgentError> {
    let object = NewObject {
        name: name.to_string(),
        role,
        database,
    };
    let (object, _stderr) =
        store_tool_output(ctx, program, args, env, object, |stdout| stdout).await?;
    Ok(object)
}
