//! Restoring an incremental backup: every backup of its chain is unpacked beside the data
//! directory, then `pg_combinebackup` (of the backups' major version) writes the data
//! directory they make together, and the unpacked members go. The scratch space is the
//! chain's unpacked size; PostgreSQL 18's `pg_combinebackup --link` then links the output's
//! unchanged files to the full backup's instead of copying them.

use std::path::{Path, PathBuf};

use crate::{
    agent::{
        AgentError,
        process::{PgBin, Tool},
        untar::unpack_tar,
    },
    repository::{BackupDir, BackupKind, Catalog, Keys, Manifest, ObjectRole, Store, open_object},
};

/// The backups an incremental one is restored from: the full one first, it last.
pub(super) struct Chain {
    members: Vec<(BackupDir, Manifest)>,
}

impl Chain {
    /// The chain of `backup`, from the catalog; names the member that is missing or does not
    /// fit (another cluster, another timeline, a different chain of its own).
    pub(super) fn resolve(
        catalog: &Catalog,
        dir: &BackupDir,
        backup: &Manifest,
    ) -> Result<Self, AgentError> {
        let mut members = Vec::with_capacity(backup.chain.len() + 1);
        for (position, id) in backup.chain.iter().enumerate() {
            let found = catalog
                .completed()
                .find(|(b, m)| &b.dir.backup_id == id && m.kind == BackupKind::Physical);
            let Some((entry, manifest)) = found else {
                return Err(AgentError::Corrupt(format!(
                    "backup {id}, which incremental backup {} builds on, is missing from the repository: {} cannot be restored (restore an older backup, or one of another chain)",
                    backup.backup_id, backup.backup_id
                )));
            };
            let fits = manifest.system_identifier == backup.system_identifier
                && manifest.timeline == backup.timeline
                && manifest.server_version_num / 10_000 == backup.server_version_num / 10_000
                && manifest.chain == backup.chain[..position];
            if !fits {
                return Err(AgentError::Corrupt(format!(
                    "backup {id} in the repository is not the one incremental backup {} builds on (another cluster, timeline, major version or chain)",
                    backup.backup_id
                )));
            }
            members.push((entry.dir.clone(), manifest.clone()));
        }
        members.push((dir.clone(), backup.clone()));
        Ok(Self { members })
    }

    /// The backups, the full one first.
    pub(super) fn members(&self) -> impl Iterator<Item = (&BackupDir, &Manifest)> {
        self.members.iter().map(|(d, m)| (d, m))
    }

    /// Every member authentic and with all its objects, and a `pg_combinebackup` of their
    /// major version at hand: checked before anything is written.
    pub(super) async fn check(
        &self,
        store: &Store,
        keys: Option<&Keys>,
        pg_bin: &PgBin,
    ) -> Result<(), AgentError> {
        for (dir, manifest) in self.members() {
            super::check_authentic(keys, manifest)?;
            super::check_objects_present(store, dir, manifest)
                .await
                .map_err(|e| {
                    AgentError::Corrupt(format!("backup {} of the chain: {e}", dir.backup_id))
                })?;
        }
        let wanted = self.members[0].1.server_version_num / 10_000;
        let found = tool_major(pg_bin).await?;
        if found != wanted {
            return Err(AgentError::Invalid(format!(
                "the backups are of PostgreSQL {wanted}, and {} is of PostgreSQL {found}: combining an incremental backup needs the tool of the backups' major version (give --pg-bin of PostgreSQL {wanted})",
                pg_bin.program("pg_combinebackup").display()
            )));
        }
        Ok(())
    }

    /// Writes the combined data directory into `pgdata` (absent or empty).
    pub(super) async fn lay_down(
        &self,
        store: &Store,
        keys: Option<&Keys>,
        pgdata: &Path,
        pg_bin: &PgBin,
    ) -> Result<(), AgentError> {
        let scratch = Scratch::beside(pgdata)?;
        let mut inputs = Vec::with_capacity(self.members.len());
        for (position, (dir, manifest)) in self.members.iter().enumerate() {
            let data = manifest.object(ObjectRole::Data, None).ok_or_else(|| {
                AgentError::Corrupt(format!("backup {} has no data object", dir.backup_id))
            })?;
            let target = scratch.0.join(format!("{position}-{}", dir.backup_id));
            let reader = open_object(store, dir, data, manifest, keys).await?;
            unpack_tar(reader, &target).await?;
            tracing::info!(
                backup = %dir.backup_id,
                "unpacked {} of {} backups of the chain",
                position + 1,
                self.members.len()
            );
            inputs.push(target.display().to_string());
        }
        let output = pgdata.display().to_string();
        let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
        args.extend(["--output", &output]);
        if tool_major(pg_bin).await? >= 18 {
            args.push("--link");
        }
        let tool = Tool::spawn(&pg_bin.program("pg_combinebackup"), &args, &[], false)?;
        tool.finish().await?;
        Ok(())
    }
}

/// The major version of the `pg_combinebackup` at hand.
async fn tool_major(pg_bin: &PgBin) -> Result<u32, AgentError> {
    let program = pg_bin.program("pg_combinebackup");
    let output = crate::agent::process::tool_command(&program)
        .arg("--version")
        .output()
        .await
        .map_err(|source| AgentError::Invalid(format!(
            "restoring an incremental backup needs pg_combinebackup (PostgreSQL 17+), and {} cannot be run: {source}",
            program.display()
        )))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_major(&text).ok_or_else(|| {
        AgentError::Invalid(format!(
            "{} --version said {text:?}: not a PostgreSQL version",
            program.display()
        ))
    })
}

/// `pg_combinebackup (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)` → 17.
fn parse_major(version: &str) -> Option<u32> {
    let number = version.split(") ").nth(1)?.split_whitespace().next()?;
    number.split('.').next()?.parse().ok()
}

/// The directory the chain is unpacked in, beside the data directory (on its file system,
/// so that `--link` can link); removed when dropped, whatever happened.
struct Scratch(PathBuf);

impl Scratch {
    fn beside(pgdata: &Path) -> Result<Self, AgentError> {
        let name = pgdata
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pgdata".into());
        let parent = pgdata.parent().unwrap_or(Path::new("."));
        let path = parent.join(format!(".{name}.pgbackup-combine"));
        // A restore that died left its scratch behind: it is ours to clear.
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| AgentError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(err) = std::fs::remove_dir_all(&self.0)
        {
            tracing::warn!(error = %err, "could not remove {}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(manifests: &[Manifest]) -> Catalog {
        Catalog {
            backups: manifests
                .iter()
                .map(|m| crate::repository::BackupEntry {
                    dir: dir(&m.backup_id),
                    manifest: Some(m.clone()),
                    stored_bytes: 0,
                })
                .collect(),
        }
    }

    fn dir(id: &str) -> BackupDir {
        BackupDir {
            server: "s".into(),
            kind: BackupKind::Physical,
            backup_id: id.into(),
        }
    }

    fn incremental(id: &str, chain: &[&str]) -> Manifest {
        Manifest {
            chain: chain.iter().map(|c| c.to_string()).collect(),
            ..Manifest::fixture(id)
        }
    }

    #[test]
    fn resolves_the_chain_full_first() {
        let full = Manifest::fixture("20260101T000000Z");
        let first = incremental("20260102T000000Z", &["20260101T000000Z"]);
        let second = incremental(
            "20260103T000000Z",
            &["20260101T000000Z", "20260102T000000Z"],
        );
        let all = catalog(&[full, first, second.clone()]);
        let chain = Chain::resolve(&all, &dir(&second.backup_id), &second).expect("chain");
        let ids: Vec<&str> = chain.members().map(|(d, _)| d.backup_id.as_str()).collect();
        assert_eq!(
            ids,
            ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]
        );
    }

    #[test]
    fn names_the_member_missing_or_not_fitting() {
        let second = incremental(
            "20260103T000000Z",
            &["20260101T000000Z", "20260102T000000Z"],
        );
        let only_full = catalog(&[Manifest::fixture("20260101T000000Z"), second.clone()]);
        let err = Chain::resolve(&only_full, &dir(&second.backup_id), &second)
            .err()
            .expect("missing");
        assert!(err.to_string().contains("backup 20260102T000000Z"), "{err}");

        let foreign = Manifest {
            system_identifier: Some("7".into()),
            ..Manifest::fixture("20260101T000000Z")
        };
        let first = incremental("20260102T000000Z", &["20260101T000000Z"]);
        let mixed = catalog(&[foreign, first, second.clone()]);
        let err = Chain::resolve(&mixed, &dir(&second.backup_id), &second)
            .err()
            .expect("foreign");
        assert!(err.to_string().contains("not the one"), "{err}");
    }

    #[test]
    fn reads_the_tool_version() {
        assert_eq!(
            parse_major("pg_combinebackup (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)\n"),
            Some(17)
        );
        assert_eq!(
            parse_major("pg_combinebackup (PostgreSQL) 18.6\n"),
            Some(18)
        );
        assert_eq!(parse_major("nonsense"), None);
    }
}
