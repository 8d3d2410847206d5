//! What a BackupSchedule reconcile reads (reads only): references, CronJobs and their
//! newest Jobs, the archiver and its `/status`, the schedule's backup objects, the other
//! schedules.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::Pod,
};
use kube::{Api, ResourceExt, api::ListParams};

use super::{backups, build, copies, plan};
use crate::controllers::{Context, Error, references};
use crate::{
    agent::wal_archive::ArchiverReport,
    api::{BackupSchedule, PostgresBackup, VolumeSnapshotBackup},
    k8s::{LABEL_COMPONENT, LABEL_INSTANCE, get_opt, schedule_selector},
};

pub(super) async fn observe(
    schedule: &BackupSchedule,
    ctx: &Context,
    namespace: &str,
) -> Result<plan::Observed, Error> {
    let template = &schedule.spec.template;
    let client = &ctx.client;
    let list = |what: &str| {
        let what = what.to_string();
        move |source| Error::Kube { what, source }
    };
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), namespace);
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    let snapshot_backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let by_schedule = ListParams::default().labels(&schedule_selector(&schedule.name_any()));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let archiver = match get_opt(&deployments, &build::archiver_name(schedule)).await? {
        Some(_) if build::archiving(schedule) => {
            Some(archiver_report(ctx, namespace, schedule).await)
        }
        _ => None,
    };
    let mut references = references::fetch(
        client,
        namespace,
        &template.target,
        template.repository.as_ref(),
    )
    .await?;
    let secrets = Api::namespaced(client.clone(), namespace);
    for (name, _, _) in copies::secret_keys_needed(schedule) {
        references::fetch_secret_keys(&secrets, &name, &mut references.secrets).await?;
    }
    let mut copy_jobs = std::collections::BTreeMap::new();
    for copy in &schedule.spec.copies {
        if let Some(run) =
            newest_job(ctx, namespace, schedule, &copies::component(&copy.name)).await?
        {
            copy_jobs.insert(copy.name.clone(), (run.name, run.state));
        }
    }
    Ok(plan::Observed {
        references,
        copy_jobs,
        cron_job: get_opt(&cron_jobs, &build::cron_job_name(schedule)).await?,
        archiver,
        backups: backups
            .list(&by_schedule)
            .await
            .map_err(list("list the schedule's PostgresBackups"))?
            .items
            .iter()
            .map(backups::ScheduledBackup::from)
            .chain(
                snapshot_backups
                    .list(&by_schedule)
                    .await
                    .map_err(list("list the schedule's VolumeSnapshotBackups"))?
                    .items
                    .iter()
                    .map(backups::ScheduledBackup::from),
            )
            .collect(),
        siblings: schedules
            .list(&ListParams::default())
            .await
            .map_err(list("list BackupSchedules"))?
            .items,
        verify_job: match schedule.spec.verify {
            Some(_) => newest_job(ctx, namespace, schedule, "verify")
                .await?
                .map(|run| (run.name, run.state)),
            None => None,
        },
        trigger_job: newest_job(ctx, namespace, schedule, "trigger").await?,
    })
}

/// The newest Job one of the schedule's CronJobs (`component`: `trigger`, `verify` or a
/// copy's) started, with its state.
async fn newest_job(
    ctx: &Context,
    namespace: &str,
    schedule: &BackupSchedule,
    component: &str,
) -> Result<Option<plan::JobRun>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!(
        "{LABEL_COMPONENT}={component},{}",
        schedule_selector(&schedule.name_any())
    );
    let newest = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Kube {
            what: format!("list the schedule's {component} Jobs"),
            source,
        })?
        .items
        .into_iter()
        .max_by_key(|job| job.metadata.creation_timestamp.clone().map(|t| t.0));
    let Some(job) = newest else {
        return Ok(None);
    };
    let name = job.name_any();
    let created = job.metadata.creation_timestamp.map(|t| t.0);
    let state = crate::controllers::jobs::observe_job(ctx, namespace, &name).await?;
    Ok(state.map(|state| plan::JobRun {
        name,
        state,
        created,
    }))
}

/// Asks the archiver pod for its `/status`.
async fn archiver_report(
    ctx: &Context,
    namespace: &str,
    schedule: &BackupSchedule,
) -> Result<ArchiverReport, String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!(
        "{LABEL_COMPONENT}=wal-archiver,{LABEL_INSTANCE}={}",
        crate::k8s::labels("", &schedule.name_any())[LABEL_INSTANCE]
    );
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("cannot list the archiver's pods: {e}"))?;
    let ip = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| {
            let status = p.status.as_ref()?;
            (status.phase.as_deref() == Some("Running"))
                .then(|| status.pod_ip.clone())
                .flatten()
        })
        .ok_or_else(|| "no archiver pod is running yet".to_string())?;
    let address = if ip.contains(':') {
        format!("[{ip}]:{}", build::ARCHIVER_PORT)
    } else {
        format!("{ip}:{}", build::ARCHIVER_PORT)
    };
    let (code, body) = crate::http::get(&address, "/status", Duration::from_secs(3))
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    if code != 200 {
        return Err(format!("{address}/status answered {code}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{address}/status: {e}"))
}
