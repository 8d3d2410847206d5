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

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use sha2::{Digest, Sha256};

use super::{
    AgentError,
    prune::{self, RetentionArgs},
    repository_args::RepositoryArgs,
};
use crate::repository::{
    BackupEntry, BackupKind, Catalog, MANIFEST_FILE, Manifest, ObjectStore, RetentionPolicy,
    S3Options, Store, WalArchive, WalFileKind, WalObject, hex_digest, keep_chains, select_kept,
};

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
    // One cluster per server name in either repository: the copy's archive must be the
    // source's cluster, or none yet.
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
    let catalog = Catalog::load(&source, server).await?;
    let present = Catalog::load(&destination, server).await?;
    let policy = args.keep.any().then(|| args.keep.policy()).transpose()?;
    let kept = policy
        .as_ref()
        .map(|policy| kept_in_copy(&catalog, &present, policy, jiff::Timestamp::now()));
    let selected: BTreeSet<&str> = args
        .backups
        .iter()
        .filter_map(|id| catalog.find(id).map(|(b, _)| b.dir.backup_id.as_str()))
        .collect();
    let unknown: Vec<&String> = args
        .backups
        .iter()
        .filter(|id| catalog.find(id).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(AgentError::Invalid(format!(
            "no complete backup {} of server {server} in {}",
            unknown
                .iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source.describe()
        )));
    }
    let mut tally = Tally::default();
    let mut lines = Vec::new();
    // Oldest first: an incremental backup's parents are in the copy before it is.
    for (entry, manifest) in catalog.completed() {
        let id = &entry.dir.backup_id;
        if !args.backups.is_empty() && !selected.contains(id.as_str()) {
            continue;
        }
        if kept.as_ref().is_some_and(|kept| !kept.contains(id)) {
            tally.backups_outside += 1;
            continue;
        }
        match present.completed().find(|(b, _)| b.dir == entry.dir) {
            Some((_, there)) if there == manifest => {
                tally.backups_present += 1;
                continue;
            }
            Some(_) => {
                return Err(AgentError::OtherCluster(format!(
                    "backup {id} in {} is not the one of that name in {}: refusing to overwrite it (was the copy written by another cluster under server name {server}?)",
                    destination.describe(),
                    source.describe()
                )));
            }
            // Not there, or only part of it (an interrupted copy): copied whole.
            None => {}
        }
        if args.dry_run {
            lines.push(format!(
                "would copy backup {id} ({} stored)",
                super::progress::human_bytes(entry.stored_bytes)
            ));
            continue;
        }
        let bytes = copy_backup(&source, &destination, entry, manifest).await?;
        tracing::info!(backup_id = %id, bytes, "backup copied");
        lines.push(format!(
            "copied backup {id} ({})",
            super::progress::human_bytes(bytes)
        ));
        tally.backups += 1;
        tally.bytes += bytes;
    }
    if !args.no_wal
        && let Some(identity) = identity
    {
        // Read first: it may speak only of WAL stored before the listing copied below.
        let coverage = from_archive.coverage().await?;
        if !args.dry_run {
            to_archive.claim(&identity).await?;
        }
        // With keep rules, the WAL older than the oldest base the copy keeps is of no use
        // there (its prune would drop it again).
        let from_segment = kept.as_ref().and_then(|kept| {
            let bases = catalog
                .completed()
                .chain(present.completed())
                .filter(|(b, _)| {
                    b.dir.kind != BackupKind::Logical && kept.contains(&b.dir.backup_id)
                })
                .map(|(_, m)| m);
            prune::oldest_needed_segment(bases, identity.wal_segment_size).map(|(segno, _)| segno)
        });
        copy_wal(
            (&from_archive, &to_archive),
            (&source, &destination),
            WalRange {
                segment_size: identity.wal_segment_size,
                from_segment,
            },
            args.dry_run,
            &mut tally,
        )
        .await?;
        if !args.dry_run
            && let Some(coverage) = coverage
        {
            // Every WAL file the source held when the run began is now in the copy.
            to_archive.set_coverage(&coverage).await?;
        }
    }
    if let Some(policy) = &policy {
        // Now that the copy holds every backup its rules keep, the same rules on the copy
        // alone drop the rest, and the WAL only they needed.
        let scope = prune::Scope {
            server,
            keys: keys.clone(),
            backup_ids: &[],
            delete: !args.dry_run,
        };
        let pruned = prune::prune(&destination, &scope, policy).await?;
        tracing::info!("the copy's retention applied");
        lines.extend(
            pruned
                .lines()
                .filter(|l| !l.starts_with("keep ") && !l.starts_with("dry run:"))
                .map(|l| format!("copy: {l}")),
        );
    }
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
    Ok(lines.join("\n") + "\n")
}

/// The backups the copy keeps by `policy`, judged among the complete backups of the
/// source and of the copy together (each kind on its own, with the backups kept incremental
/// ones build on): what the rules would keep if the copy held them all. A backup the source
/// has pruned stays in the copy while the rules keep it.
fn kept_in_copy(
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

/// Copies one complete backup: every chunk its manifest names, hashed on the way and
/// checked against the manifest, then the manifest itself. On a mismatch the chunk copied
/// is removed and nothing of the backup looks complete in the copy.
async fn copy_backup(
    source: &Store,
    destination: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
) -> Result<u64, AgentError> {
    let dir = &entry.dir;
    let mut bytes = 0;
    for chunk in manifest.objects.iter().flat_map(|o| &o.chunks) {
        let key = dir.key(&chunk.file);
        let (size, sha256) = copy_object(source, destination, &key).await?;
        if size != chunk.size || sha256 != chunk.sha256 {
            destination.delete(&key).await?;
            return Err(AgentError::Corrupt(format!(
                "{key} in {} is not what backup {}'s manifest says ({} bytes, SHA-256 {}), but {size} bytes with SHA-256 {sha256}: not copied; check it with `pgbackup verify --backup {}`",
                source.describe(),
                dir.backup_id,
                chunk.size,
                chunk.sha256,
                dir.backup_id
            )));
        }
        bytes += size;
    }
    let (size, _) = copy_object(source, destination, &dir.key(MANIFEST_FILE)).await?;
    Ok(bytes + size)
}

/// Which archived WAL a run copies: segments of `segment_size` bytes, from `from_segment`
/// on when set (history files always).
#[derive(Clone, Copy, Debug)]
struct WalRange {
    segment_size: u64,
    from_segment: Option<u64>,
}

/// Copies the archived WAL the copy lacks (by key: the key carries the content's hash),
/// each read back from the copy and checked against that hash. The archiver's record of
/// its replication slots stays behind: it belongs to the source's archiver.
async fn copy_wal(
    (from, to): (&WalArchive<'_, Store>, &WalArchive<'_, Store>),
    (source, destination): (&Store, &Store),
    range: WalRange,
    dry_run: bool,
    tally: &mut Tally,
) -> Result<(), AgentError> {
    let there: BTreeMap<String, u64> = to
        .objects(range.segment_size)
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let scratch = tempfile::Builder::new()
        .prefix("pgbackup-copy-")
        .tempdir()
        .map_err(|source| AgentError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let check = scratch.path().join("wal");
    let mut missing = BTreeSet::new();
    for object in from.objects(range.segment_size).await? {
        if range.from_segment.is_some_and(|first| {
            object.file.kind != WalFileKind::History && object.file.segno < first
        }) {
            continue;
        }
        if there.get(&object.key) == Some(&object.size) {
            tally.wal_present += 1;
            continue;
        }
        if dry_run {
            missing.insert(object.name.clone());
            tally.wal_files += 1;
            continue;
        }
        let (size, _) = copy_object(source, destination, &object.key).await?;
        let copied = WalObject {
            size,
            ..object.clone()
        };
        if let Err(err) = to.download(&copied, &check).await {
            destination.delete(&object.key).await?;
            return Err(AgentError::Corrupt(format!(
                "WAL file {} does not read back from {} as stored in {}: {}; not copied",
                object.key,
                destination.describe(),
                source.describe(),
                super::error_chain(&err)
            )));
        }
        let _ = tokio::fs::remove_file(&check).await;
        tally.wal_files += 1;
        tally.bytes += size;
    }
    if !missing.is_empty() {
        tracing::info!(files = missing.len(), "WAL files that would be copied");
    }
    Ok(())
}

/// Streams one object from `source` to the same key in `destination`; its size and the
/// SHA-256 of its bytes.
async fn copy_object(
    source: &Store,
    destination: &Store,
    key: &str,
) -> Result<(u64, String), AgentError> {
    let reader = source.get(key).await?;
    let mut hashing = crate::repository::Hashing {
        inner: reader,
        hasher: Sha256::new(),
        progress: None,
    };
    let size = destination.put(key, &mut hashing).await?;
    Ok((size, hex_digest(&hashing.hasher.finalize())))
}
