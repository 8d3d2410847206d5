//! The Jobs of a restore: validate, restore, re-initialise a replica's data, discard or put back.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    batch::v1::Job,
    core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount},
};

use crate::{
    api::{JobOptions, PointInTimeRestore, RestoreMode},
    k8s::{
        agent_pod::{self, AgentContainer, AgentSettings, JobShape, Ownership},
        database_pod,
    },
};

use super::{
    NO_REPOSITORY, Source, VOLUME_MOUNT, aside_name, claim_name, claim_name_of, job_name, pgdata,
    target_args,
};

pub(super) fn claim_volume(claim: &str) -> (Volume, VolumeMount) {
    mounted_claim("data", claim, VOLUME_MOUNT, None)
}

pub(super) fn mounted_claim(
    name: &str,
    claim: &str,
    path: &str,
    sub_path: Option<String>,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_string(),
                read_only: None,
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            sub_path,
            ..VolumeMount::default()
        },
    )
}

/// The further volumes a snapshot restores (a WAL volume, say), mounted where the
/// database container has them: links the data directory holds into them (`pg_wal`)
/// resolve in the restore Job as they do in the database.
pub(super) fn snapshot_volume_mounts(
    restore: &PointInTimeRestore,
    source: &Source,
    stateful_set: &StatefulSet,
) -> Vec<(Volume, VolumeMount)> {
    source
        .snapshots
        .iter()
        .skip(1)
        .enumerate()
        .filter_map(|(i, volume)| {
            let (_, mount) = database_pod::database_mount(stateful_set, &volume.template)?;
            let claim = claim_name_of(restore, &volume.template, 0);
            Some(mounted_claim(
                &format!("volume-{}", i + 1),
                &claim,
                &mount.mount_path,
                mount.sub_path.clone(),
            ))
        })
        .collect()
}

/// An empty directory as the repository: no catalog, no WAL archive.
pub(super) fn no_repository() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "no-repository".into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: "no-repository".into(),
            mount_path: NO_REPOSITORY.into(),
            ..VolumeMount::default()
        },
    )
}

/// A Job of the restore running `args` with the claim `claim` mounted (if any) as the
/// database's user.
#[allow(clippy::too_many_arguments)]
pub(super) fn job(
    restore: &PointInTimeRestore,
    step: &str,
    settings: &AgentSettings,
    major: u32,
    args: Vec<String>,
    source: Option<&Source>,
    claim: Option<&str>,
    stateful_set: Option<&StatefulSet>,
) -> Job {
    let mut env = vec![agent_pod::env("PGBACKUP_PGDATA", pgdata(restore))];
    let mut all_args = args;
    let mut volumes = Vec::new();
    let mut identity = None;
    match source.map(|s| (s, &s.repository)) {
        Some((source, Some(repository))) => {
            let wiring = agent_pod::repository_wiring(repository, &source.server);
            all_args.extend(wiring.args.iter().cloned());
            env.extend(wiring.env.iter().cloned());
            volumes.extend(wiring.volume.clone().zip(wiring.mount.clone()));
            identity = wiring.service_account;
        }
        Some((source, None)) => {
            env.push(agent_pod::env(
                "PGBACKUP_REPOSITORY",
                format!("file://{NO_REPOSITORY}"),
            ));
            env.push(agent_pod::env("PGBACKUP_SERVER", &source.server));
            volumes.push(no_repository());
        }
        None => {}
    }
    if let Some(claim) = claim {
        volumes.push(claim_volume(claim));
    }
    let container = AgentContainer {
        name: step.into(),
        image: settings.image_for(major),
        args: all_args,
        env,
        volumes,
        resources: agent_pod::resources_or(
            restore.spec.resources.as_ref(),
            ("100m", "256Mi", "1Gi"),
        ),
        identity,
    };
    let mut settings = settings.clone();
    let user = stateful_set.and_then(database_pod::database_user);
    if let Some((uid, _, _)) = user {
        settings.run_as_user = uid;
    }
    let mut job = agent_pod::agent_job(
        restore,
        JobShape {
            name: job_name(restore, step),
            component: "restore",
            // Putting the old data back is what deleting a restore waits for: a
            // foreground deletion must not remove that Job first.
            ownership: if step == "put-back" {
                Ownership::Free
            } else {
                Ownership::Owned
            },
            options: &JobOptions {
                placement: restore.spec.placement.clone(),
                ..JobOptions::default()
            },
            backoff_limit: 2,
        },
        &settings,
        container,
    );
    if let Some((_, group, fs_group)) = user
        && let Some(context) = job
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|p| p.security_context.as_mut())
    {
        context.run_as_group = group.or(context.run_as_group);
        // Only what the database's own pod has: no recursive change of ownership.
        context.fs_group = fs_group;
    }
    job
}

/// The Job that checks the restore can be done (`restore --dry-run`).
pub fn validate_job(
    restore: &PointInTimeRestore,
    settings: &AgentSettings,
    major: u32,
    source: &Source,
) -> Job {
    let (target, _) = target_args(&restore.spec.recovery_target);
    let mut args = vec!["restore".to_string(), "--dry-run".into()];
    args.extend(target);
    args.extend(source.backup_args());
    if !source.snapshots.is_empty() {
        args.push("--snapshot-data".into());
    } else if restore.spec.mode == RestoreMode::InPlace {
        args.extend(["--set-aside".to_string(), aside_name(restore)]);
    }
    job(
        restore,
        "validate",
        settings,
        major,
        args,
        Some(source),
        None,
        None,
    )
}

/// The Job that restores into ordinal 0's claim and recovers to the target.
pub fn restore_job(
    restore: &PointInTimeRestore,
    settings: &AgentSettings,
    major: u32,
    source: &Source,
    base_backup: &str,
    stateful_set: &StatefulSet,
    confirmed_cluster: Option<&str>,
) -> Job {
    let (target, _) = target_args(&restore.spec.recovery_target);
    let mut args = vec!["restore".to_string(), "--recover".into(), "--json".into()];
    let snapshot = !source.snapshots.is_empty();
    if snapshot {
        // The snapshot's record, if a repository has one.
        args.extend(
            source
                .backup
                .iter()
                .flat_map(|id| ["--backup".into(), id.clone()]),
        );
    } else {
        args.extend(["--backup".to_string(), base_backup.to_string()]);
    }
    if let Some(sha256) = source
        .sha256
        .as_ref()
        .filter(|_| source.backup.as_deref() == Some(base_backup))
    {
        args.extend(["--expect-sha256".to_string(), sha256.clone()]);
    }
    args.extend(target);
    match restore.spec.mode {
        // Claims made from the snapshot: the replaced ones keep the old data.
        RestoreMode::InPlace if snapshot => {}
        RestoreMode::InPlace => {
            args.extend(["--set-aside".to_string(), aside_name(restore)]);
            // The cluster the operator confirmed, else the data being replaced, says
            // which cluster the backup must be of.
            if !restore.spec.source.allow_other_cluster {
                let expected = confirmed_cluster.unwrap_or("pgdata");
                args.extend(["--expect-cluster".to_string(), expected.into()]);
            }
        }
        // A clone must not archive into its source's repository, nor claim a timeline there.
        RestoreMode::Clone => args.push("--archive-off".into()),
    }
    if snapshot {
        // The clone's claims were made from the snapshots: recover them where they are.
        args.push("--snapshot-data".into());
    }
    let claim = claim_name(restore, 0);
    let mut job = job(
        restore,
        "restore",
        settings,
        major,
        args,
        Some(source),
        Some(&claim),
        Some(stateful_set),
    );
    let extra = snapshot_volume_mounts(restore, source, stateful_set);
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        for (volume, mount) in extra {
            pod.volumes.get_or_insert_default().push(volume);
            for container in &mut pod.containers {
                container
                    .volume_mounts
                    .get_or_insert_default()
                    .push(mount.clone());
            }
        }
    }
    job
}

/// A `data-dir` Job on a claim: `put-back`, `discard` (of ordinal 0) or `empty` (a
/// replica).
pub fn data_dir_job(
    restore: &PointInTimeRestore,
    settings: &AgentSettings,
    major: u32,
    action: &str,
    ordinal: u32,
    stateful_set: &StatefulSet,
    node: Option<&str>,
) -> Job {
    let mut args = vec!["data-dir".to_string(), action.to_string()];
    if action != "empty" {
        args.extend(["--name".to_string(), aside_name(restore)]);
    }
    let step = match action {
        "empty" => format!("reinit-{ordinal}"),
        other => other.to_string(),
    };
    let claim = claim_name(restore, ordinal);
    let mut job = job(
        restore,
        &step,
        settings,
        major,
        args,
        None,
        Some(&claim),
        Some(stateful_set),
    );
    // A claim that is ReadWriteOnce and in use can be mounted only on its pod's node.
    if let Some(spec) = job.spec.as_mut() {
        // Putting back, discarding and emptying are renames and deletions: an hour is
        // plenty; past it the Job fails and the restore moves on.
        spec.active_deadline_seconds = Some(3600);
        if let Some(pod) = spec.template.spec.as_mut() {
            pod.node_name = node.map(str::to_string);
        }
    }
    job
}

/// `args` without `-c archive_…=…` / `--archive_…=…` settings.
pub(super) fn without_archive_settings(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for (i, arg) in args.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        let next_is_archive = args.get(i + 1).is_some_and(|n| n.starts_with("archive_"));
        if arg == "-c" && next_is_archive {
            skip_next = true;
            continue;
        }
        if arg.starts_with("--archive_") || arg.starts_with("-carchive_") {
            continue;
        }
        out.push(arg.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_archive_nothing() {
        let args: Vec<String> = [
            "-c",
            "archive_mode=on",
            "-c",
            "wal_level=replica",
            "--archive_command=x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(without_archive_settings(&args), ["-c", "wal_level=replica"]);
    }
}
