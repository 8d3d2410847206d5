//! Retention of a schedule's backup objects (pure): which ones the policy drops.

use jiff::Timestamp;

use super::backups::{BackupKind, ScheduledBackup};
use crate::{
    api::{BackupPhase, BackupSchedule},
    controllers::references::Problem,
    repository::{RetentionPolicy, RetentionPolicyError, parse_duration, select_kept},
};

/// Failed backup objects of a schedule kept for inspection; older ones are deleted.
pub const FAILED_KEPT: usize = 3;

/// The retention policy of the spec.
pub fn retention_policy(schedule: &BackupSchedule) -> Result<Option<RetentionPolicy>, Problem> {
    match &schedule.spec.retention {
        Some(retention) => policy_of(retention, "retention"),
        None => Ok(None),
    }
}

/// The policy of a `retention` block at `field`; `None` when it keeps everything.
pub fn policy_of(
    retention: &crate::api::Retention,
    field: &str,
) -> Result<Option<RetentionPolicy>, Problem> {
    let count = |n: Option<i32>| n.map(|n| u32::try_from(n.max(0)).unwrap_or(0));
    let policy = RetentionPolicy {
        keep_last: count(retention.keep_last),
        keep_daily: count(retention.keep_daily),
        keep_weekly: count(retention.keep_weekly),
        keep_monthly: count(retention.keep_monthly),
        max_age_seconds: retention
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| Problem::new("InvalidSpec", format!("{field}.maxAge: {e}")))?,
    };
    match policy.validate() {
        Ok(()) => Ok(Some(policy)),
        // An empty retention block keeps everything, as no block does.
        Err(RetentionPolicyError::Empty) => Ok(None),
        Err(_) => Err(Problem::new(
            "InvalidSpec",
            format!(
                "{field} keeps no backup (maxAge is 0 and no count is set): set a count or a longer maxAge, or remove {field} to keep every backup"
            ),
        )),
    }
}

/// The objects some existing object's incremental backup builds on, directly or along its
/// chain (followed through the objects' backup ids).
fn built_on(backups: &[ScheduledBackup]) -> std::collections::BTreeSet<String> {
    let by_id: std::collections::BTreeMap<&str, &ScheduledBackup> = backups
        .iter()
        .filter_map(|b| Some((b.recorded.as_ref()?.0.as_str(), b)))
        .collect();
    let mut needed = std::collections::BTreeSet::new();
    for backup in backups {
        let mut parent = backup.parent.as_deref();
        while let Some(object) = parent.and_then(|id| by_id.get(id)) {
            if !needed.insert(object.name.clone()) {
                break;
            }
            parent = object.parent.as_deref();
        }
    }
    needed
}

/// Which backup objects retention drops: completed ones the policy no longer keeps (per
/// method), and failed ones beyond the newest few. A backup another object's incremental
/// backup builds on is never dropped while that object exists: the incremental goes first
/// (its own deletion, when it expires too), the backup it built on in a later pass. So a
/// kept incremental keeps its whole chain, and no deletion leaves one without its parent.
pub fn expired(
    schedule: &BackupSchedule,
    backups: &[ScheduledBackup],
    now: Timestamp,
) -> Vec<String> {
    let live: Vec<&ScheduledBackup> = backups.iter().filter(|b| !b.deleting).collect();
    let mut doomed = Vec::new();
    let needed = built_on(backups);
    if let Ok(Some(policy)) = retention_policy(schedule) {
        for kind in BackupKind::ALL {
            let times: Vec<(String, Timestamp)> = live
                .iter()
                .filter(|b| b.kind == kind && b.phase == Some(BackupPhase::Completed))
                .filter_map(|b| Some((b.name.clone(), b.completed_at?)))
                .collect();
            let mut kept = select_kept(&times, &policy, now);
            // Whatever the rules say (`maxAge` on a schedule that stopped working, say), the
            // newest completed backup stays: retention never leaves nothing to restore.
            if let Some((newest, _)) = times.iter().max_by_key(|(_, t)| *t) {
                kept.insert(newest.clone());
            }
            doomed.extend(
                times
                    .into_iter()
                    .filter(|(name, _)| !kept.contains(name) && !needed.contains(name))
                    .map(|(name, _)| name),
            );
        }
    }
    let mut failed: Vec<(Option<Timestamp>, String)> = live
        .iter()
        .filter(|b| b.phase == Some(BackupPhase::Failed))
        .map(|b| (b.created, b.name.clone()))
        .collect();
    failed.sort();
    let surplus = failed.len().saturating_sub(FAILED_KEPT);
    doomed.extend(failed.into_iter().take(surplus).map(|(_, name)| name));
    doomed.sort();
    doomed
}
