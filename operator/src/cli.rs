//! Command-line interface of the `pgbackup` binary: one subcommand per role (DESIGN §1).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    agent::{
        backup::BackupArgs, copy::CopyArgs, data_dir::DataDirArgs, list::ListArgs,
        prune::PruneArgs, record_snapshot::RecordSnapshotArgs, restore::RestoreArgs,
        trigger::TriggerArgs, verify::VerifyArgs, wal_archive::WalArchiveArgs,
        wal_fetch::WalFetchArgs, wal_push::WalPushArgs,
    },
    controllers::runtime::OperatorArgs,
};

/// Declarative backups, WAL archiving and point-in-time restore for PostgreSQL on
/// Kubernetes. The same binary is the operator and the agent that runs in its Jobs.
#[derive(Debug, Parser)]
#[command(name = "pgbackup", version, propagate_version = true)]
pub struct Cli {
    /// Log format: `text` for terminals, `json` for log collectors (the default in a pod).
    #[arg(long, global = true, value_enum, env = "PGBACKUP_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write the outcome here when the command ends: a one-line JSON report of a backup, the
    /// error of a failure, else the output (cut to 4 KiB). Jobs point it at the pod's
    /// termination message, where the operator reads it.
    #[arg(long, global = true, env = "PGBACKUP_RESULT_FILE", value_name = "FILE")]
    pub result_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: the reconcilers of the four kinds, metrics, health and leader
    /// election.
    Operator(Box<OperatorArgs>),

    /// Print the CustomResourceDefinitions (the source of `crds/`).
    Crd(CrdArgs),

    /// Write the command-line and API references (the source of `docs/reference/`).
    Reference(CrdArgs),

    /// Take a logical (`pg_dump`) or physical (`pg_basebackup`) backup and stream it into a
    /// repository. Prints a JSON summary on stdout. Runs in the backup Job.
    Backup(Box<BackupArgs>),

    /// Stream WAL from a replication slot and store every segment in a repository. Runs in
    /// the WAL archiver Deployment.
    WalArchive(Box<WalArchiveArgs>),

    /// Store one WAL file in a repository; for PostgreSQL's `archive_command`
    /// (`pgbackup wal-push %p`).
    WalPush(Box<WalPushArgs>),

    /// Fetch one WAL file from a repository; for PostgreSQL's `restore_command`
    /// (`pgbackup wal-fetch %f %p`). Exits 1 when the file is not in the repository, 255 on
    /// any other failure (PostgreSQL then stops recovery rather than end it early).
    WalFetch(Box<WalFetchArgs>),

    /// Restore a logical backup into a running server, or lay a physical backup down in an
    /// empty data directory, optionally to a point in time with the archived WAL
    /// (`--target-*`), recovered there with `--recover`.
    Restore(Box<RestoreArgs>),

    /// List the backups of a server in a repository.
    List(Box<ListArgs>),

    /// Print the Kubernetes objects a backup stored (StatefulSet, Service, ConfigMaps; for
    /// `kubectl apply -f -`), or write them and the server's configuration files that live
    /// outside its data directory into `--output-dir`.
    Configuration(Box<crate::agent::configuration::ConfigurationArgs>),

    /// Check the backups in a repository: sizes, checksums and restore-ability.
    Verify(Box<VerifyArgs>),

    /// Delete the backups a retention policy no longer keeps, and the archived WAL that only
    /// they needed.
    Prune(Box<PruneArgs>),

    /// Copy a server's backups and archived WAL into a second repository, incrementally and
    /// verified; nothing is deleted in the source.
    Copy(Box<CopyArgs>),

    /// Create the next backup object of a BackupSchedule. Runs in the schedule's CronJob.
    Trigger(TriggerArgs),

    /// Put a data directory's old contents back after a restore, discard them once the
    /// restore is proven, or empty a replica's directory. Runs in restore Jobs.
    DataDir(Box<DataDirArgs>),

    /// Record a volume snapshot backup (its snapshots, backup label and WAL positions) in a
    /// repository's catalog. Runs in a Job the operator starts.
    RecordSnapshot(Box<RecordSnapshotArgs>),
    /// The kubectl plugin's commands: installed as `kubectl-pgbackup`, they run as
    /// `kubectl pgbackup …` with the user's kubeconfig (backup now, list, restore, status,
    /// logs).
    Kubectl(crate::plugin::PluginArgs),
    /// Print a new client-side encryption key (an age identity, with its public key in a
    /// comment), for the Secret of `repository.encryption`. Keep a copy outside the cluster:
    /// without the key, encrypted backups cannot be restored.
    Keygen,
}

impl Command {
    /// The subcommand's name as typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Operator(_) => "operator",
            Self::Crd(_) => "crd",
            Self::Reference(_) => "reference",
            Self::Backup(_) => "backup",
            Self::WalArchive(_) => "wal-archive",
            Self::WalPush(_) => "wal-push",
            Self::WalFetch(_) => "wal-fetch",
            Self::Restore(_) => "restore",
            Self::List(_) => "list",
            Self::Configuration(_) => "configuration",
            Self::Verify(_) => "verify",
            Self::Keygen => "keygen",
            Self::Prune(_) => "prune",
            Self::Copy(_) => "copy",
            Self::Trigger(_) => "trigger",
            Self::RecordSnapshot(_) => "record-snapshot",
            Self::DataDir(_) => "data-dir",
            Self::Kubectl(_) => "kubectl",
        }
    }
}

/// Options of `pgbackup crd` and `pgbackup reference`.
#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write the files (`crd`: one `<plural>.<group>.yaml` per kind; `reference`: `cli.md`
    /// and `api.md`) into this directory instead of printing them to standard output.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn a_bare_path_style_flag_leaves_the_wal_path_alone() {
        // As an archive_command: `pgbackup wal-push … --s3-force-path-style %p`.
        let cli = Cli::try_parse_from([
            "pgbackup",
            "wal-push",
            "--repository",
            "s3://backups/prod",
            "--s3-force-path-style",
            "pg_wal/000000010000000000000003",
        ])
        .expect("parses");
        let Command::WalPush(args) = cli.command else {
            panic!("wal-push");
        };
        assert!(args.repository.s3_force_path_style);
        assert_eq!(
            args.path.to_string_lossy(),
            "pg_wal/000000010000000000000003"
        );
    }
}
