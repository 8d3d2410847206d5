//! `pgbackup operator`: the probe and metrics endpoint, leader election, and the
//! controllers of the kinds in every watched namespace, until SIGTERM (graceful: running
//! reconciles finish, the Lease is released) or until leadership is lost (exit, so the pod
//! restarts as a follower and two leaders never reconcile at once). The options are in
//! `args`, what each controller watches in `watches`, the Lease in `leadership`.

mod args;
mod leadership;
mod watches;

pub use args::OperatorArgs;
use leadership::{acquire, keep_leading, unique_identity};
use watches::{run_schedules, run_volume_snapshot_backups, run_with_jobs};

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::{
    controllers::{Context, Metrics, point_in_time_restore, postgres_backup},
    k8s::leader::LeaderElector,
};

/// The operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Kubernetes API could not be reached or configured.
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    /// The probe address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the Lease: this one stops reconciling at once.
    #[error("lost the leader Lease {0}; exiting so that only one replica reconciles")]
    LostLeadership(String),
}

/// Runs the operator.
pub async fn run(args: &OperatorArgs) -> Result<(), RuntimeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::new();
    let listener =
        crate::http::bind(&args.listen)
            .await
            .map_err(|source| RuntimeError::Listen {
                address: args.listen.clone(),
                source,
            })?;
    tokio::spawn(crate::http::serve(listener, metrics.clone()));
    let client = Client::try_default().await.map_err(RuntimeError::Client)?;
    client
        .apiserver_version()
        .await
        .map_err(RuntimeError::Client)?;
    metrics.set_ready(None);

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: running reconciles finish first");
        signal.cancel();
    });

    let identity = args.identity.clone().unwrap_or_else(unique_identity);
    let elector = (!args.no_leader_election).then(|| {
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds),
        )
    });
    let lost = CancellationToken::new();
    // Renewal goes on until the controllers have stopped, also while they drain on SIGTERM.
    let drained = CancellationToken::new();
    if let Some(elector) = &elector {
        let Some(acquired) = acquire(elector, &shutdown).await else {
            return Ok(());
        };
        tracing::info!(identity = %identity, "leading: reconciling");
        tokio::spawn(keep_leading(
            elector.clone(),
            acquired,
            lost.clone(),
            drained.clone(),
        ));
    }
    metrics.set_leader(true);

    let stop = shutdown.clone();
    let ctx = Arc::new(Context::new(
        client.clone(),
        args.settings(),
        metrics.clone(),
    ));
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().map(|n| Some(n.clone())).collect()
    };
    tracing::info!(namespaces = ?args.namespaces, "watching {}", if args.namespaces.is_empty() { "all namespaces".to_string() } else { args.namespaces.join(", ") });
    let mut controllers = Vec::new();
    for scope in scopes {
        controllers.push(tokio::spawn(run_with_jobs(
            client.clone(),
            scope.clone(),
            ctx.clone(),
            stop.clone(),
            postgres_backup::reconcile,
        )));
        controllers.push(tokio::spawn(run_with_jobs(
            client.clone(),
            scope.clone(),
            ctx.clone(),
            stop.clone(),
            point_in_time_restore::reconcile,
        )));
        controllers.push(tokio::spawn(run_volume_snapshot_backups(
            client.clone(),
            scope.clone(),
            ctx.clone(),
            stop.clone(),
        )));
        controllers.push(tokio::spawn(run_schedules(
            client.clone(),
            scope,
            ctx.clone(),
            stop.clone(),
        )));
    }
    tokio::select! {
        _ = join_all(controllers) => {}
        // Another replica may be reconciling already: stop at once, not after the running
        // reconciles (the process exits and takes its tasks with it).
        () = lost.cancelled() => {
            metrics.set_leader(false);
            return Err(RuntimeError::LostLeadership(args.lease_name.clone()));
        }
    }
    drained.cancel();
    metrics.set_leader(false);
    if let Some(elector) = &elector
        && let Err(err) = elector.release().await
    {
        tracing::warn!(error = %err, "cannot release the leader Lease; it expires on its own");
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
