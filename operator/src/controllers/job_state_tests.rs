//! Tests of reading a Job's state, and the Job and pod fixtures other controllers' tests use.

use super::*;

/// The UID of the fixture Jobs, which their pods carry.
pub const JOB_UID: &str = "0c5a7e1e-job";

/// A Job named `name` with the given status.
pub fn job(name: &str, status: serde_json::Value) -> Job {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "uid": JOB_UID},
        "spec": {"activeDeadlineSeconds": 3600, "template": {"spec": {"containers": []}}},
        "status": status,
    }))
    .expect("Job fixture")
}

/// A pod of `job` whose container ended with `message`.
pub fn pod(job: &str, created: &str, message: &str, exit_code: i32) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{job}-{created}"), "namespace": "shop",
                     "creationTimestamp": created,
                     "labels": {"batch.kubernetes.io/job-name": job,
                                "batch.kubernetes.io/controller-uid": JOB_UID}},
        "status": {"containerStatuses": [{
            "name": "agent", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message}}
        }]}
    }))
    .expect("Pod fixture")
}

fn condition(type_: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({"conditions": [{"type": type_, "status": "True", "reason": reason,
        "lastTransitionTime": "2026-11-21T10:20:00Z"}],
        "startTime": "2026-11-21T10:00:00Z", "completionTime": "2026-11-21T10:20:00Z"})
}

#[test]
fn the_pods_of_an_earlier_job_of_the_same_name_are_not_read() {
    let job = job("b", condition("Complete", "CompletionsReached"));
    let mut earlier = pod("b", "2026-11-21T09:00:00Z", "{\"backupId\":\"old\"}", 0);
    earlier
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert(LABEL_CONTROLLER_UID.into(), "an-earlier-job".into());
    match job_state(&job, &[earlier]) {
        JobState::Succeeded { result, .. } => assert_eq!(result, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pod_that_ended_well_is_a_success_before_the_job_is_marked() {
    let job = job(
        "b",
        serde_json::json!({"active": 1, "startTime": "2026-11-21T10:00:00Z"}),
    );
    let pods = [pod("b", "2026-11-21T10:00:00Z", "{\"backupId\":\"x\"}", 0)];
    match job_state(&job, &pods) {
        JobState::Succeeded { result, .. } => {
            assert_eq!(result.as_deref(), Some("{\"backupId\":\"x\"}"))
        }
        other => panic!("{other:?}"),
    }
    let failed = [pod("b", "2026-11-21T10:00:00Z", "{}", 1)];
    assert!(matches!(job_state(&job, &failed), JobState::Active { .. }));
}

#[test]
fn a_job_the_operator_stopped_reads_as_failed_with_the_recorded_cause() {
    let mut stopped = job(
        "b",
        serde_json::json!({"startTime": "2026-11-21T10:00:00Z"}),
    );
    stopped.metadata.annotations = Some(
        [(
            job_start::ANNOTATION_STOPPED.to_string(),
            r#"{"reason":"PodNotCreated","message":"exceeded quota"}"#.to_string(),
        )]
        .into(),
    );
    assert_eq!(
        job_state(&stopped, &[]),
        JobState::Failed {
            reason: "PodNotCreated".into(),
            message: "exceeded quota".into(),
            finished: None,
        }
    );
}

#[test]
fn a_succeeded_job_carries_the_agents_report() {
    let job = job("b", condition("Complete", "CompletionsReached"));
    let pods = [pod("b", "2026-11-21T10:00:00Z", "{\"backupId\":\"x\"}", 0)];
    match job_state(&job, &pods) {
        JobState::Succeeded { result, .. } => {
            assert_eq!(result.as_deref(), Some("{\"backupId\":\"x\"}"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_job_says_what_the_last_attempt_said() {
    let job = job("b", condition("Failed", "BackoffLimitExceeded"));
    let pods = [
        pod(
            "b",
            "2026-11-21T10:00:00Z",
            "{\"reason\":\"DatabaseUnreachable\",\"message\":\"first\"}",
            1,
        ),
        pod(
            "b",
            "2026-11-21T10:05:00Z",
            "{\"reason\":\"RepositoryError\",\"message\":\"cannot reach s3://backups\"}",
            1,
        ),
    ];
    assert_eq!(
        job_state(&job, &pods),
        JobState::Failed {
            reason: "RepositoryError".into(),
            message: "cannot reach s3://backups".into(),
            finished: Some(Time("2026-11-21T10:20:00Z".parse().expect("time"))),
        }
    );
    // A crash leaves log lines instead of the agent's report.
    let crashed = [pod(
        "b",
        "2026-11-21T10:00:00Z",
        "thread main panicked\n",
        101,
    )];
    match job_state(&job, &crashed) {
        JobState::Failed {
            reason, message, ..
        } => {
            assert_eq!(reason, "BackoffLimitExceeded");
            assert_eq!(message, "thread main panicked");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_deadline_is_named_as_such() {
    let job = job("b", condition("Failed", "DeadlineExceeded"));
    match job_state(&job, &[]) {
        JobState::Failed {
            reason, message, ..
        } => {
            assert_eq!(reason, "DeadlineExceeded");
            assert!(message.contains("3600"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_container_that_cannot_start_is_stuck() {
    let job = job("b", serde_json::json!({"active": 1}));
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "b-1", "labels": {"batch.kubernetes.io/controller-uid": JOB_UID}},
        "status": {"containerStatuses": [{
            "name": "agent", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                                  "message": "couldn't find key password in Secret shop/pg-auth"}}
        }]}
    }))
    .expect("pod");
    match job_state(&job, &[pod]) {
        JobState::Active {
            stuck: Some((reason, message)),
            ..
        } => {
            assert_eq!(reason, "CreateContainerConfigError");
            assert!(message.contains("password"));
        }
        other => panic!("{other:?}"),
    }
}
