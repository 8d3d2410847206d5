//! A volume snapshot's copy of a server as the base of a restore (`--snapshot-data`): a
//! claim made from the VolumeSnapshot holds the data directory. An online snapshot's copy
//! gets the backup label recorded for it; a copy without one — a checkpoint snapshot
//! (crash-consistent) or an offline one (shut down cleanly) — recovers from the checkpoint
//! in its own `pg_control`, and is consistent only once the WAL it holds is replayed: no
//! target may stop recovery before the last record of that WAL, which `pg_waldump` finds.
//! What the copy says of itself is read in [`control`].

mod control;

pub(crate) use control::{Control, read_control};

use std::path::Path;

use control::last_local_record;

use crate::{
    agent::{AgentError, process::PgBin},
    postgres::{lsn_to_wal_file, parse_lsn},
    repository::{BackupKind, FORMAT_VERSION, Manifest, format_lsn},
};

/// The id a copy that no repository records is restored under.
pub(super) const UNRECORDED_ID: &str = "snapshot-copy";

/// A base made from a copy without a backup label.
#[derive(Debug, Clone)]
pub(super) struct CopyBase {
    /// The base as the planner sees it: it ends at (and is consistent from) `last_record`.
    pub manifest: Manifest,
    /// Where the last WAL record the copy holds starts: recovery must replay it.
    pub last_record: u64,
}

/// The base of a copy without a backup label: the recorded snapshot's manifest when a
/// repository records it (it must be of the copy's cluster), else one made from the
/// copy's control file under [`UNRECORDED_ID`]. It ends where the copy's WAL does.
pub(super) fn base(
    control: &Control,
    last_record: u64,
    recorded: Option<&Manifest>,
    server: &str,
    server_version: &str,
) -> Result<CopyBase, AgentError> {
    if let Some(recorded) = recorded
        && let Some(theirs) = &recorded.system_identifier
        && *theirs != control.system_identifier
    {
        return Err(AgentError::OtherCluster(format!(
            "the data directory is a copy of cluster {}, but snapshot backup {} records cluster {theirs}: the claim was not made from its snapshot",
            control.system_identifier, recorded.backup_id
        )));
    }
    let end = format_lsn(last_record);
    let wal = |lsn: u64| lsn_to_wal_file(control.timeline, lsn, control.segment_size);
    let manifest = match recorded {
        Some(recorded) => Manifest {
            end_lsn: Some(end),
            end_wal: Some(wal(last_record)),
            timeline: Some(control.timeline),
            ..recorded.clone()
        },
        None => Manifest {
            format_version: FORMAT_VERSION,
            kind: BackupKind::Snapshot,
            backup_id: UNRECORDED_ID.into(),
            server: server.to_string(),
            server_version: server_version.to_string(),
            server_version_num: server_version.parse::<u32>().unwrap_or(0) * 10000,
            system_identifier: Some(control.system_identifier.clone()),
            timeline: Some(control.timeline),
            begin_lsn: Some(format_lsn(control.redo)),
            end_lsn: Some(end),
            begin_wal: Some(wal(control.redo)),
            end_wal: Some(wal(last_record)),
            begin_time: control.checkpoint_time,
            end_time: control.checkpoint_time,
            compression: crate::api::CompressionAlgorithm::None,
            compression_level: 0,
            encrypted: false,
            chain: Vec::new(),
            row_counts: Vec::new(),
            tool_version: format!("pgbackup {}", env!("CARGO_PKG_VERSION")),
            databases: Vec::new(),
            objects: Vec::new(),
            snapshot: None,
            mac: None,
        },
    };
    Ok(CopyBase {
        manifest,
        last_record,
    })
}

/// What a `--snapshot-data` restore works from.
pub(super) enum Base {
    /// An online snapshot's copy: its recorded backup label makes it a base like any other.
    Labelled,
    /// A copy without a label, read.
    Copy(Box<CopyBase>),
    /// A copy without a label that no repository records, planned without the copy at hand
    /// (`--dry-run` runs before a claim is made from the snapshot): nothing of it is known.
    NotAtHand,
}

/// The base of a `--snapshot-data` restore: `--backup` names the snapshot backup a
/// repository records (its label, or its cluster and time); without it, the copy is one no
/// repository records.
pub(super) async fn copy_base(
    args: &super::RestoreArgs,
    manifests: &[&Manifest],
    pgdata: &Path,
    pg_bin: &PgBin,
    keys: Option<&crate::repository::Keys>,
) -> Result<Base, AgentError> {
    let server = &args.repository.server;
    let recorded = match args.backup.as_deref() {
        Some(id) => Some(
            manifests
                .iter()
                .find(|m| m.kind == BackupKind::Snapshot && m.backup_id == id)
                .copied()
                .ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "no snapshot backup {id} is recorded for server {server}"
                    ))
                })?,
        ),
        None => None,
    };
    if let Some(recorded) = recorded {
        if recorded
            .snapshot
            .as_ref()
            .is_some_and(|s| s.backup_label.is_some())
        {
            return Ok(Base::Labelled);
        }
        super::check_authentic(keys, recorded)?;
    }
    if args.dry_run {
        return planned_base(recorded);
    }
    let what = match recorded {
        Some(m) => format!("snapshot backup {}", m.backup_id),
        None => "a volume snapshot".to_string(),
    };
    check_is_copy(pgdata, &what)?;
    let control = read_control(pg_bin, pgdata).await?;
    let last = last_local_record(pg_bin, pgdata, &control).await?;
    let version_file = pgdata.join("PG_VERSION");
    let version = std::fs::read_to_string(&version_file).map_err(|source| AgentError::Io {
        path: version_file.display().to_string(),
        source,
    })?;
    tracing::info!(
        "{} holds a copy of cluster {} ({}), without a backup label: recovering from its checkpoint at {} and replaying its own WAL to {} at least",
        pgdata.display(),
        control.system_identifier,
        control.state,
        format_lsn(control.redo),
        format_lsn(last)
    );
    Ok(Base::Copy(Box::new(base(
        &control,
        last,
        recorded,
        server,
        version.trim(),
    )?)))
}

/// The base `--dry-run` plans with, before the copy is at hand: planned from the record,
/// consistent no earlier than its checkpoint, and the restore checks the rest on the copy.
fn planned_base(recorded: Option<&Manifest>) -> Result<Base, AgentError> {
    Ok(match recorded {
        Some(recorded) => {
            let begin = recorded.begin_lsn.as_deref().and_then(parse_lsn);
            let begin = begin.ok_or_else(|| {
                AgentError::Corrupt(format!(
                    "snapshot backup {} records no WAL location",
                    recorded.backup_id
                ))
            })?;
            Base::Copy(Box::new(CopyBase {
                manifest: Manifest {
                    end_lsn: recorded.begin_lsn.clone(),
                    ..recorded.clone()
                },
                last_record: begin,
            }))
        }
        None => Base::NotAtHand,
    })
}

/// What `--dry-run` says of a copy no repository records: only whether the target can be
/// reached at all; the copy itself is read when the restore runs on it.
pub(super) fn unseen_copy_report(
    target: &super::RecoveryTarget,
    archive: bool,
) -> Result<String, AgentError> {
    use super::RecoveryTarget;
    if !archive && !matches!(target, RecoveryTarget::Immediate | RecoveryTarget::Latest) {
        return Err(AgentError::Invalid(format!(
            "the repository holds no WAL archive of this server: a snapshot copy restores only to the end of its own WAL (target immediate), not to {target}"
        )));
    }
    let report = serde_json::json!({
        "backupId": UNRECORDED_ID,
        "target": target.to_string(),
        "serverVersion": null,
        "systemIdentifier": null,
        "warnings": ["the snapshot copy is read, and the target checked against its WAL, when the restore runs on it"],
    });
    serde_json::to_string_pretty(&report).map_err(|e| AgentError::Invalid(e.to_string()))
}

/// Readies the copy for recovery: the files of the server that ran on it go, and an online
/// snapshot's backup label (and tablespace map) is written.
pub(super) fn prepare(pgdata: &Path, backup: &Manifest) -> Result<(), AgentError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| AgentError::Io { path, source }
    };
    for stale in ["postmaster.pid", "postmaster.opts", "backup_label.old"] {
        let path = pgdata.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    let details = backup.snapshot.as_ref();
    if let Some(label) = details.and_then(|d| d.backup_label.as_deref()) {
        let label_path = pgdata.join("backup_label");
        std::fs::write(&label_path, label).map_err(io(&label_path))?;
    }
    if let Some(map) = details.and_then(|d| d.tablespace_map.as_deref()) {
        let path = pgdata.join("tablespace_map");
        std::fs::write(&path, map).map_err(io(&path))?;
    }
    Ok(())
}

/// Refuses a directory that holds no data directory: the claim was not made from the
/// snapshot, or `--pgdata` misses where the data directory lies inside it.
pub(super) fn check_is_copy(pgdata: &Path, what: &str) -> Result<(), AgentError> {
    let wal = pgdata.join("pg_wal");
    if let Ok(target) = std::fs::read_link(&wal)
        && !wal.exists()
    {
        return Err(AgentError::Invalid(format!(
            "{} links to {}, which is not there: the WAL lives on a volume of its own that the snapshot did not take (add it to includeVolumes)",
            wal.display(),
            target.display()
        )));
    }
    if pgdata.join("PG_VERSION").exists() {
        return Ok(());
    }
    Err(AgentError::Invalid(format!(
        "{} holds no PostgreSQL data directory: it must be the copy of {what} (a claim made from its VolumeSnapshot, with the data directory's path inside it)",
        pgdata.display()
    )))
}

/// PostgreSQL's refusal of a target before the copy is consistent, said in a restore's
/// words; other failures as they are.
pub(super) fn explain(err: AgentError, base: &CopyBase) -> AgentError {
    let text = err.to_string();
    if !text.contains("before consistent recovery point") {
        return err;
    }
    AgentError::Invalid(format!(
        "{text}: the target lies before the end of the WAL the snapshot copy holds ({}); a copy taken without backup mode is consistent only from there: choose a target after the snapshot was taken",
        format_lsn(base.last_record)
    ))
}

/// Refuses a recovery that stopped before the copy was consistent: its data files may hold
/// changes of WAL that was not replayed.
/// `reached` is where PostgreSQL says redo was done: the last record applied, or with a
/// stop `before` a record, that record (not applied); `None` when there was nothing to
/// redo (a copy of a server shut down cleanly, taken no further). PostgreSQL itself
/// refuses to stop before a crashed copy's WAL is replayed; this is the second look.
pub(super) fn check_consistent(
    reached: Option<&str>,
    before: bool,
    base: &CopyBase,
) -> Result<(), AgentError> {
    let Some(text) = reached else {
        return Ok(());
    };
    let stopped = parse_lsn(text);
    if stopped.is_some_and(|at| at > base.last_record || (at == base.last_record && !before)) {
        return Ok(());
    }
    Err(AgentError::Invalid(format!(
        "recovery stopped at {text}, before the end of the WAL the snapshot copy holds ({}): a copy taken without backup mode is consistent only from there; choose a target after the snapshot was taken",
        format_lsn(base.last_record)
    )))
}

#[cfg(test)]
mod tests;
