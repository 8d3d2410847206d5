//! `pgbackup verify`: re-read every object of a backup and check its size and sha256 against
//! the manifest; a logical dump must also read as an archive (`pg_restore --list`), a physical
//! backup must pass `pg_verifybackup` once unpacked ([`objects`]). With `--wal`, every object
//! of the WAL archive is read back and checked against the SHA-256 in its name ([`wal`]).
//! With `--restore`, the backup is restored into a scratch server and its rows counted
//! ([`restore_run`], [`restore_test`]).

mod manifest_pin;
mod objects;
mod restore_run;
mod restore_test;
mod scratch;
mod wal;

pub(crate) use manifest_pin::expected_manifest;
pub use restore_test::RestoreTest;

use std::{collections::BTreeSet, path::PathBuf};

use clap::Args;

use super::{AgentError, process::PgBin, repository_args::RepositoryArgs};
use crate::repository::{BackupEntry, Catalog, Manifest};

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
        return restore_run::restore(args, &store, &catalog).await;
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
                objects::verify_backup(
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
        match wal::verify_wal(&store, &args.repository, args.scratch_dir.as_deref()).await {
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

/// A private scratch directory under `parent` (default: the system's temporary directory).
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
