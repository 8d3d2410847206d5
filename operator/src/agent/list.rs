//! `pgbackup list`: the backups of a server in a repository and, when WAL is archived, the
//! recoverability window of each timeline; as a table or JSON.

use clap::Args;
use serde::Serialize;

use super::{
    AgentError,
    progress::human_bytes,
    repository_args::RepositoryArgs,
    restore::{Sources, Window, window},
};
use crate::repository::{
    ArchiveIdentity, Catalog, Manifest, ObjectStore, TimelinePath, WalArchive, format_lsn,
};

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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedWindow {
    timeline: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_time: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_time: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_lsn: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedArchive<'a> {
    #[serde(flatten)]
    identity: &'a ArchiveIdentity,
    timelines: Vec<ListedWindow>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing<'a> {
    backups: Vec<Listed<'a>>,
    wal_archive: Option<ListedArchive<'a>>,
}

/// Lists the backups; returns the text to print.
pub async fn run(args: &ListArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    let server = &args.repository.server;
    let catalog = Catalog::load(&store, server).await?;
    let archive = WalArchive::new(&store, server).with_keys(args.repository.keys()?);
    let identity = archive.identity().await?;
    let windows = match &identity {
        Some(identity) => windows(&archive, identity, &catalog).await?,
        None => Vec::new(),
    };
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
        let wal_archive = identity.as_ref().map(|identity| ListedArchive {
            identity,
            timelines: windows
                .iter()
                .map(|w| ListedWindow {
                    timeline: w.timeline,
                    from_time: w.from.map(|(t, _)| t),
                    from_lsn: w.from.map(|(_, l)| format_lsn(l)),
                    to_time: w.to.map(|(t, _)| t),
                    to_lsn: w.to.map(|(_, l)| format_lsn(l)),
                })
                .collect(),
        });
        let listing = Listing {
            backups: listed,
            wal_archive,
        };
        return serde_json::to_string_pretty(&listing)
            .map_err(|e| AgentError::Invalid(e.to_string()));
    }
    let mut out = table(&catalog);
    if let Some(identity) = &identity {
        out.push_str(&format!(
            "\nWAL archive of cluster {} (PostgreSQL {}, {} segments):\n",
            identity.system_identifier,
            identity.server_major,
            human_bytes(identity.wal_segment_size)
        ));
        for window in &windows {
            out.push_str(&format!("  {window}\n"));
        }
    }
    Ok(out)
}

/// The recoverability window of every timeline the archive holds.
pub(crate) async fn windows<S: ObjectStore>(
    archive: &WalArchive<'_, S>,
    identity: &ArchiveIdentity,
    catalog: &Catalog,
) -> Result<Vec<Window>, AgentError> {
    let segment_size = identity.wal_segment_size;
    let index = archive.index(segment_size).await?;
    let coverage = archive.coverage().await?;
    let mut timelines: Vec<u32> = index
        .segments
        .keys()
        .chain(index.partials.keys())
        .map(|(t, _)| *t)
        .chain(index.histories.iter().copied())
        .collect();
    timelines.sort_unstable();
    timelines.dedup();
    let backups: Vec<&Manifest> = catalog
        .backups
        .iter()
        .filter_map(|b| b.manifest.as_ref())
        .collect();
    let mut windows = Vec::new();
    for timeline in timelines {
        let Some(history) = archive.history(timeline, segment_size).await? else {
            tracing::warn!("timeline {timeline} has WAL but no history file in the archive");
            continue;
        };
        let path = TimelinePath::new(timeline, &history);
        windows.push(window(&Sources {
            backups: &backups,
            index: Some(&index),
            identity: Some(identity),
            coverage: coverage.as_ref(),
            path: &path,
        }));
    }
    Ok(windows)
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
                m.kind_label().into(),
                "complete".into(),
                m.end_time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                human_bytes(m.size()),
                human_bytes(m.stored_size()),
                match (&m.begin_lsn, &m.end_lsn) {
                    (Some(begin), Some(end)) => format!(
                        "PostgreSQL {} WAL {begin}..{end} timeline {}{}",
                        m.server_version,
                        m.timeline.unwrap_or(1),
                        m.parent().map_or(String::new(), |parent| format!(
                            ", on top of {parent} (chain of {})",
                            m.chain.len() + 1
                        ))
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
