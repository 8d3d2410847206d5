//! The copy's own retention: which backups its keep rules keep (judged with the source's
//! backups, so that a backup it would not keep is not copied), and pruning the copy by them.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    agent::{AgentError, prune},
    repository::{BackupKind, Catalog, Keys, RetentionPolicy, Store, keep_chains, select_kept},
};

/// The backups the copy keeps by `policy`, judged among the complete backups of the
/// source and of the copy together (each kind on its own, with the backups kept incremental
/// ones build on): what the rules would keep if the copy held them all. A backup the source
/// has pruned stays in the copy while the rules keep it.
pub(super) fn kept_in_copy(
    source: &Catalog,
    copy: &Catalog,
    policy: &RetentionPolicy,
    now: jiff::Timestamp,
) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    let mut chains = BTreeMap::new();
    for kind in [
        BackupKind::Logical,
        BackupKind::Physical,
        BackupKind::Snapshot,
    ] {
        let mut times = BTreeMap::new();
        for (entry, manifest) in source.completed().chain(copy.completed()) {
            if entry.dir.kind != kind {
                continue;
            }
            times.insert(entry.dir.backup_id.clone(), manifest.end_time);
            if !manifest.chain.is_empty() {
                chains.insert(entry.dir.backup_id.clone(), manifest.chain.clone());
            }
        }
        let times: Vec<_> = times.into_iter().collect();
        kept.extend(select_kept(&times, policy, now));
    }
    keep_chains(&mut kept, &chains);
    kept
}

/// Applies the keep rules to the copy alone, now that it holds every backup they keep:
/// drops the rest, and the WAL only they needed; the lines prune reports, for the copy.
pub(super) async fn prune_copy(
    destination: &Store,
    server: &str,
    keys: Option<Keys>,
    policy: &RetentionPolicy,
    dry_run: bool,
) -> Result<Vec<String>, AgentError> {
    let scope = prune::Scope {
        server,
        keys,
        backup_ids: &[],
        delete: !dry_run,
    };
    let pruned = prune::prune(destination, &scope, policy).await?;
    tracing::info!("the copy's retention applied");
    Ok(pruned
        .lines()
        .filter(|l| !l.starts_with("keep ") && !l.starts_with("dry run:"))
        .map(|l| format!("copy: {l}"))
        .collect())
}
