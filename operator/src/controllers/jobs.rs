//! Reading the Jobs the operator started: the Job, its pods and, for a Job whose pod never
//! runs, the API server's refusal; such a Job is stopped here ([`job_start`]).

use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Event, Pod},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};

use super::{
    Context, Error,
    job_start::{self, ANNOTATION_STOPPED, NotStarting},
    job_state::{JobState, job_state, own_pods},
};
use crate::k8s::{LABEL_JOB_NAME, get_opt};

/// Reads a Job and its pods; `None` when the Job does not exist. A Job whose pod has not
/// run within the pod start timeout is stopped first, and reads as failed with the cause.
pub(crate) async fn observe_job(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<JobState>, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(mut job) = get_opt(&jobs, name).await? else {
        return Ok(None);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB_NAME}={name}")))
        .await
        .map_err(|source| Error::Kube {
            what: format!("list pods of Job {name}"),
            source,
        })?
        .items;
    let timeout = ctx.settings.pod_start_timeout;
    if job_start::recorded(&job).is_none()
        && let Some(cause) =
            job_start::not_starting(&job, &own_pods(&job, &pods), Timestamp::now(), timeout)
    {
        let refusal = match cause {
            NotStarting::NoPod => creation_refusal(ctx, namespace, &job).await?,
            NotStarting::Unscheduled(_) => None,
        };
        let stopped = job_start::stopped(name, &cause, timeout, refusal.as_deref());
        tracing::warn!(namespace, job = name, reason = %stopped.reason, "{}", stopped.message);
        job = stop(&jobs, name, &stopped).await?;
    }
    Ok(Some(job_state(&job, &pods)))
}

/// The newest `FailedCreate` message of `job`: why the API server refused its pods.
async fn creation_refusal(
    ctx: &Context,
    namespace: &str,
    job: &Job,
) -> Result<Option<String>, Error> {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return Ok(None);
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), namespace);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map_err(|source| Error::Kube {
            what: format!(
                "list the events of Job {namespace}/{}",
                job.metadata.name.as_deref().unwrap_or_default()
            ),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .or(e.first_timestamp.as_ref())
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
        })
        .and_then(|e| e.message))
}

/// Records why the Job is stopped and gives it a deadline that has passed: the Job
/// controller fails it (so a CronJob moves on) and makes no pod later.
async fn stop(jobs: &Api<Job>, name: &str, stopped: &job_start::Stopped) -> Result<Job, Error> {
    let cause = serde_json::to_string(stopped).unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"annotations": {ANNOTATION_STOPPED: cause}},
        "spec": {"activeDeadlineSeconds": 1},
    });
    jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Kube {
            what: format!("stop Job {name}"),
            source,
        })
}
