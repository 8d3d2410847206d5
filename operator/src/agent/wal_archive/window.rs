//! The recoverability window read back from the repository while the archiver runs: what
//! a restore can reach, proven by the stored backups and the continuity of the stored WAL
//! (as `pgbackup list` shows it), not by the archiver's own account. Published on
//! `/status` and `/metrics` for the operator and for alerts.

use std::time::Duration;

use super::metrics::{ArchiverMetrics, ProvenWindow};
use crate::{
    agent::{AgentError, list::windows},
    repository::{Catalog, Keys, Store, WalArchive},
};

/// Reads the window every `interval`, for good; a failed read keeps the last one.
pub(super) async fn watch(
    store: &Store,
    server: &str,
    keys: Option<Keys>,
    metrics: &ArchiverMetrics,
    interval: Duration,
) {
    loop {
        match read(store, server, keys.clone()).await {
            Ok(Some(window)) => {
                tracing::debug!(?window, "recoverability window read from the repository");
                metrics.set_window(window);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(
                "cannot read the recoverability window from the repository: {}",
                crate::agent::error_chain(&err)
            ),
        }
        tokio::time::sleep(interval).await;
    }
}

/// The window of the newest timeline; `None` while the archive is empty.
async fn read(
    store: &Store,
    server: &str,
    keys: Option<Keys>,
) -> Result<Option<ProvenWindow>, AgentError> {
    let archive = WalArchive::new(store, server).with_keys(keys);
    let Some(identity) = archive.identity().await? else {
        return Ok(None);
    };
    let catalog = Catalog::load(store, server).await?;
    let newest = windows(&archive, &identity, &catalog)
        .await?
        .into_iter()
        .max_by_key(|w| w.timeline);
    Ok(newest.map(|w| ProvenWindow {
        from: w.from.map(|(t, _)| t),
        until: w.to.map(|(t, _)| t),
        timeline: w.timeline,
        checked_at: jiff::Timestamp::now(),
    }))
}
