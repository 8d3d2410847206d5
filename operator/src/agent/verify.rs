//! `pgbackup verify`: re-read every object of a backup and check its size and sha256 against
//! the manifest; a logical dump must also read as an archive (`pg_restore --list`), a physical
//! backup must pass `pg_verifybackup` once unpacked.

use std::path::PathBuf;

use clap::Args;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{
    AgentError,
    process::{PgBin, Tool},
    repository_args::RepositoryArgs,
};
use crate::repository::{BackupEntry, Catalog, Manifest, ObjectRole, Store, open_object};

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
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(AgentError::Corrupt(failures.join("; ")))
    }
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
                let scratch = tempfile_dir(scratch)?;
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

fn tempfile_dir(parent: Option<&std::path::Path>) -> Result<TempDir, AgentError> {
    let parent = parent.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    TempDir::new_in(&parent).map_err(|source| AgentError::Io {
        path: parent.display().to_string(),
        source,
    })
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    fn new_in(parent: &std::path::Path) -> std::io::Result<Self> {
        let path = parent.join(format!(
            "pgbackup-verify-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads an object to the end; its size and checksum are checked on the way.
pub async fn drain(mut reader: impl AsyncRead + Unpin) -> Result<(), AgentError> {
    tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    Ok(())
}

/// Feeds an object to a tool's stdin, then reads the rest even when the tool stops reading
/// early, so that every byte is still checked. Fails when the object or the tool fails.
pub async fn pipe_into(
    mut reader: impl AsyncRead + Unpin,
    mut tool: Tool,
) -> Result<Vec<String>, AgentError> {
    let mut stdin = tool
        .take_stdin()
        .ok_or_else(|| AgentError::Invalid("tool has no stdin".into()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut tool_open = true;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
            .await
            .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        if n == 0 {
            break;
        }
        if tool_open && stdin.write_all(&buf[..n]).await.is_err() {
            tool_open = false; // the tool has read what it needs
        }
    }
    drop(stdin);
    Ok(tool.finish().await?)
}

/// Unpacks a tar stream into a new directory with mode 0700 (as PostgreSQL requires).
pub async fn unpack_tar(
    reader: impl AsyncRead + Unpin,
    target: &std::path::Path,
) -> Result<(), AgentError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io_err = |source| AgentError::Io {
        path: target.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target)
        .map_err(io_err)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    let target_text = target.to_string_lossy().into_owned();
    let tool = Tool::spawn(
        std::path::Path::new("tar"),
        &["-x", "-f", "-", "-C", &target_text],
        &[],
        true,
    )?;
    pipe_into(reader, tool).await?;
    Ok(())
}
