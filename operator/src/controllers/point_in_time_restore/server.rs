//! What the database servers say: the target's cluster identity, and the restored server's state while a restore verifies.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, api::ListParams};

use super::plan::ServerState;

use crate::controllers::{Context, database};
use crate::{
    api::{PointInTimeRestore, PostgresBackup, RestoreMode},
    postgres::ServerInfo,
};

use super::build;

/// The system identifier of the cluster the target StatefulSet runs: its database's
/// answer, or else the newest completed backup of it that records one. Only what is bound
/// to the StatefulSet's own pods counts: neither a `target.host` of the restore nor
/// backups that named a host of their own.
pub(super) async fn target_cluster(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<String, String> {
    let target = &restore.spec.target;
    let asked = match target.host.as_deref().filter(|h| !h.is_empty()) {
        Some(host) => Err(format!(
            "target.host {host} is not the StatefulSet's own pod"
        )),
        None => ask_cluster(ctx, namespace, target, stateful_set).await,
    };
    let why = match asked {
        Ok(id) => return Ok(id),
        Err(why) => why,
    };
    let backups: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = backups
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list PostgresBackups: {e}"))?;
    let recorded = listed
        .items
        .iter()
        .filter(|b| {
            b.spec.target.stateful_set == target.stateful_set
                && b.spec.target.host.as_deref().is_none_or(str::is_empty)
        })
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            (status.phase == Some(crate::api::BackupPhase::Completed)).then_some((
                status.completed_at.clone()?,
                status.system_identifier.clone()?,
            ))
        })
        .max_by(|a, b| a.0.0.cmp(&b.0.0));
    recorded.map(|(_, id)| id).ok_or(why)
}

/// The system identifier the target StatefulSet's database gives (ordinal 0).
pub(super) async fn ask_cluster(
    ctx: &Context,
    namespace: &str,
    target: &crate::api::DatabaseTarget,
    stateful_set: Option<&StatefulSet>,
) -> Result<String, String> {
    let service = stateful_set
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.service_name.as_deref());
    let pod = format!("{}-0", target.stateful_set);
    let host = database::operator_host(target, &pod, service, namespace)
        .ok_or_else(|| "the StatefulSet names no serviceName".to_string())?;
    let connection = database::connection(ctx, namespace, target, host)
        .await
        .map_err(|e| e.to_string())?;
    let query = async {
        let client = connection
            .connect(None)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        let server = ServerInfo::query(&client)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        server
            .system_identifier
            .ok_or_else(|| "its role may not read pg_control_system()".to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// Asks the restored server whether it is up and out of recovery.
pub(super) async fn verify(
    restore: &PointInTimeRestore,
    ctx: &Context,
    namespace: &str,
    stateful_set: Option<&StatefulSet>,
) -> Result<ServerState, String> {
    let target = &restore.spec.target;
    let restored = build::restored_stateful_set(restore);
    let host = match restore.spec.mode {
        RestoreMode::InPlace => database::operator_host(
            target,
            &format!("{restored}-0"),
            stateful_set
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.service_name.as_deref()),
            namespace,
        ),
        RestoreMode::Clone => Some(format!("{restored}-0.{restored}.{namespace}.svc")),
    }
    .ok_or_else(|| "the StatefulSet names no serviceName: set target.host".to_string())?;
    let connection = database::connection(ctx, namespace, target, host)
        .await
        .map_err(|e| e.to_string())?;
    let query = async {
        let client = match connection.connect(None).await {
            Ok(client) => client,
            // Up, but the restored roles have the passwords of the target time.
            Err(crate::postgres::ConnectionError::Authentication { reason, .. }) => {
                return Ok(ServerState {
                    in_recovery: false,
                    lsn: None,
                    timeline: None,
                    system_identifier: None,
                    note: Some(format!(
                        "the restored server answers but refuses today's login ({reason}): its roles have the passwords of the target time; recovery was checked by the restore Job"
                    )),
                });
            }
            Err(e) => return Err(crate::agent::error_chain(&e)),
        };
        let server = ServerInfo::query(&client)
            .await
            .map_err(|e| crate::agent::error_chain(&e))?;
        let (lsn, timeline) = if server.in_recovery {
            (None, None)
        } else {
            let row = client
                .query_one(
                    "SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())::bigint",
                    &[],
                )
                .await
                .map_err(|e| crate::agent::error_chain(&e))?;
            (Some(row.get::<_, String>(0)), Some(row.get::<_, i64>(1)))
        };
        Ok(ServerState {
            in_recovery: server.in_recovery,
            lsn,
            timeline,
            system_identifier: server.system_identifier,
            note: None,
        })
    };
    tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
}
