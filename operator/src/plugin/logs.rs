//! `kubectl pgbackup logs KIND/NAME`: the log of the newest Job the operator made for an
//! object (found by its owner reference), or of a schedule's WAL archiver.

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, LogParams},
};

use super::{api_error, get};
use crate::{
    agent::AgentError,
    api::{BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    k8s::LABEL_JOB_NAME,
};

/// The log of what works for `object` (`KIND/NAME`), after a line naming the pod.
pub(super) async fn of(
    client: &Client,
    namespace: &str,
    object: &str,
) -> Result<String, AgentError> {
    let (kind, name) = object.split_once('/').ok_or_else(|| {
        AgentError::Invalid(format!(
            "{object:?}: say KIND/NAME, e.g. postgresbackup/nightly-20261205030000"
        ))
    })?;
    let (pods_selector, what) = match kind.to_ascii_lowercase().as_str() {
        "postgresbackup" | "postgresbackups" | "backup" => {
            let o: PostgresBackup = get(
                &Api::namespaced(client.clone(), namespace),
                name,
                "postgresbackup",
            )
            .await?;
            job_pods(client, namespace, uid(&o)).await?
        }
        "pointintimerestore" | "pointintimerestores" | "restore" => {
            let o: PointInTimeRestore = get(
                &Api::namespaced(client.clone(), namespace),
                name,
                "pointintimerestore",
            )
            .await?;
            job_pods(client, namespace, uid(&o)).await?
        }
        "volumesnapshotbackup" | "volumesnapshotbackups" | "snapshot" => {
            let o: VolumeSnapshotBackup = get(
                &Api::namespaced(client.clone(), namespace),
                name,
                "volumesnapshotbackup",
            )
            .await?;
            job_pods(client, namespace, uid(&o)).await?
        }
        "backupschedule" | "backupschedules" | "schedule" => {
            let o: BackupSchedule = get(
                &Api::namespaced(client.clone(), namespace),
                name,
                "backupschedule",
            )
            .await?;
            archiver_pods(client, namespace, &o).await?
        }
        other => {
            return Err(AgentError::Invalid(format!(
                "{other:?}: logs are kept for postgresbackup, pointintimerestore, volumesnapshotbackup and backupschedule (its WAL archiver)"
            )));
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut found = pods
        .list(&ListParams::default().labels(&pods_selector))
        .await
        .map_err(api_error(format!("list the pods of {what}")))?
        .items;
    found.sort_by_key(|p| p.creation_timestamp().map(|t| t.0));
    let pod = found
        .pop()
        .ok_or_else(|| AgentError::Invalid(format!("{what} has no pod (any more)")))?;
    let log = pods
        .logs(&pod.name_any(), &LogParams::default())
        .await
        .map_err(api_error(format!("read the log of pod/{}", pod.name_any())))?;
    eprintln!("==> {what}, pod/{} <==", pod.name_any());
    Ok(log)
}

fn uid<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

/// The label selector of the pods of the newest Job `owner` owns, and the Job's name.
async fn job_pods(
    client: &Client,
    namespace: &str,
    owner: String,
) -> Result<(String, String), AgentError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let mut owned: Vec<Job> = jobs
        .list(&ListParams::default())
        .await
        .map_err(api_error(format!("list the jobs of {namespace}")))?
        .items
        .into_iter()
        .filter(|j| j.owner_references().iter().any(|o| o.uid == owner))
        .collect();
    owned.sort_by_key(|j| j.creation_timestamp().map(|t| t.0));
    let job = owned
        .pop()
        .ok_or_else(|| AgentError::Invalid("no Job works for it (any more)".into()))?;
    Ok((
        format!("{LABEL_JOB_NAME}={}", job.name_any()),
        format!("job/{}", job.name_any()),
    ))
}

/// The label selector of a schedule's WAL archiver pods.
async fn archiver_pods(
    client: &Client,
    namespace: &str,
    schedule: &BackupSchedule,
) -> Result<(String, String), AgentError> {
    let deployment = schedule
        .status
        .as_ref()
        .and_then(|s| s.wal_archiving.as_ref())
        .and_then(|w| w.deployment_name.clone())
        .ok_or_else(|| {
            AgentError::Invalid(format!(
                "backupschedule/{} runs no WAL archiver; its backups' logs are under postgresbackup/NAME",
                schedule.name_any()
            ))
        })?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let found = get(&deployments, &deployment, "deployment").await?;
    let labels = found
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default();
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok((selector.join(","), format!("deployment/{deployment}")))
}
