//! `pgbackup verify`: re-read every object of a backup and check its size and sha256 against
//! the manifest; a logical dump must also read as an archive (`pg_restore --list`), a physical
//! backup must pass `pg_verifybackup` once unpacked. With `--wal`, every object of the WAL
//! archive is read back and checked against the SHA-256 in its name.

use std::path::PathBuf;

use clap::Args;

use super::{
    AgentError,
    process::{PgBin, Tool, drain, pipe_into, unpack_tar},
    repository_args::RepositoryArgs,
};
use crate::repository::{
    BackupEntry, Catalog, Manifest, ObjectRole, Store, WalArchive, open_object,
};

/// Options of `pgbackup verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// Backup id to verify, or `latest`. Default: every complete backup.
    #[arg(long)]
    pub backup: Option<String>,
    /// Directory of PostgreSQL's programs (pg_restore, pg_verifybackup). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Where physical backups are unpacked for `pg_verifybackup` (needs their full size).
    /// Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
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
    let selected: Vec<(&BackupEntry, &Manifest)> = match &args.backup {
        Some(id) => vec![
            catalog
                .find(id)
                .ok_or_else(|| AgentError::Invalid(format!("no complete backup {id}")))?,
        ],
        None => catalog.completed().collect(),
    };
    let pg_bin = PgBin(args.pg_bin.clone());
    let mut report = String::new();
    let mut failures = Vec::new();
    for (entry, manifest) in selected {
        match verify_backup(
            &store,
            entry,
            manifest,
            &pg_bin,
            args.scratch_dir.as_deref(),
        )
        .await
        {
            Ok(()) => report.push_str(&format!(
                "{} {}: ok\n",
                entry.dir.backup_id,
                manifest.kind.as_str()
            )),
            Err(err) => {
                let line = format!(
                    "{} {}: FAILED: {}",
                    entry.dir.backup_id,
                    manifest.kind.as_str(),
                    super::error_chain(&err)
                );
                report.push_str(&line);
                report.push('\n');
                failures.push(line);
            }
        }
    }
    if args.wal {
        match verify_wal(&store, &args.repository.server, args.scratch_dir.as_deref()).await {
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

/// Reads back every WAL object; each download checks the content against its name.
async fn verify_wal(
    store: &Store,
    server: &str,
    scratch: Option<&std::path::Path>,
) -> Result<String, AgentError> {
    let archive = WalArchive::new(store, server);
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
    for object in &objects {
        archive.download(object, &check).await?;
    }
    Ok(format!(
        "WAL archive: {} files verified (cluster {})\n",
        objects.len(),
        identity.system_identifier
    ))
}

async fn verify_backup(
    store: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
    pg_bin: &PgBin,
    scratch: Option<&std::path::Path>,
) -> Result<(), AgentError> {
    for object in &manifest.objects {
        let reader = open_object(store, &entry.dir, object, manifest.compression).await?;
        match object.role {
            ObjectRole::Globals => drain(reader).await?,
            ObjectRole::Database => {
                let tool = Tool::spawn(
                    &pg_bin.program("pg_restore"),
                    &["--list", "--file=/dev/null"],
                    &[],
                    true,
                )?;
                pipe_into(reader, tool).await?;
            }
            ObjectRole::Data => {
                let scratch = scratch_dir(scratch)?;
                let target = scratch.path().join("pgdata");
                unpack_tar(reader, &target).await?;
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
