//! `pgbackup copy`: a second copy of a server's backups and archived WAL in another
//! repository (the "2" and "1" of 3-2-1), incremental and verified. Objects are copied as
//! they are stored (still compressed, still encrypted), so the copy is a repository of its
//! own: list, verify, restore and prune work on it as on the first. Each backup's chunks
//! are hashed on the way and checked against its manifest; its manifest is written last,
//! so an interrupted copy leaves no backup that looks complete and the next run copies it
//! again. Each WAL file is read back from the copy and checked against the hash in its
//! name. Nothing is ever deleted in the source. With keep rules the copy has its own
//! retention: a backup the rules would not keep in the copy is not copied, and the copy's
//! backups they no longer keep are pruned from it (with the WAL only they needed) after
//! the run.
//!
//! Here: the options and the run, step by step; which backups are copied and copying them
//! in `backups`, the WAL in `wal`, the copy's own retention in `retention`.

mod backups;
mod retention;
mod wal;

use clap::Args;

use super::{AgentError, prune::RetentionArgs, repository_args::RepositoryArgs};
use crate::repository::{ArchiveIdentity, Catalog, ObjectStore, S3Options, Store, WalArchive};
use backups::{copy_backups, selected_backups};
use retention::{kept_in_copy, prune_copy};
use wal::copy_archive;

/// Options of `pgbackup copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The repository copied from.
    #[command(flatten)]
    pub repository: RepositoryArgs,

    /// The repository copied into: `s3://bucket/prefix` or `file:///path`. The server keeps
    /// its name there.
    #[arg(long = "to", env = "PGBACKUP_COPY_TO", value_name = "URL")]
    pub to: String,

    /// Endpoint URL of the S3-compatible service of `--to`. Default: AWS S3 (the source's
    /// endpoint is not carried over).
    #[arg(long, env = "PGBACKUP_COPY_S3_ENDPOINT", value_name = "URL")]
    pub to_s3_endpoint: Option<String>,

    /// S3 region of `--to`. Default: the AWS configuration's, else us-east-1.
    #[arg(long, env = "PGBACKUP_COPY_S3_REGION")]
    pub to_s3_region: Option<String>,

    /// Path-style S3 addressing for `--to`.
    #[arg(long, env = "PGBACKUP_COPY_S3_FORCE_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub to_s3_force_path_style: bool,

    /// S3 server-side encryption of the copies: `AES256` or `aws:kms`. Default: the
    /// bucket's own (the source's setting is not carried over).
    #[arg(long, env = "PGBACKUP_COPY_S3_SSE", value_parser = ["AES256", "aws:kms"])]
    pub to_s3_sse: Option<String>,

    /// KMS key id or ARN for `--to-s3-sse aws:kms`.
    #[arg(long, env = "PGBACKUP_COPY_S3_SSE_KMS_KEY_ID", requires = "to_s3_sse")]
    pub to_s3_sse_kms_key_id: Option<String>,

    /// S3 storage class of the copies, e.g. GLACIER_IR or STANDARD_IA.
    #[arg(long, env = "PGBACKUP_COPY_S3_STORAGE_CLASS")]
    pub to_s3_storage_class: Option<String>,

    /// Copy only this backup (repeat for several). Default: every complete backup.
    #[arg(long = "backup", value_name = "ID")]
    pub backups: Vec<String>,

    /// Copy backups only, not the archived WAL.
    #[arg(long)]
    pub no_wal: bool,

    /// Show what would be copied, and copy nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The copy's own retention (applied to the copy only, after copying). Default: the
    /// copy keeps every backup it receives.
    #[command(flatten)]
    pub keep: RetentionArgs,
}

impl CopyArgs {
    /// The S3 settings of `--to`: its own endpoint, region and storage class, and its own
    /// credentials when `PGBACKUP_COPY_AWS_ACCESS_KEY_ID` and
    /// `PGBACKUP_COPY_AWS_SECRET_ACCESS_KEY` (and `PGBACKUP_COPY_AWS_SESSION_TOKEN`) are set
    /// (else the AWS chain's, as the source).
    fn destination_options(&self) -> S3Options {
        let credentials = match (
            std::env::var("PGBACKUP_COPY_AWS_ACCESS_KEY_ID"),
            std::env::var("PGBACKUP_COPY_AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) if !id.is_empty() => {
                Some(Box::new(crate::repository::StaticCredentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: std::env::var("PGBACKUP_COPY_AWS_SESSION_TOKEN")
                        .ok()
                        .filter(|t| !t.is_empty()),
                }))
            }
            _ => None,
        };
        S3Options {
            endpoint: self.to_s3_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.to_s3_region.clone().filter(|r| !r.is_empty()),
            force_path_style: self.to_s3_force_path_style,
            server_side_encryption: self.to_s3_sse.clone(),
            kms_key_id: self.to_s3_sse_kms_key_id.clone(),
            storage_class: self.to_s3_storage_class.clone(),
            credentials,
            ..self.repository.s3_options()
        }
    }
}

/// What a run copied, and what it found already there.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    backups: u64,
    backups_present: u64,
    backups_outside: u64,
    wal_files: u64,
    wal_present: u64,
    bytes: u64,
}

/// Copies; returns a summary.
pub async fn run(args: &CopyArgs) -> Result<String, AgentError> {
    let server = &args.repository.server;
    let source = args.repository.open().await?;
    let location = args.to.parse()?;
    let destination = Store::open(&location, &args.destination_options()).await?;
    if source.describe() == destination.describe() {
        return Err(AgentError::Invalid(format!(
            "--to names the repository copied from ({}): give another one",
            source.describe()
        )));
    }
    let keys = args.repository.keys()?;
    let from_archive = WalArchive::new(&source, server).with_keys(keys.clone());
    let to_archive = WalArchive::new(&destination, server).with_keys(keys.clone());
    let identity = same_cluster(
        server,
        (&source, &destination),
        (&from_archive, &to_archive),
    )
    .await?;
    let catalog = Catalog::load(&source, server).await?;
    let present = Catalog::load(&destination, server).await?;
    let policy = args.keep.any().then(|| args.keep.policy()).transpose()?;
    let kept = policy
        .as_ref()
        .map(|policy| kept_in_copy(&catalog, &present, policy, jiff::Timestamp::now()));
    let selected = selected_backups(args, &catalog, &source)?;
    let mut tally = Tally::default();
    let mut lines = copy_backups(
        args,
        (&source, &destination),
        (&catalog, &present),
        kept.as_ref(),
        &selected,
        &mut tally,
    )
    .await?;
    if !args.no_wal
        && let Some(identity) = identity
    {
        copy_archive(
            args,
            (&from_archive, &to_archive),
            (&source, &destination),
            &identity,
            (&catalog, &present),
            kept.as_ref(),
            &mut tally,
        )
        .await?;
    }
    if let Some(policy) = &policy {
        lines.extend(prune_copy(&destination, server, keys.clone(), policy, args.dry_run).await?);
    }
    lines.extend(summary(args, &tally, &destination));
    Ok(lines.join("\n") + "\n")
}

/// The source's archive identity, once it is clear that the copy's archive is of the same
/// cluster, or of none yet: one cluster per server name in either repository.
async fn same_cluster(
    server: &str,
    (source, destination): (&Store, &Store),
    (from_archive, to_archive): (&WalArchive<'_, Store>, &WalArchive<'_, Store>),
) -> Result<Option<ArchiveIdentity>, AgentError> {
    let identity = from_archive.identity().await?;
    if let (Some(from), Some(to)) = (&identity, to_archive.identity().await?)
        && from.system_identifier != to.system_identifier
    {
        return Err(AgentError::OtherCluster(format!(
            "server {server} in {} archives cluster {}, in {} cluster {}: refusing to mix two clusters' backups under one name",
            source.describe(),
            from.system_identifier,
            destination.describe(),
            to.system_identifier
        )));
    }
    Ok(identity)
}

/// The run's last lines: the backups the keep rules left out, and what was copied.
fn summary(args: &CopyArgs, tally: &Tally, destination: &Store) -> Vec<String> {
    let mut lines = Vec::new();
    if tally.backups_outside > 0 {
        lines.push(format!(
            "{} backup(s) not copied: the copy's keep rules would not keep them",
            tally.backups_outside
        ));
    }
    lines.push(format!(
        "{}{} backup(s) and {} WAL file(s) copied ({}) into {}; {} backup(s) and {} WAL file(s) were there already",
        if args.dry_run { "dry run: " } else { "" },
        tally.backups,
        tally.wal_files,
        super::progress::human_bytes(tally.bytes),
        destination.describe(),
        tally.backups_present,
        tally.wal_present,
    ));
    lines
}
