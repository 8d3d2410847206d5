//! The pg_restore runs of one database: a whole dump into its own name or another, or part
//! of it (`--schema`, `--table`, `--data-only`) from a list of what the selection takes.

use std::io::Write;

use super::destination::create_database;
use crate::{
    agent::{
        AgentError,
        restore::{
            RestoreArgs,
            dump_archive::DumpArchive,
            selection::{self, Selection},
        },
    },
    postgres::PgConnection,
};

/// The database a dump is restored into.
pub(super) struct Target<'a> {
    pub database: &'a str,
    /// It existed before the restore (else the restore created it, and drops it on failure).
    pub exists: bool,
}

/// A whole dump: into its own database (`--create`, replacing it with `--clean`), or into
/// `--into-database` (created when missing, its objects replaced with `--clean`).
pub(super) async fn restore_whole(
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
pub(super) async fn restore_part(
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
pub(super) fn describe(selection: &Selection) -> String {
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
