//! Which object a restore starts from: the backup, snapshot or dump it names or its schedule's pick, and the StatefulSet as recorded.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, ResourceExt, api::ListParams};

use super::plan::SourceObject;

use crate::controllers::{Context, Error};
use crate::{
    api::{BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    k8s::get_opt,
};

use super::{kube_error, snapshot_source};

/// The StatefulSet stored with `backup` (its ConfigMap `<backup>-configuration`, owned by
/// it and still of the digest its status recorded), or why it cannot be used.
pub(super) async fn stored_stateful_set_of(
    ctx: &Context,
    namespace: &str,
    backup: &PostgresBackup,
) -> Result<Result<StatefulSet, String>, Error> {
    use crate::controllers::postgres_backup::configuration;
    let name = backup.name_any();
    let Some(recorded) = backup
        .status
        .as_ref()
        .and_then(|s| s.configuration_sha256.clone())
    else {
        return Ok(Err(format!(
            "PostgresBackup {name} records no Kubernetes configuration"
        )));
    };
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.client.clone(), namespace);
    let map_name = configuration::config_map_name(backup);
    let Some(map) = get_opt(&maps, &map_name).await? else {
        return Ok(Err(format!("ConfigMap {map_name} is gone")));
    };
    let owned = map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == backup.metadata.uid.as_ref() && o.controller == Some(true));
    if !owned {
        return Ok(Err(format!(
            "ConfigMap {map_name} is not the one PostgresBackup {name} made"
        )));
    }
    let document = map
        .data
        .as_ref()
        .and_then(|d| d.get(configuration::DOCUMENT_KEY))
        .cloned()
        .unwrap_or_default();
    Ok(
        configuration::stored_stateful_set(&document, &recorded, namespace)
            .map_err(|why| format!("the configuration stored with PostgresBackup {name}: {why}")),
    )
}

/// The source object; for a schedule of volume snapshots, the snapshot picked from it (the
/// one this restore picked before, once recorded) or why none can be.
pub(super) async fn observe_source(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<(SourceObject, Option<String>), Error> {
    let client = &ctx.client;
    let source = &restore.spec.source;
    if let (Some(name), None) = (&source.backup_schedule, &restore.spec.logical) {
        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
        let schedule = get_opt(&api, name).await?;
        if let Some(schedule) = schedule
            .as_ref()
            .filter(|s| s.spec.method == crate::api::ScheduleMethod::VolumeSnapshot)
        {
            return picked_snapshot(restore, ctx, namespace, schedule).await;
        }
        return Ok((SourceObject::Schedule(schedule.map(Box::new)), None));
    }
    Ok((observe_named_source(restore, ctx, namespace).await?, None))
}

/// The snapshot of a schedule of volume snapshots this restore works from.
pub(super) async fn picked_snapshot(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    schedule: &BackupSchedule,
) -> Result<(SourceObject, Option<String>), Error> {
    let api: Api<VolumeSnapshotBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let recorded = restore
        .status
        .as_ref()
        .and_then(|s| s.volume_snapshot_backup.clone());
    if let Some(name) = recorded {
        let found = get_opt(&api, &name).await?;
        let gone = found.is_none().then(|| {
            format!(
                "VolumeSnapshotBackup {name}, picked from BackupSchedule {}, is gone",
                schedule.name_any()
            )
        });
        return Ok((SourceObject::Snapshot(found.map(Box::new)), gone));
    }
    let selector = crate::k8s::schedule_selector(&schedule.name_any());
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(format!(
            "list the VolumeSnapshotBackups of schedule {} in {namespace}",
            schedule.name_any()
        )))?;
    Ok(
        match snapshot_source::pick_snapshot(
            &schedule.name_any(),
            &listed.items,
            &restore.spec.recovery_target,
        ) {
            Ok(picked) => (SourceObject::Snapshot(Some(Box::new(picked.clone()))), None),
            Err(why) => (SourceObject::Snapshot(None), Some(why)),
        },
    )
}

/// The source `spec.source` names (a backup, a logical schedule's newest backup, a
/// schedule of physical backups, a VolumeSnapshotBackup).
pub(super) async fn observe_named_source(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
) -> Result<SourceObject, Error> {
    let client = &ctx.client;
    let source = &restore.spec.source;
    Ok(if let Some(name) = &source.postgres_backup {
        let api: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
        SourceObject::Backup(get_opt(&api, name).await?.map(Box::new))
    } else if let (Some(name), Some(_)) = (&source.backup_schedule, &restore.spec.logical) {
        SourceObject::Backup(
            newest_logical_backup(ctx, namespace, name)
                .await?
                .map(Box::new),
        )
    } else if let Some(name) = &source.backup_schedule {
        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
        SourceObject::Schedule(get_opt(&api, name).await?.map(Box::new))
    } else {
        let name = source.volume_snapshot_backup.clone().unwrap_or_default();
        let api: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
        SourceObject::Snapshot(get_opt(&api, &name).await?.map(Box::new))
    })
}

/// The newest completed logical backup of schedule `schedule` (a logical restore's
/// source).
pub(super) async fn newest_logical_backup(
    ctx: &Context,
    namespace: &str,
    schedule: &str,
) -> Result<Option<PostgresBackup>, Error> {
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = crate::k8s::schedule_selector(schedule);
    let backups = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(format!(
            "list the PostgresBackups of schedule {schedule} in {namespace}"
        )))?;
    Ok(backups
        .items
        .into_iter()
        .filter(|b| b.spec.method == crate::api::BackupMethod::Logical)
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let completed = status.completed_at.as_ref()?.0;
            (status.phase == Some(crate::api::BackupPhase::Completed))
                .then(|| (completed, b.clone()))
        })
        .max_by_key(|(completed, _)| *completed)
        .map(|(_, b)| b))
}
