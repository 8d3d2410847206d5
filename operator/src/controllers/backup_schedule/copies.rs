//! A schedule's second copies (`spec.copies`, pure): their checks, the CronJob that runs
//! `pgbackup copy` for each, and what their newest Jobs mean for `status.copies` and the
//! `Copied` condition.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{batch::v1::CronJob, core::v1::EnvVar},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

use super::{build, retention::policy_of};
use crate::{
    api::{
        BackupCopy, BackupSchedule, BackupScheduleStatus, CONDITION_COPIED, CopyStatus, Repository,
        S3Repository, STATUS_FALSE, STATUS_TRUE, STATUS_UNKNOWN, ScheduleMethod, set_condition,
    },
    controllers::{Note, Settings, job_state::JobState, references::Problem},
    k8s::{MAX_CRON_JOB_NAME, agent_pod, child_name_within},
};

/// The `app.kubernetes.io/component` of a copy's CronJob and Jobs.
pub fn component(copy: &str) -> String {
    format!("copy-{copy}")
}

/// Name of the CronJob of the copy `copy`.
pub fn cron_job_name(schedule: &BackupSchedule, copy: &str) -> String {
    child_name_within(&schedule.name_any(), &component(copy), MAX_CRON_JOB_NAME)
}

/// Checks the copies without the cluster: one name each, a valid schedule and retention,
/// a repository to copy from, and one pod identity for both repositories.
pub(super) fn check(schedule: &BackupSchedule) -> Result<(), Problem> {
    let spec = &schedule.spec;
    if spec.copies.is_empty() {
        return Ok(());
    }
    let invalid = |message: String| Problem::new("InvalidSpec", message);
    let Some(repository) = spec.template.repository.as_ref() else {
        return Err(invalid(
            "copies need logical or physical backups in template.repository".into(),
        ));
    };
    if spec.method == ScheduleMethod::VolumeSnapshot {
        return Err(invalid(
            "copies need logical or physical backups in template.repository; a volumeSnapshot schedule's snapshots stay in the cluster".into(),
        ));
    }
    let source_identity = repository
        .s3
        .as_ref()
        .and_then(|s3| s3.service_account_name.as_deref());
    for (i, copy) in spec.copies.iter().enumerate() {
        let field = format!("spec.copies[{i}]");
        if spec.copies[..i].iter().any(|c| c.name == copy.name) {
            return Err(invalid(format!(
                "{field}.name: {:?} names two copies",
                copy.name
            )));
        }
        super::cron::check_schedule(&copy.schedule)
            .map_err(|why| Problem::new("InvalidSchedule", format!("{field}.schedule: {why}")))?;
        if let Some(retention) = &copy.retention {
            policy_of(retention, &format!("{field}.retention"))?;
        }
        if let Some(account) = copy.s3.service_account_name.as_deref()
            && Some(account) != source_identity
        {
            return Err(invalid(format!(
                "{field}.s3.serviceAccountName: one pod reads the template's repository and writes the copy, so it runs under one ServiceAccount: name the template repository's ({}) or give the copy a credentialsSecret",
                source_identity.unwrap_or("none")
            )));
        }
        if let Some(s3) = &repository.s3
            && s3.bucket == copy.s3.bucket
            && s3.prefix.trim_matches('/') == copy.s3.prefix.trim_matches('/')
            && s3.endpoint == copy.s3.endpoint
        {
            return Err(invalid(format!(
                "{field}.s3 is the template's repository: a copy goes to another bucket or prefix"
            )));
        }
    }
    Ok(())
}

/// Every `(secret, key, field)` the copies refer to.
pub fn secret_keys_needed(schedule: &BackupSchedule) -> Vec<(String, String, String)> {
    let mut needed = Vec::new();
    for (i, copy) in schedule.spec.copies.iter().enumerate() {
        let Some(secret) = &copy.s3.credentials_secret else {
            continue;
        };
        let field = |key: &str| format!("spec.copies[{i}].s3.credentialsSecret.{key}");
        needed.push((
            secret.name.clone(),
            secret.access_key_id_key.clone(),
            field("accessKeyIdKey"),
        ));
        needed.push((
            secret.name.clone(),
            secret.secret_access_key_key.clone(),
            field("secretAccessKeyKey"),
        ));
        if let Some(key) = &secret.session_token_key {
            needed.push((secret.name.clone(), key.clone(), field("sessionTokenKey")));
        }
    }
    needed
}

/// The CronJob of each copy: `pgbackup copy` from the template's repository into the
/// copy's bucket, one run at a time, with the copy's retention.
pub fn cron_jobs(
    schedule: &BackupSchedule,
    settings: &Settings,
    repository: &Repository,
    major: u32,
) -> Vec<CronJob> {
    schedule
        .spec
        .copies
        .iter()
        .map(|copy| cron_job(schedule, copy, settings, repository, major))
        .collect()
}

fn cron_job(
    schedule: &BackupSchedule,
    copy: &BackupCopy,
    settings: &Settings,
    repository: &Repository,
    major: u32,
) -> CronJob {
    let namespace = schedule.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &schedule.spec.template.target);
    let source = agent_pod::repository_wiring(repository, &server);
    let (env, to_args) = destination(&copy.s3);
    let mut args = vec!["copy".to_string()];
    args.extend(to_args);
    args.extend(retention_args(copy));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut container = agent_pod::repository_container(
        "copy",
        settings.agent.image_for(major),
        &args,
        &source,
        env,
    );
    if container.identity.is_none() {
        container.identity = copy.s3.service_account_name.clone();
    }
    let pod = agent_pod::placed(
        agent_pod::agent_pod_spec(&settings.agent, container, "Never", None),
        &schedule.spec.template.job,
    );
    let runs = build::Runs {
        cron: &copy.schedule,
        concurrency_policy: "Forbid",
        backoff_limit: 2,
        active_deadline_seconds: None,
    };
    let name = cron_job_name(schedule, &copy.name);
    build::scheduled(
        schedule,
        build::meta(schedule, name, &component(&copy.name)),
        runs,
        pod,
    )
}

/// The copy's bucket as `pgbackup copy` takes it: environment (its own keys) and options.
fn destination(s3: &S3Repository) -> (Vec<EnvVar>, Vec<String>) {
    let mut env = vec![agent_pod::env("PGBACKUP_COPY_TO", agent_pod::s3_url(s3))];
    let mut args = Vec::new();
    if let Some(endpoint) = &s3.endpoint {
        env.push(agent_pod::env("PGBACKUP_COPY_S3_ENDPOINT", endpoint));
    }
    if let Some(region) = &s3.region {
        env.push(agent_pod::env("PGBACKUP_COPY_S3_REGION", region));
    }
    if s3.force_path_style {
        env.push(agent_pod::env("PGBACKUP_COPY_S3_FORCE_PATH_STYLE", "true"));
    }
    if let Some(secret) = &s3.credentials_secret {
        let from = |name: &str, key: &str| agent_pod::env_from_secret(name, &secret.name, key);
        env.push(from(
            "PGBACKUP_COPY_AWS_ACCESS_KEY_ID",
            &secret.access_key_id_key,
        ));
        env.push(from(
            "PGBACKUP_COPY_AWS_SECRET_ACCESS_KEY",
            &secret.secret_access_key_key,
        ));
        if let Some(key) = &secret.session_token_key {
            env.push(from("PGBACKUP_COPY_AWS_SESSION_TOKEN", key));
        }
    } else if !s3.node_credentials {
        // The node's role is every pod's on the node: not a tenant's to use.
        env.push(agent_pod::env("AWS_EC2_METADATA_DISABLED", "true"));
    }
    if let Some(sse) = &s3.server_side_encryption {
        let algorithm = serde_json::to_value(sse.algorithm)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        args.extend(["--to-s3-sse".into(), algorithm]);
        if let Some(key) = &sse.kms_key_id {
            args.extend(["--to-s3-sse-kms-key-id".into(), key.clone()]);
        }
    }
    if let Some(class) = &s3.storage_class {
        args.extend(["--to-s3-storage-class".into(), class.clone()]);
    }
    (env, args)
}

/// The copy's keep rules as `pgbackup copy` options.
fn retention_args(copy: &BackupCopy) -> Vec<String> {
    let Some(retention) = &copy.retention else {
        return Vec::new();
    };
    let mut args = Vec::new();
    for (flag, value) in [
        ("--keep-last", retention.keep_last),
        ("--keep-daily", retention.keep_daily),
        ("--keep-weekly", retention.keep_weekly),
        ("--keep-monthly", retention.keep_monthly),
    ] {
        if let Some(n) = value {
            args.extend([flag.to_string(), n.to_string()]);
        }
    }
    if let Some(age) = &retention.max_age {
        args.extend(["--max-age".to_string(), age.clone()]);
    }
    args
}

/// Records each copy's newest Job (`jobs`: by copy name, its name and state) in
/// `status.copies` and the `Copied` condition, with an Event per finished run.
pub(super) fn copy_status(
    schedule: &BackupSchedule,
    jobs: &BTreeMap<String, (String, JobState)>,
    status: &mut BackupScheduleStatus,
    now: &Time,
    events: &mut Vec<Note>,
) {
    let copies = &schedule.spec.copies;
    if copies.is_empty() {
        status.conditions.retain(|c| c.type_ != CONDITION_COPIED);
        status.copies.clear();
        return;
    }
    let old = std::mem::take(&mut status.copies);
    for copy in copies {
        let mut entry = old
            .iter()
            .find(|c| c.name == copy.name)
            .cloned()
            .unwrap_or_else(|| CopyStatus {
                name: copy.name.clone(),
                ..CopyStatus::default()
            });
        entry.cron_job_name = Some(cron_job_name(schedule, &copy.name));
        // A run is recorded once it finishes; until then the one before it stands.
        if let Some((name, state)) = jobs.get(&copy.name)
            && entry.job_name.as_deref() != Some(name.as_str())
        {
            match state {
                JobState::Active { .. } => {}
                JobState::Succeeded {
                    finished, result, ..
                } => {
                    let said = result
                        .as_deref()
                        .and_then(|r| r.lines().rev().find(|l| !l.trim().is_empty()))
                        .unwrap_or("copied")
                        .to_string();
                    entry.job_name = Some(name.clone());
                    entry.succeeded = Some(true);
                    entry.last_copy_time = finished.clone().or_else(|| Some(now.clone()));
                    entry.message = Some(said.clone());
                    events.push(Note::normal(
                        "Copied",
                        format!("copy {}: {said}", copy.name),
                    ));
                }
                JobState::Failed {
                    reason, message, ..
                } => {
                    entry.job_name = Some(name.clone());
                    entry.succeeded = Some(false);
                    entry.message = Some(format!("{reason}: {message}"));
                    events.push(Note::warning(
                        "CopyFailed",
                        format!(
                            "copy {} (Job {name}) failed: {reason}: {message}",
                            copy.name
                        ),
                    ));
                }
            }
        }
        status.copies.push(entry);
    }
    let failed: Vec<String> = status
        .copies
        .iter()
        .filter(|c| c.succeeded == Some(false))
        .map(|c| format!("{} ({})", c.name, c.message.as_deref().unwrap_or("failed")))
        .collect();
    let waiting: Vec<&str> = status
        .copies
        .iter()
        .filter(|c| c.succeeded.is_none())
        .map(|c| c.name.as_str())
        .collect();
    let (value, reason, message) = if !failed.is_empty() {
        (
            STATUS_FALSE,
            "CopyFailed",
            format!("the newest run of copy {} failed", failed.join(", ")),
        )
    } else if !waiting.is_empty() {
        (
            STATUS_UNKNOWN,
            "NotCopiedYet",
            format!("copy {} has not run yet", waiting.join(", ")),
        )
    } else {
        (
            STATUS_TRUE,
            "Copied",
            format!(
                "the newest run of every copy succeeded: {}",
                status
                    .copies
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    set_condition(
        &mut status.conditions,
        CONDITION_COPIED,
        value,
        reason,
        &message,
        schedule.metadata.generation,
        now.clone(),
    );
}

#[cfg(test)]
#[path = "copies_tests.rs"]
mod tests;
