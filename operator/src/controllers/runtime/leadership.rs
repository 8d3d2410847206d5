//! Leader election: waiting for the Lease, renewing it, and a name no two replicas share.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::k8s::leader::LeaderElector;

/// Waits until this replica holds the Lease: when the winning request was sent; `None`
/// when shut down first.
pub(super) async fn acquire(
    elector: &LeaderElector,
    shutdown: &CancellationToken,
) -> Option<tokio::time::Instant> {
    let mut waiting_logged = false;
    loop {
        let sent = tokio::time::Instant::now();
        match lead_within(elector, elector.renew_interval()).await {
            Ok(true) => return Some(sent),
            Ok(false) if !waiting_logged => {
                tracing::info!("another replica leads; standing by");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the leader Lease"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(elector.renew_interval()) => {}
        }
    }
}

/// Renews the Lease until `drained`; cancels `lost` when another replica took it, or when
/// no renewal has succeeded for two thirds of a Lease duration — counted from when the last
/// successful request was sent, and checked on a timer of its own, so a hanging request
/// cannot stretch it past the moment a follower may take over.
pub(super) async fn keep_leading(
    elector: LeaderElector,
    acquired: tokio::time::Instant,
    lost: CancellationToken,
    drained: CancellationToken,
) {
    let mut last_renewed = acquired;
    loop {
        let deadline = last_renewed + elector.give_up_after();
        tokio::select! {
            () = drained.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                tracing::error!("could not renew the leader Lease in time");
                lost.cancel();
                return;
            }
            () = tokio::time::sleep(elector.renew_interval()) => {}
        }
        let sent = tokio::time::Instant::now();
        let allowed = deadline
            .saturating_duration_since(sent)
            .min(elector.renew_interval());
        match lead_within(&elector, allowed).await {
            Ok(true) => last_renewed = sent,
            Ok(false) => {
                tracing::error!("another replica took the leader Lease");
                lost.cancel();
                return;
            }
            Err(err) => tracing::warn!(error = %err, "cannot renew the leader Lease"),
        }
    }
}

/// [`LeaderElector::try_lead`] with a deadline: a request that hangs counts as failed.
async fn lead_within(elector: &LeaderElector, deadline: Duration) -> Result<bool, String> {
    match tokio::time::timeout(deadline, elector.try_lead()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {deadline:?}")),
    }
}

/// The host name and a suffix from the clock and the process id.
pub(super) fn unique_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgbackup-operator".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}-{:x}{:x}", std::process::id(), nanos)
}
