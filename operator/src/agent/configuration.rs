//! `pgbackup configuration`: what a backup stored besides its data — the Kubernetes
//! objects the database ran as, and the server's configuration files outside its data
//! directory — printed for `kubectl apply -f -`, or written into a directory for a
//! disaster recovery into a new cluster.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{AgentError, repository_args::RepositoryArgs, restore::check_authentic};
use crate::repository::{BackupDir, Catalog, Manifest, ObjectEntry, ObjectRole, Store};

/// Options of `pgbackup configuration`.
#[derive(Debug, Clone, Args)]
pub struct ConfigurationArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// The backup whose configuration to read, or `latest`.
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// Write `kubernetes.yaml` and the server files into this directory instead of printing
    /// the Kubernetes objects.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// Largest object read back.
const READ_LIMIT: u64 = 16 << 20;

/// Prints (or writes) the stored configuration.
pub async fn run(args: &ConfigurationArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    let keys = args.repository.keys()?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    let (entry, manifest) = catalog.find(&args.backup).ok_or_else(|| {
        AgentError::Invalid(format!(
            "no complete backup {} of server {}",
            args.backup, args.repository.server
        ))
    })?;
    check_authentic(keys.as_ref(), manifest)?;
    let stored: Vec<&ObjectEntry> = manifest
        .objects
        .iter()
        .filter(|o| matches!(o.role, ObjectRole::Configuration | ObjectRole::ServerFile))
        .collect();
    let Some(dir) = &args.output_dir else {
        let Some(objects) = manifest.object(ObjectRole::Configuration, None) else {
            return Err(AgentError::Invalid(format!(
                "backup {} holds no Kubernetes configuration (taken by the agent alone, or before pgbackup stored it)",
                entry.dir.backup_id
            )));
        };
        let bytes = read(&store, &entry.dir, manifest, objects, keys.as_ref()).await?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    };
    if stored.is_empty() {
        return Err(AgentError::Invalid(format!(
            "backup {} holds no configuration",
            entry.dir.backup_id
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut lines = Vec::new();
    for object in stored {
        let name = match (&object.role, &object.path) {
            (ObjectRole::ServerFile, Some(path)) => Path::new(path)
                .file_name()
                .map_or_else(|| object.name.clone(), |n| n.to_string_lossy().into_owned()),
            _ => "kubernetes.yaml".to_string(),
        };
        let bytes = read(&store, &entry.dir, manifest, object, keys.as_ref()).await?;
        let to = dir.join(&name);
        std::fs::write(&to, &bytes).map_err(|source| AgentError::Io {
            path: to.display().to_string(),
            source,
        })?;
        lines.push(match &object.path {
            Some(path) => format!("{} (the server's {path})", to.display()),
            None => to.display().to_string(),
        });
    }
    Ok(format!(
        "backup {} configuration written:\n{}\n",
        entry.dir.backup_id,
        lines.join("\n")
    ))
}

/// The whole of one object, checked against the manifest.
async fn read(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    object: &ObjectEntry,
    keys: Option<&crate::repository::Keys>,
) -> Result<Vec<u8>, AgentError> {
    super::restore::read_whole(store, dir, manifest, object, keys, READ_LIMIT)
        .await?
        .ok_or_else(|| {
            AgentError::Corrupt(format!(
                "{} of backup {} is larger than any configuration",
                object.name, dir.backup_id
            ))
        })
}
