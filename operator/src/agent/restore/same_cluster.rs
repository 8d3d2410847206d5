//! `--expect-cluster`: a restore lays down only backups of the cluster it replaces or
//! copies. A backup carries its server's configuration (preload libraries, commands run
//! by the server) and its roles; restored over a database, it runs with that database's
//! pod, ServiceAccount and Secrets. So whoever could write a backup of a server of their
//! own into a repository must not be able to restore it in place of another one.

use std::{path::Path, str::FromStr};

use crate::{agent::AgentError, repository::Manifest};

use super::aside;

/// Which cluster the backup must be of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedCluster {
    /// This system identifier.
    Id(String),
    /// The cluster whose data the restore replaces: `global/pg_control` of the data
    /// directory, or of the old data a restore set aside.
    DataDir,
}

impl FromStr for ExpectedCluster {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "pgdata" {
            return Ok(Self::DataDir);
        }
        text.parse::<u64>()
            .map(|id| Self::Id(id.to_string()))
            .map_err(|_| {
                format!("{text:?}: give a system identifier (a number) or `pgdata` (the cluster in the data directory)")
            })
    }
}

/// The system identifier of the cluster in `pgdata`: of the old data set aside under
/// `aside_name` when a restore was interrupted after moving it, else of `pgdata` itself.
/// `None` when neither holds a cluster.
pub fn in_data_dir(pgdata: &Path, aside_name: Option<&str>) -> Result<Option<String>, AgentError> {
    let candidates = aside_name
        .map(|name| aside::aside_dir(pgdata, name))
        .into_iter()
        .chain([pgdata.to_path_buf()]);
    for dir in candidates {
        let control = dir.join("global").join("pg_control");
        match std::fs::read(&control) {
            // ControlFileData begins with the 64-bit system identifier, in the byte order
            // of the machine that wrote it (the one that reads it here).
            Ok(bytes) if bytes.len() >= 8 => {
                let id = u64::from_ne_bytes(bytes[..8].try_into().unwrap_or_default());
                return Ok(Some(id.to_string()));
            }
            Ok(_) => {
                return Err(AgentError::Corrupt(format!(
                    "{} is too short to be PostgreSQL's control file",
                    control.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AgentError::Io {
                    path: control.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// Refuses `backup` unless it is of the cluster `expected` names.
pub fn check(
    expected: &ExpectedCluster,
    backup: &Manifest,
    pgdata: Option<&Path>,
    aside_name: Option<&str>,
) -> Result<(), AgentError> {
    let ours = match expected {
        ExpectedCluster::Id(id) => id.clone(),
        ExpectedCluster::DataDir => {
            let pgdata = pgdata.ok_or_else(|| {
                AgentError::Invalid("--expect-cluster pgdata needs --pgdata".into())
            })?;
            in_data_dir(pgdata, aside_name)?.ok_or_else(|| {
                AgentError::OtherCluster(format!(
                    "{} holds no PostgreSQL cluster to compare backup {} with: nothing proves the backup is of this database (allow a backup of any cluster only for a repository you trust)",
                    pgdata.display(),
                    backup.backup_id
                ))
            })?
        }
    };
    match &backup.system_identifier {
        Some(theirs) if *theirs == ours => Ok(()),
        Some(theirs) => Err(AgentError::OtherCluster(format!(
            "backup {} is of cluster {theirs}, not of cluster {ours} it would replace: a backup of another server runs that server's configuration with this database's rights (allow it only for a repository you trust)",
            backup.backup_id
        ))),
        None => Err(AgentError::OtherCluster(format!(
            "backup {} does not record which cluster it is of, so it cannot be shown to be of cluster {ours}",
            backup.backup_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(system_identifier: Option<&str>) -> Manifest {
        let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
            "formatVersion": 1,
            "backupId": "20261204T120000Z",
            "kind": "physical",
            "server": "orders",
            "serverVersion": "16.4",
            "serverVersionNum": 160004,
            "beginTime": "2026-12-04T12:00:00Z",
            "endTime": "2026-12-04T12:01:00Z",
            "compression": "zstd",
            "compressionLevel": 3,
            "toolVersion": "pgbackup 0.1.0",
            "objects": [],
        }))
        .expect("a manifest");
        manifest.system_identifier = system_identifier.map(str::to_string);
        manifest
    }

    fn data_dir_of(id: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("global")).expect("global");
        let mut control = id.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(dir.path().join("global/pg_control"), control).expect("pg_control");
        dir
    }

    #[test]
    fn the_expected_cluster_is_a_number_or_the_data_directory() {
        assert_eq!(
            "7300000000000000001".parse(),
            Ok(ExpectedCluster::Id("7300000000000000001".into()))
        );
        assert_eq!("pgdata".parse(), Ok(ExpectedCluster::DataDir));
        assert!("orders".parse::<ExpectedCluster>().is_err());
    }

    #[test]
    fn a_backup_of_the_cluster_in_the_data_directory_passes() {
        let dir = data_dir_of(7300000000000000001);
        let expected = ExpectedCluster::DataDir;
        check(
            &expected,
            &manifest(Some("7300000000000000001")),
            Some(dir.path()),
            None,
        )
        .expect("same cluster");
    }

    #[test]
    fn a_backup_of_another_cluster_is_refused_with_both_identifiers() {
        let dir = data_dir_of(7300000000000000001);
        let err = check(
            &ExpectedCluster::DataDir,
            &manifest(Some("7399999999999999999")),
            Some(dir.path()),
            None,
        )
        .expect_err("another cluster");
        assert_eq!(err.reason(), "OtherCluster");
        let text = err.to_string();
        assert!(text.contains("7399999999999999999"), "{text}");
        assert!(text.contains("7300000000000000001"), "{text}");
    }

    #[test]
    fn an_empty_data_directory_or_an_unrecorded_cluster_proves_nothing() {
        let empty = tempfile::tempdir().expect("temporary directory");
        let err = check(
            &ExpectedCluster::DataDir,
            &manifest(Some("7300000000000000001")),
            Some(empty.path()),
            None,
        )
        .expect_err("nothing to compare with");
        assert_eq!(err.reason(), "OtherCluster");
        let err = check(
            &ExpectedCluster::Id("7300000000000000001".into()),
            &manifest(None),
            None,
            None,
        )
        .expect_err("no identifier recorded");
        assert_eq!(err.reason(), "OtherCluster");
    }

    #[test]
    fn the_old_data_set_aside_is_what_an_interrupted_restore_compares_with() {
        let old = data_dir_of(7300000000000000001);
        let pgdata = tempfile::tempdir().expect("temporary directory");
        let aside = aside::aside_dir(pgdata.path(), "restore-1");
        std::fs::rename(old.path(), &aside).expect("set aside");
        assert_eq!(
            in_data_dir(pgdata.path(), Some("restore-1")).expect("read"),
            Some("7300000000000000001".into())
        );
    }
}
