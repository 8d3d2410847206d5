//! `pgbackup operator`: the probe and metrics endpoint, leader election, and the
//! controllers of the kinds in every watched namespace, until SIGTERM (graceful: running
//! reconciles finish, the Lease is released) or until leadership is lost (exit, so the pod
//! restarts as a follower and two leaders never reconcile at once).

use std::{sync::Arc, time::Duration};

use clap::Args;
use futures::{StreamExt, future::join_all};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::CronJob, coordination::v1::Lease};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef},
        watcher::{self, watcher},
    },
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, Metrics, Settings, backup_schedule, error_policy, point_in_time_restore,
    postgres_backup, volume_snapshot_backup,
};
use crate::{
    api::{BackupSchedule, PostgresBackup, VolumeSnapshotBackup},
    k8s::{
        ANNOTATION_SCHEDULE, LABEL_MANAGED_BY, LABEL_SCHEDULE, agent_pod::AgentSettings,
        leader::LeaderElector,
    },
};

/// Options of `pgbackup operator`.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Namespace to watch (repeat, or separate with commas). Default: every namespace.
    #[arg(
        long = "namespace",
        env = "PGBACKUP_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Image of the agent pods (backups, WAL archiver, deletes); `{major}` becomes the
    /// PostgreSQL major version of the database.
    #[arg(
        long,
        env = "PGBACKUP_AGENT_IMAGE",
        default_value = crate::k8s::agent_pod::DEFAULT_AGENT_IMAGE
    )]
    pub agent_image: String,

    /// imagePullPolicy of agent and trigger containers. Default: Kubernetes' own.
    #[arg(long, env = "PGBACKUP_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,

    /// Secret for pulling agent and trigger images (repeat, or separate with commas). It
    /// must exist in each namespace where backups run.
    #[arg(long, env = "PGBACKUP_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub image_pull_secret: Vec<String>,

    /// PostgreSQL major version assumed when a StatefulSet's image tag does not say.
    #[arg(long, env = "PGBACKUP_DEFAULT_POSTGRES_MAJOR", default_value_t = 16)]
    pub default_postgres_major: u32,

    /// User (and group) id of agent pods; `postgres` is 999 in the official images.
    #[arg(long, env = "PGBACKUP_AGENT_USER", default_value_t = 999)]
    pub agent_user: i64,

    /// Image of the schedules' trigger pods: the operator's own image.
    #[arg(long, env = "PGBACKUP_TRIGGER_IMAGE", default_value = concat!("pgbackup/operator:", env!("CARGO_PKG_VERSION")))]
    pub trigger_image: String,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "PGBACKUP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// This replica's name in the leader Lease. Default: the pod name (`POD_NAME`), else
    /// the host name with a random suffix — never a name two replicas could share.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pgbackup-system")]
    pub lease_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, default_value = "pgbackup-operator-leader")]
    pub lease_name: String,

    /// Seconds a leader's Lease lasts without renewal before another replica takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=300))]
    pub lease_seconds: u64,

    /// `HOST=ADDRESS:PORT`: connect to ADDRESS:PORT where a database's host name is HOST
    /// (repeat for several). For an operator run outside the cluster, where the databases'
    /// service names (`<pod>.<service>.<namespace>.svc`) do not resolve: with `kubectl
    /// port-forward`, say.
    #[arg(long, value_name = "HOST=ADDRESS:PORT", value_parser = parse_address)]
    pub database_address: Vec<String>,

    /// Seconds a Job the operator started may go without a pod (a ResourceQuota, Pod
    /// Security admission or a webhook refusing it), or its pod without a node, before the
    /// Job is stopped and its backup, restore or snapshot fails with the cause.
    #[arg(long, env = "PGBACKUP_POD_START_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(5..))]
    pub pod_start_timeout: u64,

    /// Reconcile without a Lease (one replica only).
    #[arg(long)]
    pub no_leader_election: bool,
}

impl OperatorArgs {
    fn settings(&self) -> Settings {
        Settings {
            agent: AgentSettings {
                image: self.agent_image.clone(),
                image_pull_policy: self.image_pull_policy.clone(),
                image_pull_secrets: self.image_pull_secret.clone(),
                default_major: self.default_postgres_major,
                run_as_user: self.agent_user,
            },
            trigger_image: self.trigger_image.clone(),
            database_addresses: self
                .database_address
                .iter()
                .filter_map(|pair| pair.split_once('='))
                .map(|(host, address)| (host.to_string(), address.to_string()))
                .collect(),
            pod_start_timeout: Duration::from_secs(self.pod_start_timeout),
        }
    }
}

fn parse_address(text: &str) -> Result<String, String> {
    let (host, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give HOST=ADDRESS:PORT"))?;
    let port = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    if host.is_empty() || port.is_none() {
        return Err(format!("{text:?}: give HOST=ADDRESS:PORT"));
    }
    Ok(text.to_string())
}

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

fn api<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The controller of a kind whose work runs in the agent Jobs it owns: a Job changing
/// wakes its owner.
async fn run_with_jobs<K, R, F>(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
    reconcile: R,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, super::Error>>
        + Send
        + 'static,
{
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=pgbackup"));
    Controller::new(api::<K>(&client, &scope), watcher::Config::default())
        .owns(
            api::<k8s_openapi::api::batch::v1::Job>(&client, &scope),
            ours,
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, |o, e, c| error_policy(&*o, e, &c), ctx)
        .for_each(|_| async {})
        .await;
}

/// VolumeSnapshots are not watched (their API may not be installed): a running backup
/// looks at them every few seconds.
async fn run_volume_snapshot_backups(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    Controller::new(
        api::<VolumeSnapshotBackup>(&client, &scope),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(
        volume_snapshot_backup::reconcile,
        |o, e, c| error_policy(&*o, e, &c),
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

async fn run_schedules(
    client: Client,
    scope: Option<String>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=pgbackup"));
    // A schedule's own status writes (the archiver's progress, the window) must not make
    // it reconcile again: only what a user or a controller changed does.
    let (reader, writer) = reflector::store();
    let schedules = watcher(
        api::<BackupSchedule>(&client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(beyond_status, Default::default());
    Controller::for_stream(schedules, reader)
        .owns(api::<CronJob>(&client, &scope), ours.clone())
        .owns(api::<Deployment>(&client, &scope), ours)
        // A backup of the schedule changing phase changes the schedule's status.
        .watches(
            api::<PostgresBackup>(&client, &scope),
            watcher::Config::default().labels(LABEL_SCHEDULE),
            |backup: PostgresBackup| schedule_of(&backup),
        )
        .watches(
            api::<VolumeSnapshotBackup>(&client, &scope),
            watcher::Config::default().labels(LABEL_SCHEDULE),
            |backup: VolumeSnapshotBackup| schedule_of(&backup),
        )
        // A Job of one of its CronJobs ending (a restore test, a copy) is its status too,
        // also when someone ran it by hand (`kubectl create job --from=cronjob/…`).
        .watches(
            api::<k8s_openapi::api::batch::v1::Job>(&client, &scope),
            watcher::Config::default()
                .labels(&format!("{LABEL_MANAGED_BY}=pgbackup,{LABEL_SCHEDULE}")),
            |job: k8s_openapi::api::batch::v1::Job| schedule_of(&job),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            backup_schedule::reconcile,
            |o, e, c| error_policy(&*o, e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// A hash of what an object holds beyond its status and its version: spec (through the
/// generation), deletion, labels, annotations and finalizers.
fn beyond_status<K: kube::Resource>(object: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    Some(hasher.finish())
}

/// The schedule that made a backup object.
fn schedule_of<K: ResourceExt>(backup: &K) -> Option<ObjectRef<BackupSchedule>> {
    let name = backup
        .annotations()
        .get(ANNOTATION_SCHEDULE)
        .or_else(|| backup.labels().get(LABEL_SCHEDULE))?;
    let reference = ObjectRef::<BackupSchedule>::new(name);
    Some(match backup.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    })
}

/// Waits until this replica holds the Lease: when the winning request was sent; `None`
/// when shut down first.
async fn acquire(
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
async fn keep_leading(
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
fn unique_identity() -> String {
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
