//! `kubectl pgbackup`: the same binary installed as `kubectl-pgbackup` (or run as
//! `pgbackup kubectl …`), for people at a terminal: take a backup now from a schedule, list
//! backups with what each schedule can restore, start a restore to "10 minutes ago", follow
//! its phases, and read the logs of the Job behind an object. It acts with the user's own
//! kubeconfig and rights, through the API objects the operator reconciles.

mod logs;
mod restore;
mod show;
mod when;

use std::time::Duration;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::KubeConfigOptions,
};

use crate::{
    agent::{AgentError, trigger::api_error},
    api::{
        BackupPhase, BackupSchedule, PointInTimeRestore, PostgresBackup, RestorePhase,
        ScheduleMethod, VolumeSnapshotBackup,
    },
};

/// `kubectl pgbackup`: the binary installed as `kubectl-pgbackup`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kubectl pgbackup",
    bin_name = "kubectl pgbackup",
    version,
    about = "Backups, restores and their logs of the pgbackup operator, from kubectl."
)]
pub struct PluginCli {
    #[command(flatten)]
    pub args: PluginArgs,
}

/// Options of `kubectl pgbackup`.
#[derive(Debug, Clone, Args)]
pub struct PluginArgs {
    /// Namespace of the objects. Default: the kubeconfig context's.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// kubeconfig context to use. Default: the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,

    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The commands of `kubectl pgbackup`.
#[derive(Debug, Clone, Subcommand)]
pub enum PluginCommand {
    /// Backups on demand.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// The backups of the namespace, and the span of time each schedule can restore to.
    List,
    /// Restore a StatefulSet's database to a moment: into a clone beside it (default), or
    /// in place (`--in-place --confirm`).
    Restore(RestoreArgs),
    /// Where a PointInTimeRestore is: its phase, what it restored, its conditions.
    Status {
        /// The PointInTimeRestore.
        name: String,
    },
    /// The log of the newest Job (or archiver pod) behind an object: `postgresbackup/NAME`,
    /// `pointintimerestore/NAME`, `volumesnapshotbackup/NAME`, `backupschedule/NAME`.
    Logs {
        /// `KIND/NAME`.
        object: String,
    },
}

/// `kubectl pgbackup backup …`.
#[derive(Debug, Clone, Subcommand)]
pub enum BackupAction {
    /// Create a backup object now from a BackupSchedule's template, as its CronJob does
    /// (its concurrency policy applies).
    Now {
        /// The BackupSchedule.
        schedule: String,
        /// Wait until the backup completed or failed.
        #[arg(long)]
        wait: bool,
    },
}

/// Options of `kubectl pgbackup restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// What to restore from: `backupschedule/NAME` (the base backup that fits the moment
    /// is picked), `postgresbackup/NAME` or `volumesnapshotbackup/NAME`.
    pub source: String,

    /// The moment: `latest`, `end-of-backup`, a time (`2026-12-05T09:14:00Z`), or how
    /// long ago (`"10 minutes ago"`, `"2h ago"`).
    #[arg(long)]
    pub to: String,

    /// Restore into the StatefulSet itself (downtime; its current data is kept until the
    /// restored data is proven). Needs `--confirm`.
    #[arg(long, requires = "confirm")]
    pub in_place: bool,

    /// Confirms `--in-place`.
    #[arg(long)]
    pub confirm: bool,

    /// Name of the PointInTimeRestore. Default: `<statefulSet>-restore-<UTC time>`.
    #[arg(long)]
    pub name: Option<String>,

    /// Wait until the restore completed, failed or was rolled back.
    #[arg(long)]
    pub wait: bool,
}

/// Runs a plugin command; what it prints.
pub async fn run(args: &PluginArgs) -> Result<String, AgentError> {
    let (client, namespace) = connect(args).await?;
    match &args.command {
        PluginCommand::Backup {
            action: BackupAction::Now { schedule, wait },
        } => backup_now(&client, &namespace, schedule, *wait).await,
        PluginCommand::List => list(&client, &namespace).await,
        PluginCommand::Restore(restore) => start_restore(&client, &namespace, restore).await,
        PluginCommand::Status { name } => {
            let restores: Api<PointInTimeRestore> = Api::namespaced(client, &namespace);
            let restore = get(&restores, name, "pointintimerestore").await?;
            Ok(show::restore(&restore))
        }
        PluginCommand::Logs { object } => logs::of(&client, &namespace, object).await,
    }
}

/// A client of the kubeconfig (or of the pod it runs in) and the namespace to work in.
async fn connect(args: &PluginArgs) -> Result<(Client, String), AgentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match &args.context {
        Some(context) => {
            let options = KubeConfigOptions {
                context: Some(context.clone()),
                ..KubeConfigOptions::default()
            };
            Config::from_kubeconfig(&options)
                .await
                .map_err(|e| AgentError::Invalid(format!("kubeconfig context {context}: {e}")))?
        }
        None => Config::infer()
            .await
            .map_err(|e| AgentError::Invalid(format!("no kubeconfig to use: {e}")))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)
        .map_err(|e| AgentError::Invalid(format!("cannot reach the Kubernetes API: {e}")))?;
    Ok((client, namespace))
}

/// An object that must exist.
pub(crate) async fn get<K>(api: &Api<K>, name: &str, kind: &str) -> Result<K, AgentError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(api_error(format!("read {kind}/{name}")))?
        .ok_or_else(|| AgentError::Invalid(format!("{kind}/{name} does not exist")))
}

async fn backup_now(
    client: &Client,
    namespace: &str,
    schedule: &str,
    wait: bool,
) -> Result<String, AgentError> {
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let method = get(&schedules, schedule, "backupschedule")
        .await?
        .spec
        .method;
    let done =
        crate::agent::trigger::trigger(client.clone(), namespace, schedule, Timestamp::now())
            .await?;
    // "created <Kind> <name>", or "skipped: <why>".
    let Some(name) = done
        .strip_prefix("created ")
        .and_then(|rest| rest.rsplit(' ').next())
        .map(str::to_string)
    else {
        return Err(AgentError::Invalid(format!("no backup was made: {done}")));
    };
    if !wait {
        return Ok(done);
    }
    eprintln!("{done}");
    let (phase, message) = match method {
        ScheduleMethod::VolumeSnapshot => {
            let api: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
            wait_for_backup(&api, &name, |b| {
                let s = b.status.clone().unwrap_or_default();
                (s.phase, s.message)
            })
            .await?
        }
        _ => {
            let api: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
            wait_for_backup(&api, &name, |b| {
                let s = b.status.clone().unwrap_or_default();
                (s.phase, s.message)
            })
            .await?
        }
    };
    let line = format!("{name}: {phase:?}: {}", message.unwrap_or_default());
    if phase == BackupPhase::Failed {
        return Err(AgentError::Invalid(line));
    }
    Ok(line)
}

/// Polls a backup object until it completed or failed; prints each new message.
async fn wait_for_backup<K>(
    api: &Api<K>,
    name: &str,
    state: impl Fn(&K) -> (Option<BackupPhase>, Option<String>),
) -> Result<(BackupPhase, Option<String>), AgentError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut said = None;
    loop {
        let object = get(api, name, "backup").await?;
        let (phase, message) = state(&object);
        if message != said {
            if let Some(text) = &message {
                eprintln!("{name}: {text}");
            }
            said = message.clone();
        }
        if let Some(phase @ (BackupPhase::Completed | BackupPhase::Failed)) = phase {
            return Ok((phase, message));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn list(client: &Client, namespace: &str) -> Result<String, AgentError> {
    let all = ListParams::default();
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    let snapshots: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let backups = backups
        .list(&all)
        .await
        .map_err(api_error(format!("list postgresbackups in {namespace}")))?;
    let snapshots = snapshots.list(&all).await.map_err(api_error(format!(
        "list volumesnapshotbackups in {namespace}"
    )))?;
    let schedules = schedules
        .list(&all)
        .await
        .map_err(api_error(format!("list backupschedules in {namespace}")))?;
    let mut out = show::backups(&backups.items, &snapshots.items);
    if !schedules.items.is_empty() {
        out.push('\n');
        out.push_str(&show::schedules(&schedules.items));
    }
    Ok(out)
}

async fn start_restore(
    client: &Client,
    namespace: &str,
    args: &RestoreArgs,
) -> Result<String, AgentError> {
    let now = Timestamp::now();
    let target = when::recovery_target(&args.to, now).map_err(AgentError::Invalid)?;
    let (kind, name) = restore::source_ref(&args.source).map_err(AgentError::Invalid)?;
    let source = match kind {
        "backupschedule" => restore::Source::Schedule(Box::new(
            get(&Api::namespaced(client.clone(), namespace), name, kind).await?,
        )),
        "postgresbackup" => restore::Source::Backup(Box::new(
            get(&Api::namespaced(client.clone(), namespace), name, kind).await?,
        )),
        _ => restore::Source::Snapshot(Box::new(
            get(&Api::namespaced(client.clone(), namespace), name, kind).await?,
        )),
    };
    if let Some(why) = source.outside(&target) {
        return Err(AgentError::Invalid(format!("{why}; nothing was started")));
    }
    let restore_name = args
        .name
        .clone()
        .unwrap_or_else(|| restore::default_name(&source, now));
    let object = restore::restore_object(&source, &restore_name, target, args.in_place);
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), namespace);
    restores
        .create(&PostParams::default(), &object)
        .await
        .map_err(api_error(format!(
            "create pointintimerestore/{restore_name}"
        )))?;
    let started = format!(
        "pointintimerestore/{restore_name} created ({}); follow it with: kubectl pgbackup status {restore_name} -n {namespace}",
        if args.in_place {
            "in place"
        } else {
            "into a clone"
        }
    );
    if !args.wait {
        return Ok(started);
    }
    eprintln!("{started}");
    let mut said = None;
    loop {
        let restore = get(&restores, &restore_name, "pointintimerestore").await?;
        let status = restore.status.clone().unwrap_or_default();
        let now_saying = (status.phase, status.message.clone());
        if Some(&now_saying) != said.as_ref() {
            eprintln!(
                "{restore_name}: {}: {}",
                status
                    .phase
                    .map_or_else(|| "Pending".into(), |p| format!("{p:?}")),
                status.message.clone().unwrap_or_default()
            );
            said = Some(now_saying);
        }
        match status.phase {
            Some(RestorePhase::Completed) => return Ok(show::restore(&restore)),
            Some(RestorePhase::Failed | RestorePhase::RolledBack) => {
                return Err(AgentError::Invalid(show::restore(&restore)));
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}
