//! `pgbackup list`: the backups of a server in a repository, as a table or JSON.

use clap::Args;
use serde::Serialize;

use super::{AgentError, progress::human_bytes, repository_args::RepositoryArgs};
use crate::repository::{Catalog, Manifest};

/// Options of `pgbackup list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    backup_id: &'a str,
    kind: &'static str,
    complete: bool,
    stored_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a Manifest>,
}

/// Lists the backups; returns the text to print.
pub async fn run(args: &ListArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    if args.json {
        let listed: Vec<Listed<'_>> = catalog
            .backups
            .iter()
            .map(|b| Listed {
                backup_id: &b.dir.backup_id,
                kind: b.dir.kind.as_str(),
                complete: b.manifest.is_some(),
                stored_bytes: b.stored_bytes,
                manifest: b.manifest.as_ref(),
            })
            .collect();
        return serde_json::to_string_pretty(&listed)
            .map_err(|e| AgentError::Invalid(e.to_string()));
    }
    Ok(table(&catalog))
}

fn table(catalog: &Catalog) -> String {
    let mut rows = vec![
        [
            "BACKUP ID",
            "KIND",
            "STATUS",
            "FINISHED (UTC)",
            "SIZE",
            "STORED",
            "CONTENTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for backup in &catalog.backups {
        let row = match &backup.manifest {
            Some(m) => vec![
                backup.dir.backup_id.clone(),
                m.kind.as_str().into(),
                "complete".into(),
                m.end_time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                human_bytes(m.size()),
                human_bytes(m.stored_size()),
                match (&m.begin_lsn, &m.end_lsn) {
                    (Some(begin), Some(end)) => format!(
                        "PostgreSQL {} WAL {begin}..{end} timeline {}",
                        m.server_version,
                        m.timeline.unwrap_or(1)
                    ),
                    _ => format!(
                        "PostgreSQL {} databases: {}",
                        m.server_version,
                        m.databases.join(", ")
                    ),
                },
            ],
            None => vec![
                backup.dir.backup_id.clone(),
                backup.dir.kind.as_str().into(),
                "incomplete".into(),
                "-".into(),
                "-".into(),
                human_bytes(backup.stored_bytes),
                "no manifest: failed or still running".into(),
            ],
        };
        rows.push(row);
    }
    if catalog.backups.is_empty() {
        return "no backups\n".into();
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
