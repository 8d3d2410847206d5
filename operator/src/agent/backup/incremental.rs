//! Incremental physical backups (PostgreSQL 17+): what the server must offer, which backup
//! to build on (the newest physical backup of the same cluster and timeline), whether the
//! chain policy (`--full-every`, `--full-after`) wants a full backup instead, and the
//! parent's `backup_manifest`, handed to `pg_basebackup --incremental`.

use jiff::Timestamp;
use tokio::io::AsyncReadExt;

use super::BackupContext;
use crate::{
    agent::{
        AgentError,
        restore::{check_authentic, check_objects_present},
    },
    repository::{
        BackupKind, Catalog, Manifest, ObjectRole, open_object, parse_duration, read_manifest,
    },
};

/// The first major version whose server takes incremental backups.
const FIRST_VERSION: u32 = 170_000;

/// What an incremental backup builds on.
pub(super) struct Parent {
    /// The backups it builds on, the full one first, the parent last.
    pub chain: Vec<String>,
    /// The parent's `backup_manifest`, on local disk for `pg_basebackup`.
    pub manifest_file: tempfile::NamedTempFile,
}

impl Parent {
    pub(super) fn id(&self) -> &str {
        self.chain.last().map(String::as_str).unwrap_or_default()
    }
}

/// What a backup asked to be incremental is taken as.
pub(super) enum Decision {
    /// An incremental backup on this parent.
    Incremental(Parent),
    /// A full backup, for this reason.
    Full(String),
}

/// When the chain policy wants a full backup rather than another incremental one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChainPolicy {
    /// A full backup once the chain holds this many backups.
    pub full_every: Option<u32>,
    /// A full backup once the chain's full backup is this many seconds old.
    pub full_after_seconds: Option<i64>,
}

impl ChainPolicy {
    fn is_set(self) -> bool {
        self.full_every.is_some() || self.full_after_seconds.is_some()
    }
}

/// Decides between an incremental and a full backup: the chain policy first, then what the
/// server and the repository allow; with `--fall-back-to-full` a refusal becomes a full
/// backup that says why.
pub(super) async fn decide(ctx: &BackupContext<'_>) -> Result<Decision, AgentError> {
    match prepare(ctx).await {
        Ok(decision) => Ok(decision),
        Err(err @ (AgentError::Invalid(_) | AgentError::Corrupt(_)))
            if ctx.args.fall_back_to_full =>
        {
            tracing::warn!("no incremental backup can be taken: {err}; taking a full backup");
            Ok(Decision::Full(format!(
                "no incremental backup could be taken: {err}"
            )))
        }
        Err(err) => Err(err),
    }
}

/// Checks that the server can take an incremental backup and finds what it builds on.
async fn prepare(ctx: &BackupContext<'_>) -> Result<Decision, AgentError> {
    let (system_identifier, timeline) = server_can(ctx).await?;
    let manifests: Vec<&Manifest> = ctx.catalog.completed().map(|(_, m)| m).collect();
    let policy = ChainPolicy {
        full_every: ctx.args.full_every,
        full_after_seconds: ctx
            .args
            .full_after
            .as_deref()
            .and_then(|d| parse_duration(d).ok()),
    };
    let parent = match choose_parent(&manifests, &ctx.dir.server, system_identifier, timeline) {
        Ok(parent) => parent,
        Err(reason) if policy.is_set() => {
            let why = format!("a new chain starts: {reason}");
            tracing::info!("{why}");
            return Ok(Decision::Full(why));
        }
        Err(reason) => {
            return Err(AgentError::Invalid(format!(
                "{reason}: take a full backup first"
            )));
        }
    };
    if let Some(why) = chain_due(parent, &manifests, policy, Timestamp::now()) {
        tracing::info!("{why}: taking a full backup");
        return Ok(Decision::Full(why));
    }
    let mut chain = parent.chain.clone();
    chain.push(parent.backup_id.clone());
    check_chain(ctx, &chain).await?;
    let manifest_file = parent_manifest(ctx, parent).await?;
    tracing::info!(
        parent = %parent.backup_id,
        chain_length = chain.len() + 1,
        "taking an incremental backup of {} on top of backup {} (timeline {timeline})",
        ctx.dir.server,
        parent.backup_id
    );
    Ok(Decision::Incremental(Parent {
        chain,
        manifest_file,
    }))
}

/// What an incremental backup needs of the server: PostgreSQL 17+, WAL summaries, and to
/// know which cluster and timeline it is. The system identifier and the timeline.
async fn server_can<'a>(ctx: &BackupContext<'a>) -> Result<(&'a str, u32), AgentError> {
    let server = ctx.server;
    if server.version_num < FIRST_VERSION {
        return Err(AgentError::Invalid(format!(
            "incremental backups need PostgreSQL 17 or later; the server is {}: take full backups",
            server.version
        )));
    }
    let summarizing: String = query_one(ctx, "SELECT current_setting('summarize_wal')").await?;
    if summarizing != "on" {
        return Err(AgentError::Invalid(
            "the server does not summarize its WAL (summarize_wal is off): set summarize_wal = on \
             (postgresql.conf or ALTER SYSTEM, then reload), take a full backup, and incremental \
             ones after it"
                .into(),
        ));
    }
    let system_identifier = server.system_identifier.as_deref().ok_or_else(|| {
        AgentError::Invalid(
            "incremental backups need to know which cluster the server is: the role of the credentials given may not read pg_control_system() (grant it pg_monitor)".into(),
        )
    })?;
    let timeline: i32 = query_one(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").await?;
    Ok((
        system_identifier,
        u32::try_from(timeline).unwrap_or_default(),
    ))
}

/// The parent's `backup_manifest`, read from the repository into a local file for
/// `pg_basebackup --incremental`.
async fn parent_manifest(
    ctx: &BackupContext<'_>,
    parent: &Manifest,
) -> Result<tempfile::NamedTempFile, AgentError> {
    let stored = parent
        .object(ObjectRole::BackupManifest, None)
        .ok_or_else(|| {
            AgentError::Invalid(format!(
                "backup {} keeps no backup_manifest of its own (it was taken by an older pgbackup): take a full backup to build incremental ones on",
                parent.backup_id
            ))
        })?;
    let dir = entry_dir(ctx.catalog, &parent.backup_id)?;
    let keys = ctx.options.encryption.as_ref();
    let mut reader = open_object(ctx.store, &dir, stored, parent, keys).await?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.map_err(|e| {
        AgentError::Corrupt(format!(
            "the backup_manifest of backup {}: {e}",
            parent.backup_id
        ))
    })?;
    let io_err = |source| AgentError::Io {
        path: std::env::temp_dir().display().to_string(),
        source,
    };
    let manifest_file = tempfile::Builder::new()
        .prefix("pgbackup-parent-manifest-")
        .tempfile()
        .map_err(io_err)?;
    std::fs::write(manifest_file.path(), &bytes).map_err(io_err)?;
    Ok(manifest_file)
}

/// Why the policy wants a full backup rather than one more incremental on `parent`.
pub(crate) fn chain_due(
    parent: &Manifest,
    manifests: &[&Manifest],
    policy: ChainPolicy,
    now: Timestamp,
) -> Option<String> {
    let length = parent.chain.len() as u32 + 1;
    let root_id = parent.chain.first().unwrap_or(&parent.backup_id);
    if let Some(every) = policy.full_every
        && length >= every
    {
        return Some(format!(
            "the chain of full backup {root_id} holds {length} backups (a full backup every {every})"
        ));
    }
    let root = manifests.iter().find(|m| &m.backup_id == root_id)?;
    let age = now.as_second() - root.end_time.as_second();
    let days = |seconds: i64| seconds as f64 / 86_400.0;
    match policy.full_after_seconds {
        Some(limit) if age >= limit => Some(format!(
            "full backup {root_id} is {:.1} days old (a full backup after {:.1} days)",
            days(age),
            days(limit)
        )),
        _ => None,
    }
}

/// After the backup: every backup it builds on is still complete in the repository (a
/// prune or a delete may have run meanwhile). Otherwise the new backup would restore to
/// nothing.
pub(super) async fn check_still_there(
    ctx: &BackupContext<'_>,
    parent: &Parent,
) -> Result<(), AgentError> {
    for id in &parent.chain {
        let dir = entry_dir(ctx.catalog, id)?;
        let present = match read_manifest(ctx.store, &dir).await {
            Ok(_) => check_objects_present(ctx.store, &dir, manifest_of(ctx.catalog, id)?)
                .await
                .is_ok(),
            Err(_) => false,
        };
        if !present {
            return Err(AgentError::Invalid(format!(
                "backup {id}, which this incremental backup builds on, was deleted while it ran: the incremental is removed; take it again (a full one if {id} was the last of its chain)",
            )));
        }
    }
    Ok(())
}

/// Explains what `pg_basebackup --incremental` says when the server's WAL summaries do not
/// reach back to the parent (summarize_wal was off for a while, or the summaries were
/// removed after wal_summary_keep_time); whether that was the refusal.
pub(super) fn explain_refusal(err: AgentError, parent: &Parent) -> (AgentError, bool) {
    let text = err.to_string();
    if text.contains("WAL summaries are required") {
        let explained = AgentError::Invalid(format!(
            "the server has no WAL summaries back to backup {} (summarize_wal was off for a while since, or the summaries are older than wal_summary_keep_time): take a full backup; the server said: {text}",
            parent.id()
        ));
        (explained, true)
    } else {
        (err, false)
    }
}

/// The newest physical backup of the cluster on the timeline (a full or an incremental
/// one); why none can be the parent otherwise.
pub(crate) fn choose_parent<'a>(
    manifests: &[&'a Manifest],
    server: &str,
    system_identifier: &str,
    timeline: u32,
) -> Result<&'a Manifest, String> {
    let physical: Vec<&Manifest> = manifests
        .iter()
        .copied()
        .filter(|m| m.kind == BackupKind::Physical)
        .collect();
    let of_cluster: Vec<&Manifest> = physical
        .iter()
        .copied()
        .filter(|m| m.system_identifier.as_deref() == Some(system_identifier))
        .collect();
    let newest = of_cluster
        .iter()
        .max_by(|a, b| a.backup_id.cmp(&b.backup_id));
    match newest {
        Some(newest) if newest.timeline == Some(timeline) => Ok(newest),
        Some(newest) => Err(format!(
            "the newest physical backup of this cluster, {}, is of timeline {}; the server is on timeline {timeline} now (after a promotion or a restore)",
            newest.backup_id,
            newest.timeline.map_or("?".to_string(), |t| t.to_string())
        )),
        None if physical.is_empty() => Err(format!(
            "server {server} has no physical backup in the repository to build an incremental one on"
        )),
        None => Err(format!(
            "none of the physical backups of server {server} in the repository is of this cluster (system identifier {system_identifier}; they are of {})",
            distinct_clusters(&physical)
        )),
    }
}

fn distinct_clusters(manifests: &[&Manifest]) -> String {
    let mut ids: Vec<&str> = manifests
        .iter()
        .map(|m| {
            m.system_identifier
                .as_deref()
                .unwrap_or("an unknown cluster")
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.join(", ")
}

/// Every member of `chain` is complete, authentic and has all its objects.
pub(crate) async fn check_chain(
    ctx: &BackupContext<'_>,
    chain: &[String],
) -> Result<(), AgentError> {
    let keys = ctx.options.encryption.as_ref();
    for id in chain {
        let manifest = manifest_of(ctx.catalog, id)?;
        check_authentic(keys, manifest)?;
        let dir = entry_dir(ctx.catalog, id)?;
        check_objects_present(ctx.store, &dir, manifest)
            .await
            .map_err(|e| AgentError::Corrupt(format!("backup {id} of the chain: {e}")))?;
    }
    Ok(())
}

fn manifest_of<'a>(catalog: &'a Catalog, id: &str) -> Result<&'a Manifest, AgentError> {
    catalog.find(id).map(|(_, m)| m).ok_or_else(|| {
        AgentError::Corrupt(format!(
            "backup {id}, part of the chain this backup builds on, is missing from the repository"
        ))
    })
}

fn entry_dir(catalog: &Catalog, id: &str) -> Result<crate::repository::BackupDir, AgentError> {
    catalog
        .completed()
        .find(|(b, m)| b.dir.backup_id == id && m.kind == BackupKind::Physical)
        .map(|(b, _)| b.dir.clone())
        .ok_or_else(|| {
            AgentError::Corrupt(format!(
                "backup {id}, part of the chain this backup builds on, is missing from the repository"
            ))
        })
}

async fn query_one<T>(ctx: &BackupContext<'_>, sql: &'static str) -> Result<T, AgentError>
where
    T: for<'r> tokio_postgres::types::FromSql<'r>,
{
    ctx.client
        .query_one(sql, &[])
        .await
        .map(|row| row.get(0))
        .map_err(|source| {
            AgentError::Invalid(format!(
                "incremental backups need to read the server's settings ({sql}): {source}"
            ))
        })
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
