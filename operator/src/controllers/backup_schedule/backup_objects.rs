//! What a schedule does to its backup objects: deletes those retention drops (with their
//! data) and shows on each PostgresBackup the moments it restores to.

use kube::{
    Api,
    api::{Patch, PatchParams},
};

use super::backups::{BackupKind, ScheduledBackup};
use crate::{
    api::{PostgresBackup, RecoveryWindow, VolumeSnapshotBackup},
    controllers::{Context, Error},
    k8s::{ANNOTATION_DELETE_DATA, delete_if_exists},
};

/// The field manager of the windows a schedule writes on its backups' status: the backup
/// controller's own server-side applies leave them alone.
const WINDOW_MANAGER: &str = "pgbackup-schedule";

/// How far each completed physical backup reaches (Unix time of its window's end): the
/// window being written, else the one its status shows.
pub(super) fn reach(
    backups: &[ScheduledBackup],
    writing: &[(String, RecoveryWindow)],
) -> Vec<(String, f64)> {
    backups
        .iter()
        .filter(|b| b.kind == BackupKind::Physical && !b.deleting)
        .filter_map(|b| {
            let window = writing
                .iter()
                .find(|(name, _)| *name == b.name)
                .map(|(_, w)| w)
                .or(b.window.as_ref())?;
            let until = window.last_recoverability_point.as_ref()?;
            Some((b.name.clone(), until.0.as_millisecond() as f64 / 1000.0))
        })
        .collect()
}

/// Writes each backup's recovery window (`status.recoveryWindow`).
pub(super) async fn show_windows(
    ctx: &Context,
    namespace: &str,
    windows: &[(String, RecoveryWindow)],
) -> Result<(), Error> {
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(WINDOW_MANAGER.into()),
        ..PatchParams::default()
    };
    for (name, window) in windows {
        let patch = serde_json::json!({"status": {"recoveryWindow": window}});
        match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Deleted in between: nothing to show.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    what: format!("show the recovery window on PostgresBackup {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Deletes the backup objects retention dropped, marked so that their data goes too.
pub(super) async fn expire(
    ctx: &Context,
    namespace: &str,
    names: &[String],
    backups: &[ScheduledBackup],
) -> Result<(), Error> {
    for name in names {
        for backup in backups.iter().filter(|b| b.name == *name) {
            match backup.kind {
                BackupKind::VolumeSnapshot => {
                    let api: Api<VolumeSnapshotBackup> =
                        Api::namespaced(ctx.client.clone(), namespace);
                    mark_and_delete(&api, name).await?;
                }
                _ => {
                    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
                    mark_and_delete(&api, name).await?;
                }
            }
            tracing::info!(namespace, backup = %name, "retention deleted backup object {name}");
        }
    }
    Ok(())
}

async fn mark_and_delete<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mark = serde_json::json!({"metadata": {"annotations": {ANNOTATION_DELETE_DATA: "true"}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&mark))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Kube {
                what: format!("mark {} {name} for deletion", K::kind(&())),
                source,
            });
        }
    }
    delete_if_exists(api, name).await?;
    Ok(())
}
