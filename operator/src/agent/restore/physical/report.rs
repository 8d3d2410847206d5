//! After the lay-down: recovery to the target, and the report of where it got to (for
//! people, or as JSON for the operator); and what `--dry-run` prints.

use std::path::Path;

use super::Run;
use crate::{
    agent::{
        AgentError,
        restore::{Plan, RecoveryTarget, recover, settings, snapshot_copy},
    },
    repository::{Manifest, WalFile},
};

impl Run<'_> {
    /// Recovers the prepared data directory to the target and says where it stopped.
    pub(super) async fn recover_and_report(
        &self,
        settings: &settings::Settings,
        backup: &Manifest,
        copy: Option<&snapshot_copy::CopyBase>,
    ) -> Result<String, AgentError> {
        let (args, pgdata, target) = (self.args, self.pgdata, self.target);
        let time_target = matches!(target, RecoveryTarget::Time(_));
        let reached = match recover::run(pgdata, &self.pg_bin, settings, time_target).await {
            Ok(reached) => reached,
            Err(err) => {
                return Err(match copy {
                    Some(copy) => snapshot_copy::explain(err, copy),
                    None => err,
                });
            }
        };
        if let Some(copy) = copy {
            let before = reached
                .stop
                .as_deref()
                .is_some_and(|s| s.starts_with("recovery stopping before"));
            snapshot_copy::check_consistent(reached.lsn.as_deref(), before, copy)?;
        }
        if args.archive_off {
            let auto = pgdata.join("postgresql.auto.conf");
            let before = std::fs::read_to_string(&auto).unwrap_or_default();
            std::fs::write(
            &auto,
            format!("{before}\n# pgbackup: a copy beside the original archives nothing\narchive_mode = 'off'\n"),
        )
        .map_err(|source| AgentError::Io {
            path: auto.display().to_string(),
            source,
        })?;
        } else if let Some(new_timeline) = reached.timeline {
            mark_history_for_archiving(pgdata, new_timeline, self.held.segment_size)?;
        }
        if args.json {
            let report = serde_json::json!({
                "backupId": backup.backup_id,
                "chain": backup.chain,
                "target": target.to_string(),
                "reachedLsn": reached.lsn,
                "timeline": reached.timeline,
                "lastTransaction": reached.last_transaction,
                "stop": reached.stop,
                "replayedToEnd": reached.replayed_to_end,
                "walFilesFetched": reached.files_restored,
            });
            return Ok(report.to_string());
        }
        Ok(described(backup, target, &reached, pgdata))
    }
}

/// The report of a recovery, for people.
fn described(
    backup: &Manifest,
    target: &RecoveryTarget,
    reached: &recover::Reached,
    pgdata: &Path,
) -> String {
    let incremental = backup.parent().map_or(String::new(), |parent| {
        format!(" (incremental, on top of {parent})")
    });
    format!(
        "recovered backup {}{incremental} to {target}: reached LSN {}, timeline {}, last replayed transaction committed at {}{}; {} WAL files fetched; {} is ready to start",
        backup.backup_id,
        reached.lsn.as_deref().unwrap_or("?"),
        reached
            .timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        reached
            .last_transaction
            .as_deref()
            .unwrap_or("(none replayed)"),
        match (&reached.stop, reached.replayed_to_end) {
            (_, true) => " (no later commit in the archive: replayed to its end)".to_string(),
            (Some(stop), false) => format!(" ({stop})"),
            (None, false) => String::new(),
        },
        reached.files_restored,
        pgdata.display()
    )
}

/// What `--dry-run` prints: the plan, for people and for the operator's restore Job.
pub(super) fn dry_run_report(
    plan: &Plan<'_>,
    target: &RecoveryTarget,
) -> Result<String, AgentError> {
    let lsn = |l: u64| crate::repository::format_lsn(l);
    let report = serde_json::json!({
        "backupId": plan.backup.backup_id,
        "target": target.to_string(),
        "timeline": plan.window.timeline,
        "walThrough": plan.wal_through,
        "window": {
            "fromTime": plan.window.from.map(|(t, _)| t),
            "fromLsn": plan.window.from.map(|(_, l)| lsn(l)),
            "toTime": plan.window.to.map(|(t, _)| t),
            "toLsn": plan.window.to.map(|(_, l)| lsn(l)),
        },
        "serverVersion": plan.backup.server_version,
        "systemIdentifier": plan.backup.system_identifier,
        "warnings": plan.warnings,
    });
    serde_json::to_string_pretty(&report).map_err(|e| AgentError::Invalid(e.to_string()))
}

/// Marks the new timeline's history file as waiting to be archived: the server archived
/// nothing during recovery, and later restores along the new timeline need the file. A
/// server archiving with `archive_command` stores it on its next start; the WAL archiver
/// stores it when it starts streaming from the server. It is not stored from here, so that
/// restore drills which are never archived do not claim timeline ids.
fn mark_history_for_archiving(
    pgdata: &Path,
    timeline: u32,
    segment_size: u64,
) -> Result<(), AgentError> {
    let name = WalFile::history(timeline).name(segment_size);
    let ready = pgdata
        .join("pg_wal")
        .join("archive_status")
        .join(format!("{name}.ready"));
    std::fs::write(&ready, b"").map_err(|source| AgentError::Io {
        path: ready.display().to_string(),
        source,
    })
}
