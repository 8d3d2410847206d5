//! Tests of a schedule's copies into other repositories: their CronJobs and the refusals.

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::Container, apimachinery::pkg::apis::meta::v1::Time};

use super::*;
use crate::{
    api::find_condition,
    controllers::backup_schedule::plan::{Observed, plan},
    k8s::fixtures::{references, schedule},
};

fn now() -> Timestamp {
    "2026-11-21T10:30:00Z".parse().expect("time")
}

/// The fixture schedule with one copy into `dr-bucket`, plus `extra` fields of the copy.
fn with_copy(extra: serde_json::Value) -> BackupSchedule {
    let mut schedule = schedule();
    let mut copy = serde_json::json!({
        "name": "dr",
        "schedule": "30 4 * * *",
        "s3": {"bucket": "dr-bucket", "prefix": "pg", "region": "eu-west-1",
               "credentialsSecret": {"name": "dr-keys"},
               "storageClass": "STANDARD_IA"},
        "retention": {"keepLast": 7, "maxAge": "30d"},
    });
    if let (Some(copy), Some(extra)) = (copy.as_object_mut(), extra.as_object()) {
        copy.extend(extra.clone());
    }
    schedule.spec.copies = vec![serde_json::from_value(copy).expect("copy")];
    schedule
}

fn observed_with_keys() -> Observed {
    let mut references = references("postgres:16.4");
    references.secrets.insert(
        "dr-keys".into(),
        Some(
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    );
    Observed {
        references,
        ..Observed::default()
    }
}

fn container(cron_job: &CronJob) -> &Container {
    &cron_job
        .spec
        .as_ref()
        .expect("spec")
        .job_template
        .spec
        .as_ref()
        .expect("job")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0]
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

fn secret_of(container: &Container, name: &str) -> Option<(String, String)> {
    let source = container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value_from
        .as_ref()?
        .secret_key_ref
        .as_ref()?;
    Some((source.name.clone(), source.key.clone()))
}

#[test]
fn each_copy_gets_a_cron_job_that_copies_from_the_repository_into_its_bucket() {
    let schedule = with_copy(serde_json::json!({}));
    let plan = plan(
        &schedule,
        &observed_with_keys(),
        &crate::controllers::Settings::default(),
        now(),
    );
    let owned = plan.owned.expect("objects");
    let [cron_job] = owned.copy_cron_jobs.as_slice() else {
        panic!("one copy CronJob: {:?}", owned.copy_cron_jobs);
    };
    assert_eq!(cron_job.metadata.name.as_deref(), Some("nightly-copy-dr"));
    let spec = cron_job.spec.as_ref().expect("spec");
    assert_eq!(spec.schedule, "30 4 * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let container = container(cron_job);
    assert_eq!(
        container.args.as_deref().expect("args"),
        [
            "copy",
            "--to-s3-storage-class",
            "STANDARD_IA",
            "--keep-last",
            "7",
            "--max-age",
            "30d"
        ]
    );
    // The source as every agent gets it, the copy under its own names.
    assert_eq!(
        env_value(container, "PGBACKUP_REPOSITORY"),
        Some("s3://backups")
    );
    assert_eq!(
        secret_of(container, "AWS_ACCESS_KEY_ID"),
        Some(("s3-keys".into(), "AWS_ACCESS_KEY_ID".into()))
    );
    assert_eq!(
        env_value(container, "PGBACKUP_COPY_TO"),
        Some("s3://dr-bucket/pg")
    );
    assert_eq!(
        env_value(container, "PGBACKUP_COPY_S3_REGION"),
        Some("eu-west-1")
    );
    assert_eq!(
        secret_of(container, "PGBACKUP_COPY_AWS_SECRET_ACCESS_KEY"),
        Some(("dr-keys".into(), "AWS_SECRET_ACCESS_KEY".into()))
    );
    assert_eq!(plan.status.copies.len(), 1);
    assert_eq!(
        plan.status.copies[0].cron_job_name.as_deref(),
        Some("nightly-copy-dr")
    );
    let copied = find_condition(&plan.status.conditions, CONDITION_COPIED).expect("Copied");
    assert_eq!(
        (copied.status.as_str(), copied.reason.as_str()),
        (STATUS_UNKNOWN, "NotCopiedYet")
    );
}

#[test]
fn copies_that_cannot_be_carried_out_are_refused_and_nothing_is_made() {
    let refused = |schedule: BackupSchedule, observed: Observed, words: &str| {
        let plan = plan(
            &schedule,
            &observed,
            &crate::controllers::Settings::default(),
            now(),
        );
        assert!(plan.owned.is_none(), "{words}: nothing is applied");
        let message = plan.status.message.unwrap_or_default();
        assert!(message.contains(words), "{words:?} in {message:?}");
    };
    refused(
        with_copy(serde_json::json!({})),
        Observed {
            references: references("postgres:16.4"),
            ..Observed::default()
        },
        "Secret shop/dr-keys does not exist (spec.copies[0].s3.credentialsSecret.accessKeyIdKey)",
    );
    refused(
        with_copy(serde_json::json!({"schedule": "every night"})),
        observed_with_keys(),
        "spec.copies[0].schedule",
    );
    refused(
        with_copy(serde_json::json!({"s3": {"bucket": "backups"}})),
        observed_with_keys(),
        "spec.copies[0].s3 is the template's repository",
    );
    refused(
        with_copy(serde_json::json!({"s3": {"bucket": "dr", "serviceAccountName": "dr-writer"}})),
        observed_with_keys(),
        "one pod reads the template's repository and writes the copy",
    );
    refused(
        with_copy(serde_json::json!({"retention": {"maxAge": "0s"}})),
        observed_with_keys(),
        "spec.copies[0].retention keeps no backup",
    );
    let mut twice = with_copy(serde_json::json!({}));
    twice.spec.copies.push(twice.spec.copies[0].clone());
    refused(twice, observed_with_keys(), "\"dr\" names two copies");
}

#[test]
fn the_newest_finished_run_of_each_copy_is_its_status() {
    let schedule = with_copy(serde_json::json!({}));
    let at = |s: &str| Time(s.parse().expect("time"));
    let mut status = BackupScheduleStatus::default();
    let mut events = Vec::new();
    let mut jobs = BTreeMap::new();
    let succeeded = JobState::Succeeded {
        started: None,
        finished: Some(at("2026-11-21T04:31:00Z")),
        result: Some("copied backup 20261121T023000Z (1.2 GiB)\n1 backup(s) and 12 WAL file(s) copied (1.3 GiB) into s3://dr-bucket/pg; 0 backup(s) and 0 WAL file(s) were there already\n".into()),
    };
    jobs.insert(
        "dr".to_string(),
        ("nightly-copy-dr-1".to_string(), succeeded),
    );
    copy_status(
        &schedule,
        &jobs,
        &mut status,
        &at("2026-11-21T05:00:00Z"),
        &mut events,
    );
    let entry = &status.copies[0];
    assert_eq!(entry.succeeded, Some(true));
    assert_eq!(entry.last_copy_time, Some(at("2026-11-21T04:31:00Z")));
    assert!(
        entry
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("1 backup(s) and 12 WAL")),
        "{entry:?}"
    );
    assert_eq!(events.len(), 1, "one event per finished run");
    copy_status(
        &schedule,
        &jobs,
        &mut status,
        &at("2026-11-21T05:01:00Z"),
        &mut events,
    );
    assert_eq!(events.len(), 1, "a run is recorded once");

    // The next run is under way: the last word stands until it ends, then it fails.
    jobs.insert(
        "dr".to_string(),
        (
            "nightly-copy-dr-2".to_string(),
            JobState::Active {
                started: None,
                stuck: None,
            },
        ),
    );
    copy_status(
        &schedule,
        &jobs,
        &mut status,
        &at("2026-11-22T04:30:10Z"),
        &mut events,
    );
    assert_eq!(status.copies[0].succeeded, Some(true));
    jobs.insert(
        "dr".to_string(),
        (
            "nightly-copy-dr-2".to_string(),
            JobState::Failed {
                reason: "Corrupt".into(),
                message: "WAL file … does not read back".into(),
                finished: None,
            },
        ),
    );
    copy_status(
        &schedule,
        &jobs,
        &mut status,
        &at("2026-11-22T04:40:00Z"),
        &mut events,
    );
    let entry = &status.copies[0];
    assert_eq!(entry.succeeded, Some(false));
    assert_eq!(
        entry.last_copy_time,
        Some(at("2026-11-21T04:31:00Z")),
        "the copy still holds what the last good run copied"
    );
    let copied = find_condition(&status.conditions, CONDITION_COPIED).expect("Copied");
    assert_eq!(copied.status, STATUS_FALSE);
    assert!(
        copied.message.contains("dr (Corrupt: WAL file"),
        "{copied:?}"
    );
    assert_eq!(events.len(), 2);

    // Copies removed from the spec leave no status behind.
    let mut without = schedule.clone();
    without.spec.copies.clear();
    copy_status(
        &without,
        &jobs,
        &mut status,
        &at("2026-11-22T05:00:00Z"),
        &mut events,
    );
    assert!(status.copies.is_empty());
    assert!(find_condition(&status.conditions, CONDITION_COPIED).is_none());
}
