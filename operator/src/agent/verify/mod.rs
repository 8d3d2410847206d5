//! `pgbackup verify`: re-read every object of a backup and check its size and sha256 against
//! the manifest; a logical dump must also read as an archive (`pg_restore --list`), a physical
//! backup must pass `pg_verifybackup` once unpacked. With `--wal`, every object of the WAL
//! archive is read back and checked against the SHA-256 in its name. With `--restore`, the
//! backup is restored into a scratch server and its rows counted ([`restore_test`]).

mod restore_test;
mod scratch;

pub use restore_test::RestoreTest;

use std::{collections::BTreeSet, path::PathBuf};

use clap::Args;

use super::{
    AgentError,
    process::{PgBin, Tool, drain, pipe_into},
    repository_args::RepositoryArgs,
    untar::unpack_tar,
};
use crate::repository::{
    BackupEntry, BackupKind, Catalog, Keys, Manifest, ObjectRole, Store, WalArchive, WalFile,
    WalIndex, open_object,
};

/// Options of `pgbackup verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// Backup id to verify, or `latest`. Default: every complete backup (with `--restore`:
    /// the latest logical or physical one).
    #[arg(long)]
    pub backup: Option<String>,
    /// Restore the backup into a scratch PostgreSQL started for the test (physical: recovered
    /// to the backup's end and promoted; logical: a new cluster) and compare the rows of
    /// every table with the counts recorded at backup time. Needs the server's major version
    /// of PostgreSQL's programs and room for the restored data in `--scratch-dir`.
    #[arg(long)]
    pub restore: bool,
    /// With `--restore`: test the backup only if its manifest is the one written when it
    /// was made (the SHA-256 its backup reported, `status.sha256` of a PostgresBackup).
    /// Whoever can write to the repository could otherwise plant a backup, or replace
    /// one, and have it restored by the test, which holds the repository's credentials.
    #[arg(long, requires = "restore", value_name = "SHA256")]
    pub expect_sha256: Option<String>,
    /// With `--restore`: print the result as one line of JSON.
    #[arg(long, requires = "restore")]
    pub json: bool,
    /// Directory of PostgreSQL's programs (pg_restore, pg_verifybackup). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Where physical backups are unpacked for `pg_verifybackup`, and where `--restore` runs
    /// its scratch server (needs the backup's full size). Default: the system's temporary
    /// directory.
    #[arg(long, env = "PGBACKUP_SCRATCH_DIR", value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Also read back every file of the WAL archive and check it against the SHA-256 in
    /// its name.
    #[arg(long)]
    pub wal: bool,
}

/// Verifies; returns one line per backup. Fails when any backup fails.
pub async fn run(args: &VerifyArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    if args.restore {
        return restore(args, &store, &catalog).await;
    }
    let keys = args.repository.keys()?;
    let selected: Vec<(&BackupEntry, &Manifest)> = match &args.backup {
        Some(id) => {
            let found = catalog
                .find(id)
                .ok_or_else(|| AgentError::Invalid(format!("no complete backup {id}")))?;
            // An incremental backup is only as good as the backups it builds on.
            let chain = found.1.chain.iter().filter_map(|id| catalog.find(id));
            chain.chain([found]).collect()
        }
        None => catalog.completed().collect(),
    };
    let pg_bin = PgBin(args.pg_bin.clone());
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    for (entry, manifest) in selected {
        let verified = match broken_chain(&catalog, manifest, &failed) {
            Some(reason) => Err(AgentError::Corrupt(reason)),
            None => {
                verify_backup(
                    &store,
                    entry,
                    manifest,
                    &pg_bin,
                    args.scratch_dir.as_deref(),
                    keys.as_ref(),
                )
                .await
            }
        };
        if verified.is_err() {
            failed.insert(&entry.dir.backup_id);
        }
        match verified {
            Ok(()) => report.push_str(&format!(
                "{} {}: ok\n",
                entry.dir.backup_id,
                manifest.kind_label()
            )),
            Err(err) => {
                let line = format!(
                    "{} {}: FAILED: {}",
                    entry.dir.backup_id,
                    manifest.kind_label(),
                    super::error_chain(&err)
                );
                report.push_str(&line);
                report.push('\n');
                failures.push(line);
            }
        }
    }
    if args.wal {
        match verify_wal(&store, &args.repository, args.scratch_dir.as_deref()).await {
            Ok(line) => report.push_str(&line),
            Err(err) => {
                let line = format!("WAL archive: FAILED: {}", super::error_chain(&err));
                report.push_str(&line);
                report.push('\n');
                failures.push(line);
            }
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(AgentError::Corrupt(failures.join("; ")))
    }
}

/// Why an incremental backup cannot be restored whatever its own objects hold: a backup it
/// builds on is missing, or failed its check in this run.
fn broken_chain(catalog: &Catalog, manifest: &Manifest, failed: &BTreeSet<&str>) -> Option<String> {
    manifest.chain.iter().find_map(|id| {
        if catalog.find(id).is_none() {
            Some(format!(
                "backup {id}, which it builds on, is missing from the repository: it cannot be restored"
            ))
        } else if failed.contains(id.as_str()) {
            Some(format!(
                "backup {id}, which it builds on, failed its check: it cannot be restored"
            ))
        } else {
            None
        }
    })
}

/// `--restore`: the restore test of one backup.
async fn restore(
    args: &VerifyArgs,
    store: &Store,
    catalog: &Catalog,
) -> Result<String, AgentError> {
    let manifest = match args.backup.as_deref() {
        Some(id) if id != "latest" => catalog.find(id).map(|(_, m)| m),
        _ => catalog
            .completed()
            .map(|(_, m)| m)
            .filter(|m| m.kind != BackupKind::Snapshot)
            .last(),
    }
    .ok_or_else(|| {
        AgentError::Invalid(format!(
            "no complete backup {} of server {}",
            args.backup.as_deref().unwrap_or("(logical or physical)"),
            args.repository.server
        ))
    })?;
    let expected;
    let manifest = match &args.expect_sha256 {
        Some(sha256) => {
            expected = expected_manifest(store, manifest, sha256).await?;
            &expected
        }
        None => manifest,
    };
    crate::agent::restore::check_authentic(args.repository.keys()?.as_ref(), manifest)?;
    let scratch = scratch_dir(args.scratch_dir.as_deref())?;
    tracing::info!(
        backup_id = %manifest.backup_id,
        "restore test of {} backup {} in {}",
        manifest.kind.as_str(),
        manifest.backup_id,
        scratch.path().display()
    );
    let pg_bin = PgBin(args.pg_bin.clone());
    let test = restore_test::run(&args.repository, manifest, &pg_bin, scratch.path()).await?;
    tracing::info!(backup_id = %test.backup_id, verified = test.verified, "{}", test.summary);
    if !test.verified {
        return Err(AgentError::Verification(format!(
            "restore test of backup {} failed: {}",
            test.backup_id, test.summary
        )));
    }
    if args.json {
        return serde_json::to_string(&test)
            .map_err(|e| AgentError::Invalid(format!("report: {e}")));
    }
    Ok(format!(
        "{} {}: restored in {:.1} s{}; {}",
        test.backup_id,
        test.kind,
        test.restore_seconds,
        test.reached_lsn
            .as_deref()
            .map(|lsn| format!(", recovered to {lsn} and out of recovery"))
            .unwrap_or_default(),
        test.summary
    ))
}

/// Reads back every WAL object; each download checks the content against its name.
async fn verify_wal(
    store: &Store,
    repository: &RepositoryArgs,
    scratch: Option<&std::path::Path>,
) -> Result<String, AgentError> {
    let server = &repository.server;
    let archive = WalArchive::new(store, server).with_keys(repository.keys()?);
    let identity = archive
        .identity()
        .await?
        .ok_or_else(|| AgentError::Invalid(format!("server {server} has no WAL archive")))?;
    let objects = archive.objects(identity.wal_segment_size).await?;
    let dir = scratch
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("pgbackup-verify-wal-")
        .tempdir_in(&dir)
        .map_err(|source| AgentError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    let check = scratch.path().join("wal");
    let mut wrong = Vec::new();
    for object in &objects {
        let found = match archive.download(object, &check).await {
            Ok(_) => archive.check_owner(&check, &object.file, &identity).await,
            Err(err) => Err(err),
        };
        match found {
            Ok(None) => {}
            Ok(Some(reason)) => wrong.push(format!(
                "{} is not WAL of cluster {} as its name says: {reason}",
                object.key, identity.system_identifier
            )),
            Err(err) => wrong.push(format!("{}: {}", object.key, super::error_chain(&err))),
        }
    }
    let index = WalIndex::new(&objects, identity.wal_segment_size);
    for stray in index.unplaced_timelines() {
        wrong.push(format!(
            "WAL of timeline {stray} is stored but its history file ({}) is not: recovery cannot follow it",
            WalFile::history(stray).name(identity.wal_segment_size)
        ));
    }
    if !wrong.is_empty() {
        return Err(AgentError::Corrupt(format!(
            "{} of {} files: {}",
            wrong.len(),
            objects.len(),
            wrong.join("; ")
        )));
    }
    Ok(format!(
        "WAL archive: {} files verified (cluster {})\n",
        objects.len(),
        identity.system_identifier
    ))
}

/// Puts PostgreSQL's `backup_manifest` beside an unpacked data directory for
/// `pg_verifybackup`, from its object when the archive does not hold it (a backup the
/// server compressed keeps it only as its own object).
async fn place_backup_manifest(
    store: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
    keys: Option<&Keys>,
    target: &std::path::Path,
) -> Result<(), AgentError> {
    let path = target.join("backup_manifest");
    let Some(object) = manifest.object(ObjectRole::BackupManifest, None) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    let mut reader = open_object(store, &entry.dir, object, manifest, keys).await?;
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|source| AgentError::Io {
            path: path.display().to_string(),
            source,
        })?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    Ok(())
}

async fn verify_backup(
    store: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
    pg_bin: &PgBin,
    scratch: Option<&std::path::Path>,
    keys: Option<&Keys>,
) -> Result<(), AgentError> {
    crate::agent::restore::check_authentic(keys, manifest)?;
    for object in &manifest.objects {
        let reader = open_object(store, &entry.dir, object, manifest, keys).await?;
        match object.role {
            ObjectRole::Globals
            | ObjectRole::BackupManifest
            | ObjectRole::Configuration
            | ObjectRole::ServerFile => drain(reader).await?,
            ObjectRole::Database => {
                let tool = Tool::spawn(
                    &pg_bin.program("pg_restore"),
                    &["--list", "--file=/dev/null"],
                    &[],
                    true,
                )?;
                pipe_into(reader, tool).await?;
            }
            ObjectRole::DatabaseDirectory => {
                let scratch = scratch_dir(scratch)?;
                let target = scratch.path().join("dump");
                unpack_tar(reader, &target).await?;
                let tool = Tool::spawn(
                    &pg_bin.program("pg_restore"),
                    &["--list", "--file=/dev/null", &target.to_string_lossy()],
                    &[],
                    false,
                )?;
                tool.finish().await?;
            }
            ObjectRole::Data => {
                let scratch = scratch_dir(scratch)?;
                let target = scratch.path().join("pgdata");
                unpack_tar(reader, &target).await?;
                place_backup_manifest(store, entry, manifest, keys, &target).await?;
                let tool = Tool::spawn(
                    &pg_bin.program("pg_verifybackup"),
                    &["--quiet", &target.to_string_lossy()],
                    &[],
                    false,
                )?;
                tool.finish().await?;
            }
        }
        tracing::info!(backup_id = %entry.dir.backup_id, object = %object.name, "verified");
    }
    Ok(())
}

fn scratch_dir(parent: Option<&std::path::Path>) -> Result<tempfile::TempDir, AgentError> {
    let parent = parent.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("pgbackup-verify-")
        .tempdir_in(&parent)
        .map_err(|source| AgentError::Io {
            path: parent.display().to_string(),
            source,
        })
}

/// The manifest of `listed`'s backup read again, whole, and accepted only if its bytes
/// have the SHA-256 recorded when the backup was made; the test then uses exactly what
/// was checked. The chunks it names carry their own digests, checked as they are read.
pub(crate) async fn expected_manifest(
    store: &Store,
    listed: &Manifest,
    sha256: &str,
) -> Result<Manifest, AgentError> {
    use crate::repository::ObjectStore;
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let dir = crate::repository::BackupDir {
        server: listed.server.clone(),
        kind: listed.kind,
        backup_id: listed.backup_id.clone(),
    };
    let key = dir.key(crate::repository::MANIFEST_FILE);
    let mut bytes = Vec::new();
    store
        .get(&key)
        .await?
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| AgentError::Io {
            path: key.clone(),
            source,
        })?;
    let found = crate::repository::hex_digest(&sha2::Sha256::digest(&bytes));
    if !found.eq_ignore_ascii_case(sha256) {
        return Err(AgentError::Corrupt(format!(
            "the manifest of backup {} is not the one written when it was made (SHA-256 {found}, expected {sha256}): something else wrote it; not restoring it",
            listed.backup_id
        )));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt(format!("{key}: {e}")))?;
    manifest
        .check(&listed.backup_id)
        .map_err(|reason| AgentError::Corrupt(format!("{key}: {reason}")))?;
    Ok(manifest)
}
