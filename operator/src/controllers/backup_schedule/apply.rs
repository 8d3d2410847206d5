//! Applying the objects a BackupSchedule owns (writes only): the trigger's RBAC, the
//! CronJobs (removing those of copies no longer listed) and the archiver.

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::CronJob,
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use kube::{Api, ResourceExt, api::ListParams};

use super::{build, plan};
use crate::controllers::Context;
use crate::{
    api::BackupSchedule,
    k8s::{ApplyError, LABEL_COMPONENT, apply, delete_if_exists, schedule_selector},
};

pub(super) async fn apply_owned(
    ctx: &Context,
    namespace: &str,
    owned: &plan::Owned,
    schedule: &BackupSchedule,
) -> Result<(), ApplyError> {
    let client = &ctx.client;
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), namespace),
        &owned.account,
    )
    .await?;
    apply(
        &Api::<Role>::namespaced(client.clone(), namespace),
        &owned.role,
    )
    .await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), namespace),
        &owned.binding,
    )
    .await?;
    apply(
        &Api::<CronJob>::namespaced(client.clone(), namespace),
        &owned.cron_job,
    )
    .await?;
    if let Some(archiver) = &owned.archiver {
        apply(
            &Api::<Deployment>::namespaced(client.clone(), namespace),
            archiver,
        )
        .await?;
    }
    let cron_jobs = Api::<CronJob>::namespaced(client.clone(), namespace);
    match &owned.verify_cron_job {
        Some(verify) => {
            apply(&cron_jobs, verify).await?;
        }
        None => delete_if_exists(&cron_jobs, &build::verify_cron_job_name(schedule)).await?,
    }
    for copy in &owned.copy_cron_jobs {
        apply(&cron_jobs, copy).await?;
    }
    // The CronJobs of copies no longer listed go (their copies stay where they are).
    let wanted: Vec<String> = owned
        .copy_cron_jobs
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let selector = schedule_selector(&schedule.name_any());
    let listed = cron_jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ApplyError::Api {
            verb: "list",
            kind: "CronJob".into(),
            name: selector.clone(),
            source,
        })?;
    for cron_job in listed.items {
        let is_copy = cron_job
            .labels()
            .get(LABEL_COMPONENT)
            .is_some_and(|c| c.starts_with("copy-"))
            && cron_job
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == schedule.metadata.uid.as_ref());
        let name = cron_job.name_any();
        if is_copy && !wanted.contains(&name) {
            delete_if_exists(&cron_jobs, &name).await?;
        }
    }
    tracing::debug!(namespace, name = %schedule.name_any(), "owned objects applied");
    Ok(())
}
