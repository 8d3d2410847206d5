//! The objects of a PointInTimeRestore (pure): the agent's arguments for the recovery
//! target, the Jobs (validate, restore, replica re-initialisation, discard, put-back), and
//! in clone mode the new claim, Service and StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::Job,
        core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Service, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use crate::{
    api::{JobOptions, PointInTimeRestore, RecoveryTarget, Repository, RestoreMode},
    k8s::{
        agent_pod::{self, AgentContainer, AgentSettings, JobShape, Ownership},
        child_name, database_pod, dns_label_within, label_value,
    },
};

/// Where a Job mounts the database's claim.
pub const VOLUME_MOUNT: &str = "/var/lib/pgbackup/volume";
/// Label on the clone's pods and selector: the restore that made it.
pub const LABEL_RESTORE: &str = "pgbackup.io/restore";
/// Label on the clone's objects: the UID of the restore that made them.
pub const LABEL_RESTORE_UID: &str = "pgbackup.io/restore-uid";

/// Where the restore Job of a source without a repository finds "no repository": an
/// empty directory, so that recovery uses only the WAL the snapshot holds.
pub const NO_REPOSITORY: &str = "/var/lib/pgbackup/no-repository";

/// A volume of the restored pod made from a VolumeSnapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotVolume {
    /// The StatefulSet's volumeClaimTemplate it stands for.
    pub template: String,
    /// The VolumeSnapshot.
    pub snapshot: String,
    /// The least size of a volume made from it, e.g. `10Gi`.
    pub restore_size: Option<String>,
}

/// What the restore works from, resolved from its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The repository holding the base backup and WAL; `None` for a volume snapshot no
    /// repository records (it restores only as it was taken).
    pub repository: Option<Repository>,
    /// The server's name inside it.
    pub server: String,
    /// `--backup` for the agent: a backup id, `latest`, or none (the agent picks the newest
    /// that ended before the target; for a snapshot, one no repository records).
    pub backup: Option<String>,
    /// For a VolumeSnapshotBackup source: the VolumeSnapshots the restored claims are made
    /// from, the data volume's first.
    pub snapshots: Vec<SnapshotVolume>,
    /// The SHA-256 of the backup's manifest as its backup reported it (a PostgresBackup
    /// source): the agent restores that manifest only.
    pub sha256: Option<String>,
}

impl Source {
    /// `--backup` and `--expect-sha256` for the agent.
    fn backup_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(backup) = &self.backup {
            args.extend(["--backup".to_string(), backup.clone()]);
            if let Some(sha256) = &self.sha256 {
                args.extend(["--expect-sha256".to_string(), sha256.clone()]);
            }
        }
        args
    }
}

/// `<Kind>/<name>` of the restore, as recorded on a StatefulSet it scaled down.
pub fn scaled_down_by(restore: &PointInTimeRestore) -> String {
    format!("PointInTimeRestore/{}", restore.name_any())
}

/// The first characters of the restore's UID: what the names of its Jobs and of its
/// aside directory carry, so that leftovers of an earlier restore of the same name are
/// never taken for this one's.
fn uid_tag(restore: &PointInTimeRestore) -> String {
    let tag: String = restore
        .uid()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if tag.is_empty() { "0".into() } else { tag }
}

/// A Job of the restore: `<restore>-<step>-<uid>`.
pub fn job_name(restore: &PointInTimeRestore, step: &str) -> String {
    child_name(&restore.name_any(), &format!("{step}-{}", uid_tag(restore)))
}

/// The name the old data is set aside under: `<restore>-<uid>`.
pub fn aside_name(restore: &PointInTimeRestore) -> String {
    let name = restore.name_any();
    let keep = name.len().min(50);
    format!("{}-{}", &name[..keep], uid_tag(restore))
}

/// The StatefulSet restored into: the target, or the clone `<statefulset>-<restore>`,
/// also the name of its headless Service: a DNS-1035 label, short enough for its pods'
/// names and labels at any length of either name.
pub fn restored_stateful_set(restore: &PointInTimeRestore) -> String {
    let target = &restore.spec.target.stateful_set;
    match restore.spec.mode {
        RestoreMode::InPlace => target.clone(),
        RestoreMode::Clone => dns_label_within(target, &restore.name_any(), 52),
    }
}

/// The data claim of ordinal `ordinal` of the restored StatefulSet.
pub fn claim_name(restore: &PointInTimeRestore, ordinal: u32) -> String {
    claim_name_of(
        restore,
        &restore.spec.target.data_volume_claim_template,
        ordinal,
    )
}

/// The claim of volumeClaimTemplate `template` of ordinal `ordinal` of the restored
/// StatefulSet.
pub fn claim_name_of(restore: &PointInTimeRestore, template: &str, ordinal: u32) -> String {
    format!("{template}-{}-{ordinal}", restored_stateful_set(restore))
}

/// The data directory inside the mounted claim.
pub fn pgdata(restore: &PointInTimeRestore) -> String {
    let sub = restore.spec.target.data_sub_path.trim_matches('/');
    if sub.is_empty() {
        VOLUME_MOUNT.to_string()
    } else {
        format!("{VOLUME_MOUNT}/{sub}")
    }
}

/// The recovery target as the agent's options, and in words.
pub fn target_args(target: &RecoveryTarget) -> (Vec<String>, String) {
    let mut args = Vec::new();
    let words = if let Some(time) = &target.time {
        let time = time.0.to_string();
        args.extend(["--target-time".to_string(), time.clone()]);
        format!("time {time}")
    } else if let Some(lsn) = &target.lsn {
        args.extend(["--target-lsn".to_string(), lsn.clone()]);
        format!("LSN {lsn}")
    } else if let Some(xid) = target.xid {
        args.extend(["--target-xid".to_string(), xid.to_string()]);
        format!("transaction {xid}")
    } else if let Some(name) = &target.name {
        args.extend(["--target-name".to_string(), name.clone()]);
        format!("restore point {name}")
    } else if target.immediate == Some(true) {
        args.push("--target-immediate".into());
        "the end of the base backup".into()
    } else {
        args.push("--target-latest".into());
        "the end of the WAL archive".into()
    };
    if let Some(inclusive) = target.inclusive {
        args.push(format!("--target-inclusive={inclusive}"));
    }
    if let Some(timeline) = &target.timeline {
        args.extend(["--target-timeline".to_string(), timeline.clone()]);
    }
    (args, words)
}

/// Whether the target needs a named base backup (the agent cannot place a transaction or
/// restore point in time).
pub fn needs_named_backup(target: &RecoveryTarget) -> bool {
    target.xid.is_some() || target.name.is_some() || target.immediate == Some(true)
}

fn claim_volume(claim: &str) -> (Volume, VolumeMount) {
    mounted_claim("data", claim, VOLUME_MOUNT, None)
}

fn mounted_claim(
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
fn snapshot_volume_mounts(
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
fn no_repository() -> (Volume, VolumeMount) {
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
fn job(
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
fn without_archive_settings(args: &[String]) -> Vec<String> {
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

/// The clone's claim of ordinal 0 of volumeClaimTemplate `template`, like the source's
/// template, made from `snapshot` when there is one.
pub fn clone_claim(
    restore: &PointInTimeRestore,
    source: &StatefulSet,
    template: &str,
    snapshot: Option<&SnapshotVolume>,
) -> Option<PersistentVolumeClaim> {
    let spec = database_pod::claim_spec(
        source,
        template,
        snapshot.map(|s| (s.snapshot.as_str(), s.restore_size.as_deref())),
    )?;
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name_of(restore, template, 0)),
            namespace: restore.namespace(),
            labels: Some(clone_labels(restore, source)),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// In place from a snapshot: the claim of ordinal 0 of `snapshot`'s template made from
/// it, carrying this restore's UID, of the replaced claim's class and at least its size.
pub fn replacement_claim(
    restore: &PointInTimeRestore,
    stateful_set: &StatefulSet,
    snapshot: &SnapshotVolume,
    replaced: Option<&crate::api::ReplacedVolume>,
) -> Option<PersistentVolumeClaim> {
    let mut claim = clone_claim(restore, stateful_set, &snapshot.template, Some(snapshot))?;
    let spec = claim.spec.get_or_insert_default();
    if let Some(replaced) = replaced {
        if replaced.storage_class_name.is_some() {
            spec.storage_class_name = replaced.storage_class_name.clone();
        }
        if let Some(size) = &replaced.storage {
            database_pod::ask_at_least(spec, size);
        }
    }
    let mut labels = template_labels(stateful_set, &snapshot.template);
    labels.insert(LABEL_RESTORE_UID.into(), restore.uid().unwrap_or_default());
    claim.metadata.labels = Some(labels);
    Some(claim)
}

/// On a rollback: a claim of the replaced claim's name, class and size that binds the
/// kept volume again.
pub fn claim_back(
    restore: &PointInTimeRestore,
    stateful_set: &StatefulSet,
    replaced: &crate::api::ReplacedVolume,
) -> Option<PersistentVolumeClaim> {
    let suffix = format!("-{}-0", restore.spec.target.stateful_set);
    let template = replaced.claim.strip_suffix(&suffix)?;
    let mut claim = clone_claim(restore, stateful_set, template, None)?;
    claim.metadata.name = Some(replaced.claim.clone());
    claim.metadata.labels = Some(template_labels(stateful_set, template));
    let spec = claim.spec.get_or_insert_default();
    spec.volume_name = Some(replaced.persistent_volume.clone());
    spec.storage_class_name = replaced.storage_class_name.clone();
    if let Some(size) = &replaced.storage {
        spec.resources
            .get_or_insert_default()
            .requests
            .get_or_insert_default()
            .insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.clone()),
            );
    }
    Some(claim)
}

/// The labels of the StatefulSet's volumeClaimTemplate `template`.
fn template_labels(stateful_set: &StatefulSet, template: &str) -> BTreeMap<String, String> {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.iter().find(|t| t.name_any() == template))
        .and_then(|t| t.metadata.labels.clone())
        .unwrap_or_default()
}

/// The clone's pod labels: the source's selector keys with the clone's name as values,
/// and the restore's — nothing else of the source's, so that no Service, disruption
/// budget or policy of the source selects a clone pod.
fn clone_labels(restore: &PointInTimeRestore, source: &StatefulSet) -> BTreeMap<String, String> {
    let clone = restored_stateful_set(restore);
    let mut labels: BTreeMap<String, String> = source
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| l.keys().map(|k| (k.clone(), label_value(&clone))).collect())
        .unwrap_or_default();
    labels.insert(LABEL_RESTORE.into(), label_value(&restore.name_any()));
    labels
}

/// The clone: a headless Service and a one-replica StatefulSet copied from the source,
/// with its own name, labels and claims (the claim of ordinal 0 already restored).
pub fn clone_objects(
    restore: &PointInTimeRestore,
    source: &StatefulSet,
) -> Option<(Service, StatefulSet)> {
    let clone = restored_stateful_set(restore);
    let labels = clone_labels(restore, source);
    let selector: BTreeMap<String, String> = source
        .spec
        .as_ref()?
        .selector
        .match_labels
        .as_ref()?
        .keys()
        .map(|k| (k.clone(), labels[k].clone()))
        .chain([(LABEL_RESTORE.to_string(), labels[LABEL_RESTORE].clone())])
        .collect();
    let service = Service {
        metadata: ObjectMeta {
            name: Some(clone.clone()),
            namespace: restore.namespace(),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                name: Some("postgresql".into()),
                port: restore.spec.target.port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let mut spec = source.spec.clone()?;
    spec.replicas = Some(1);
    // The clone archives nothing: archive settings given on the command line (which
    // would override the restored `postgresql.auto.conf`) are left out.
    if let Some(pod) = spec.template.spec.as_mut() {
        for container in &mut pod.containers {
            for list in [container.args.as_mut(), container.command.as_mut()]
                .into_iter()
                .flatten()
            {
                *list = without_archive_settings(list);
            }
        }
        // A copy of the database needs no rights on the cluster: it runs without the
        // ServiceAccount's token (the account still names its image pull Secrets).
        pod.automount_service_account_token = Some(false);
    }
    spec.service_name = Some(clone.clone());
    spec.selector.match_labels = Some(selector);
    spec.selector.match_expressions = None;
    let template_meta = spec.template.metadata.get_or_insert_default();
    template_meta.labels = Some(labels.clone());
    let mut object_labels = labels;
    object_labels.insert(LABEL_RESTORE_UID.into(), restore.uid().unwrap_or_default());
    let stateful_set = StatefulSet {
        metadata: ObjectMeta {
            name: Some(clone),
            namespace: restore.namespace(),
            labels: Some(object_labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Some((service, stateful_set))
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
