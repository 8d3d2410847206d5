//! The options of `pgbackup operator` and the controller settings they make.

use std::time::Duration;

use clap::Args;

use crate::{controllers::Settings, k8s::agent_pod::AgentSettings};

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
    pub(super) fn settings(&self) -> Settings {
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
