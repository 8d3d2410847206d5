//! The restore-test container (`pgbackup verify --restore`), shared by a PostgresBackup's
//! test after it completes and a BackupSchedule's scheduled test: the agent image of the
//! server's major version, the repository's wiring (with its encryption key), and an
//! `emptyDir` the scratch server runs in.

use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Volume, VolumeMount};

use super::agent_pod::{self, AgentContainer, RepositoryWiring};

/// Where the scratch server's data directory goes.
pub const SCRATCH_MOUNT: &str = "/scratch";

/// The container that restore-tests `backup` (`latest`: the newest logical or physical
/// backup of the server), only if its manifest has the SHA-256 `expected` (recorded when
/// the backup was made).
pub fn verify_container(
    image: String,
    backup: &str,
    expected: Option<&str>,
    wiring: &RepositoryWiring,
) -> AgentContainer {
    let mut args = vec!["verify", "--restore", "--json", "--backup", backup];
    if let Some(sha256) = expected {
        args.extend(["--expect-sha256", sha256]);
    }
    let mut container = agent_pod::repository_container(
        "verify",
        image,
        &args,
        wiring,
        vec![agent_pod::env("PGBACKUP_SCRATCH_DIR", SCRATCH_MOUNT)],
    );
    container.volumes.push((
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_MOUNT.into(),
            ..VolumeMount::default()
        },
    ));
    // A whole PostgreSQL server runs in it, with the restored data's settings.
    container.resources = agent_pod::resources_or(None, ("100m", "512Mi", "2Gi"));
    container
}
