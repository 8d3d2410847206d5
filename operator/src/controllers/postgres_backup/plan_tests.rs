//! Tests of the PostgresBackup plan: the Job it starts, the status it follows, the refusals.

use k8s_openapi::api::core::v1::EnvVar;

use super::*;
use crate::{
    api::{BackupPhase, CONDITION_FAILED, CONDITION_READY, find_condition},
    controllers::references::References,
    k8s::fixtures::{backup, references},
};

fn now() -> Timestamp {
    "2026-11-21T10:30:00Z".parse().expect("time")
}

fn all_present() -> References {
    references("bitnami/postgresql:17.2.0")
}

fn observed(job: Option<JobState>) -> Observed {
    Observed {
        references: all_present(),
        job,
        ..Observed::default()
    }
}

fn ready(status: &PostgresBackupStatus) -> (String, String) {
    let c = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
    (c.status.clone(), c.reason.clone())
}

fn env<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a EnvVar> {
    env.iter().find(|e| e.name == name)
}

#[test]
fn a_new_backup_gets_its_job() {
    let backup = backup("physical");
    let plan = plan(&backup, &observed(None), &AgentSettings::default(), now());
    let transport = crate::api::find_condition(
        &plan.status.conditions,
        crate::controllers::transport::CONDITION_TRANSPORT,
    )
    .expect("TransportVerified");
    assert_eq!(
        (transport.status.as_str(), transport.reason.as_str()),
        ("False", "Unverified"),
        "the default sslMode does not check the server: {}",
        transport.message
    );
    let job = plan.job.expect("a Job");
    assert_eq!(job.metadata.name.as_deref(), Some("nightly-1-backup"));
    let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("PostgresBackup", "nightly-1", Some(true))
    );
    let labels = job.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["pgbackup.io/backup"], "nightly-1");
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(2));
    assert_eq!(spec.ttl_seconds_after_finished, Some(7 * 24 * 3600));
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:17-", env!("CARGO_PKG_VERSION"))),
        "the agent matches the server's major"
    );
    assert_eq!(
        container.args.as_deref().expect("args"),
        [
            "backup",
            "--method",
            "physical",
            "--checkpoint",
            "fast",
            "--compress-on",
            "server",
            "--compression",
            "zstd",
            "--no-row-counts"
        ]
    );
    let env_list = container.env.as_deref().expect("env");
    assert_eq!(
        env(env_list, "PGHOST").and_then(|e| e.value.as_deref()),
        Some("pg-0.pg-headless.shop.svc")
    );
    assert_eq!(
        env(env_list, "PGBACKUP_SERVER").and_then(|e| e.value.as_deref()),
        Some("shop-pg")
    );
    let password = env(env_list, "PGPASSWORD").expect("PGPASSWORD");
    assert!(password.value.is_none());
    assert_eq!(
        password
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("pg-auth")
    );

    // The StatefulSet's objects go with the backup: a ConfigMap the Job mounts (optional,
    // so that one that could not be made never stops the backup).
    let map = plan.configuration.expect("configuration");
    assert_eq!(
        map.metadata.name.as_deref(),
        Some("nightly-1-configuration")
    );
    let document = &map.data.as_ref().expect("data")["kubernetes.yaml"];
    assert!(document.contains("kind: StatefulSet"), "{document}");
    assert_eq!(
        env(env_list, "PGBACKUP_CONFIGURATION").and_then(|e| e.value.as_deref()),
        Some("/etc/pgbackup/configuration/kubernetes.yaml")
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "configuration")
        .and_then(|v| v.config_map.as_ref())
        .expect("configuration volume");
    assert_eq!(
        (volume.name.as_str(), volume.optional),
        ("nightly-1-configuration", Some(true))
    );

    assert_eq!(plan.status.phase, Some(BackupPhase::Pending));
    assert_eq!(plan.status.job_name.as_deref(), Some("nightly-1-backup"));
    assert_eq!(plan.status.observed_generation, Some(1));
    assert_eq!(plan.event.expect("event").reason, "Started");
}

#[test]
fn logical_options_become_agent_options() {
    let mut backup = backup("logical");
    backup.spec.logical = Some(
        serde_json::from_value(serde_json::json!({"databases": ["shop", "crm"], "globals": false}))
            .expect("logical"),
    );
    backup.spec.repository.compression =
        serde_json::from_value(serde_json::json!({"algorithm": "lz4", "level": 3}))
            .expect("compression");
    let plan = plan(&backup, &observed(None), &AgentSettings::default(), now());
    let job = plan.job.expect("job");
    let args = job
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(
        args,
        [
            "backup",
            "--method",
            "logical",
            "--database",
            "shop",
            "--database",
            "crm",
            "--no-globals",
            "--compression",
            "lz4",
            "--compression-level",
            "3",
            "--no-row-counts"
        ]
    );
}

#[test]
fn missing_references_wait_with_a_reason_and_start_nothing() {
    let backup = backup("logical");
    let mut observed = observed(None);
    observed.references.secrets.insert("pg-auth".into(), None);
    let plan = plan(&backup, &observed, &AgentSettings::default(), now());
    assert!(plan.job.is_none());
    assert_eq!(plan.status.phase, Some(BackupPhase::Pending));
    assert_eq!(
        ready(&plan.status),
        ("False".into(), "SecretNotFound".into())
    );
    assert!(
        plan.status
            .message
            .as_deref()
            .expect("message")
            .contains("shop/pg-auth")
    );
    let event = plan.event.expect("event");
    assert!(event.warning);
    assert_eq!(event.reason, "SecretNotFound");

    // Asked again with nothing changed: no second event.
    let mut again = backup.clone();
    again.status = Some(plan.status);
    assert_eq!(
        super::plan(&again, &observed, &AgentSettings::default(), now()).event,
        None
    );
}

/// The agent's arguments in the backup Job of `backup`.
fn backup_job_args(backup: &PostgresBackup) -> Vec<String> {
    let plan = plan(backup, &observed(None), &AgentSettings::default(), now());
    let job = plan.job.expect("a backup job");
    let pod = job.spec.expect("spec").template.spec.expect("pod");
    pod.containers[0].args.clone().expect("args")
}

#[test]
fn a_parallel_dump_runs_pg_dump_with_its_jobs_into_a_directory() {
    let mut backup = backup("logical");
    backup.spec.logical = Some(
        serde_json::from_value(serde_json::json!({"format": "directory", "jobs": 4}))
            .expect("logical"),
    );
    let text = backup_job_args(&backup).join(" ");
    assert!(text.contains("--format directory --jobs 4"), "{text}");
    backup.spec.logical = Some(serde_json::from_value(serde_json::json!({})).expect("logical"));
    let args = backup_job_args(&backup);
    assert!(!args.join(" ").contains("--format"), "{args:?}");
}

#[test]
fn compression_stays_off_the_database_when_asked() {
    let mut backup = backup("physical");
    backup.spec.physical = Some(
        serde_json::from_value(serde_json::json!({"compressOn": "client"})).expect("physical"),
    );
    let text = backup_job_args(&backup).join(" ");
    assert!(text.contains("--compress-on client"), "{text}");
}

#[test]
fn a_running_job_is_running_and_a_stuck_one_says_why() {
    let backup = backup("logical");
    let started = Some(Time("2026-11-21T10:29:00Z".parse().expect("time")));
    let plan = plan(
        &backup,
        &observed(Some(JobState::Active {
            started: started.clone(),
            stuck: None,
        })),
        &AgentSettings::default(),
        now(),
    );
    assert!(plan.job.is_none(), "an existing Job is not applied again");
    assert_eq!(plan.status.phase, Some(BackupPhase::Running));
    assert_eq!(plan.status.started_at, started);

    let stuck = JobState::Active {
        started: None,
        stuck: Some((
            "CreateContainerConfigError".into(),
            "couldn't find key password".into(),
        )),
    };
    let plan = super::plan(
        &backup,
        &observed(Some(stuck)),
        &AgentSettings::default(),
        now(),
    );
    assert_eq!(
        ready(&plan.status),
        ("False".into(), "CreateContainerConfigError".into())
    );
}

#[test]
fn a_succeeded_job_completes_the_backup_with_the_manifests_facts() {
    let backup = backup("physical");
    let report = serde_json::json!({
        "backupId": "20261121T102900Z", "location": "s3://backups/prod/shop-pg/base/20261121T102900Z/manifest.json",
        "manifestSha256": "ab".repeat(32), "size": 5_000_000, "storedSize": 1_000_000, "serverVersion": "17.2",
        "systemIdentifier": "7301", "timeline": 1, "beginLsn": "0/2000028", "endLsn": "0/2000100",
        "beginWal": "000000010000000000000002", "endWal": "000000010000000000000002",
        "beginTime": "2026-11-21T10:29:00Z", "endTime": "2026-11-21T10:29:30Z"
    });
    let done = JobState::Succeeded {
        started: None,
        finished: None,
        result: Some(report.to_string()),
    };
    let plan = plan(
        &backup,
        &observed(Some(done)),
        &AgentSettings::default(),
        now(),
    );
    let s = &plan.status;
    assert_eq!(s.phase, Some(BackupPhase::Completed));
    assert_eq!(s.backup_id.as_deref(), Some("20261121T102900Z"));
    assert_eq!(s.stored_size, Some(1_000_000));
    assert_eq!(s.begin_lsn.as_deref(), Some("0/2000028"));
    assert_eq!(s.end_wal.as_deref(), Some("000000010000000000000002"));
    assert_eq!(s.timeline, Some(1));
    assert_eq!(s.server_version.as_deref(), Some("17.2"));
    assert_eq!(ready(s), ("True".into(), "Completed".into()));
    assert_eq!(plan.event.expect("event").reason, "Completed");
    // It restores to its end, and to nothing later until a schedule's archive proves it.
    let window = s.recovery_window.clone().expect("window");
    let end: Timestamp = "2026-11-21T10:29:30Z".parse().expect("time");
    assert_eq!(window.first_recoverability_point, Some(Time(end)));
    assert_eq!(window.last_recoverability_point, Some(Time(end)));
    assert_eq!(window.proven_by.as_deref(), Some("backup"));
    // A dump restores to the moment it was taken: no window.
    let mut dump = report.clone();
    dump["kind"] = "logical".into();
    let dumped = JobState::Succeeded {
        started: None,
        finished: None,
        result: Some(dump.to_string()),
    };
    let plan = super::plan(
        &backup,
        &observed(Some(dumped)),
        &AgentSettings::default(),
        now(),
    );
    assert_eq!(plan.status.phase, Some(BackupPhase::Completed));
    assert_eq!(plan.status.recovery_window, None);

    let no_report = JobState::Succeeded {
        started: None,
        finished: None,
        result: None,
    };
    let plan = super::plan(
        &backup,
        &observed(Some(no_report)),
        &AgentSettings::default(),
        now(),
    );
    assert_eq!(plan.status.phase, Some(BackupPhase::Failed));
    assert_eq!(ready(&plan.status).1, "ResultMissing");
}

#[test]
fn a_failed_job_fails_the_backup_with_the_agents_reason() {
    let backup = backup("logical");
    let failed = JobState::Failed {
        reason: "DatabaseUnreachable".into(),
        message: "cannot reach PostgreSQL at pg-0.pg-headless:5432".into(),
        finished: None,
    };
    let plan = plan(
        &backup,
        &observed(Some(failed)),
        &AgentSettings::default(),
        now(),
    );
    assert_eq!(plan.status.phase, Some(BackupPhase::Failed));
    let condition = find_condition(&plan.status.conditions, CONDITION_FAILED).expect("Failed");
    assert_eq!(condition.reason, "DatabaseUnreachable");
    assert!(condition.message.contains("pg-0.pg-headless"));
    let event = plan.event.expect("event");
    assert!(event.warning);
}

#[test]
fn a_finished_backup_is_left_alone_and_a_lost_job_is_a_failure() {
    let mut backup = backup("logical");
    backup.status = Some(PostgresBackupStatus {
        phase: Some(BackupPhase::Completed),
        job_name: Some("nightly-1-backup".into()),
        ..Default::default()
    });
    let plan = plan(
        &backup,
        &Observed::default(),
        &AgentSettings::default(),
        now(),
    );
    assert!(plan.job.is_none());
    assert_eq!(plan.status.phase, Some(BackupPhase::Completed));
    assert_eq!(plan.event, None);

    // Running, or still Pending (a quick Job removed by its TTL before it was seen).
    for phase in [BackupPhase::Running, BackupPhase::Pending] {
        backup.status = Some(PostgresBackupStatus {
            phase: Some(phase),
            job_name: Some("nightly-1-backup".into()),
            ..Default::default()
        });
        let plan = super::plan(&backup, &observed(None), &AgentSettings::default(), now());
        assert!(
            plan.job.is_none(),
            "{phase:?}: a lost Job is not replaced by a new backup behind the user's back"
        );
        assert_eq!(plan.status.phase, Some(BackupPhase::Failed));
        assert_eq!(ready(&plan.status).1, "JobLost");
    }
}

fn completed(verify: bool) -> PostgresBackup {
    let mut backup = backup("physical");
    backup.spec.verify = Some(crate::api::VerifyOptions { enabled: verify });
    backup.status = Some(PostgresBackupStatus {
        phase: Some(BackupPhase::Completed),
        job_name: Some("nightly-1-backup".into()),
        backup_id: Some("20261121T102900Z".into()),
        server_version: Some("16.4".into()),
        ..Default::default()
    });
    backup
}

fn verified(status: &PostgresBackupStatus) -> (String, String, String) {
    let c = find_condition(&status.conditions, crate::api::CONDITION_VERIFIED).expect("Verified");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn with_verify_job(job: Option<JobState>) -> Observed {
    Observed {
        verify_job: job,
        ..Observed::default()
    }
}

#[test]
fn a_completed_backup_with_verify_gets_one_restore_test_job() {
    let backup = completed(true);
    let plan = plan(
        &backup,
        &with_verify_job(None),
        &AgentSettings::default(),
        now(),
    );
    let job = plan.job.expect("the restore test Job");
    assert_eq!(job.metadata.name.as_deref(), Some("nightly-1-verify"));
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:16-", env!("CARGO_PKG_VERSION"))),
        "the backup's major version restores it"
    );
    let args = container.args.as_deref().expect("args");
    assert_eq!(
        args,
        [
            "verify",
            "--restore",
            "--json",
            "--backup",
            "20261121T102900Z"
        ]
    );
    let scratch = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PGBACKUP_SCRATCH_DIR");
    assert_eq!(scratch.and_then(|e| e.value.as_deref()), Some("/scratch"));
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .any(|v| v.name == "scratch" && v.empty_dir.is_some()),
        "the scratch server runs in an emptyDir"
    );
    assert_eq!(verified(&plan.status).0, "Unknown");
    assert_eq!(plan.status.phase, Some(BackupPhase::Completed));
    let recorded = plan.status.verification.as_ref().expect("verification");
    assert_eq!(recorded.job_name.as_deref(), Some("nightly-1-verify"));

    // Without verify, a completed backup is left alone.
    let plan = super::plan(
        &completed(false),
        &with_verify_job(None),
        &AgentSettings::default(),
        now(),
    );
    assert!(plan.job.is_none());
    assert!(plan.status.verification.is_none());
}

#[test]
fn the_restore_test_result_becomes_the_verified_condition_with_its_figures() {
    let mut backup = completed(true);
    let started = plan(
        &backup,
        &with_verify_job(None),
        &AgentSettings::default(),
        now(),
    );
    backup.status = Some(started.status);

    let running = JobState::Active {
        started: None,
        stuck: None,
    };
    let plan_running = plan(
        &backup,
        &with_verify_job(Some(running)),
        &AgentSettings::default(),
        now(),
    );
    assert!(plan_running.job.is_none(), "one Job only");
    assert_eq!(verified(&plan_running.status).1, "Verifying");

    let report = serde_json::json!({
        "backupId": "20261121T102900Z", "kind": "physical", "verified": true,
        "restoreSeconds": 12.5, "seconds": 15.0, "reachedLsn": "0/5000100", "databases": 2,
        "tables": 4, "rows": 1313, "matched": 4, "changedCount": 0, "countsRecorded": true,
        "summary": "4 tables, 1313 rows: 4 match the counts recorded at backup time"
    });
    let done = JobState::Succeeded {
        started: None,
        finished: None,
        result: Some(report.to_string()),
    };
    let passed = plan(
        &backup,
        &with_verify_job(Some(done)),
        &AgentSettings::default(),
        now(),
    );
    let (status, reason, message) = verified(&passed.status);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "RestoreTestPassed")
    );
    assert!(
        message.contains("12.5 s") && message.contains("1313 rows"),
        "{message}"
    );
    let figures = passed.status.verification.as_ref().expect("figures");
    assert_eq!(
        (figures.tables, figures.rows, figures.matched),
        (Some(4), Some(1313), Some(4))
    );
    assert_eq!(figures.verified, Some(true));
    assert_eq!(figures.reached_lsn.as_deref(), Some("0/5000100"));
    assert_eq!(
        passed.event.as_ref().map(|e| e.reason.as_str()),
        Some("Verified")
    );
    assert_eq!(passed.status.phase, Some(BackupPhase::Completed));

    // Recorded: nothing more to do, even when the Job is gone.
    backup.status = Some(passed.status);
    let after = plan(
        &backup,
        &with_verify_job(None),
        &AgentSettings::default(),
        now(),
    );
    assert!(after.job.is_none());
    assert_eq!(after.event, None);

    let mut failing = completed(true);
    failing.status = backup.status.clone().map(|mut s| {
        s.verification = Some(crate::api::VerificationStatus {
            job_name: Some("nightly-1-verify".into()),
            ..Default::default()
        });
        s
    });
    let failed = JobState::Failed {
        reason: "VerificationFailed".into(),
        message: "restore test of backup 20261121T102900Z failed: shop/public.items: 3 rows recorded, 2 restored".into(),
        finished: None,
    };
    let plan_failed = plan(
        &failing,
        &with_verify_job(Some(failed)),
        &AgentSettings::default(),
        now(),
    );
    let (status, reason, message) = verified(&plan_failed.status);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "VerificationFailed")
    );
    assert!(message.contains("3 rows recorded, 2 restored"), "{message}");
    assert!(plan_failed.event.expect("event").warning);
    assert_eq!(plan_failed.status.phase, Some(BackupPhase::Completed));

    // The Job vanished before its result was read: a failure, not a silent retry.
    let lost = plan(
        &failing,
        &with_verify_job(None),
        &AgentSettings::default(),
        now(),
    );
    assert!(lost.job.is_none());
    assert_eq!(verified(&lost.status).1, "JobLost");
}

#[test]
fn rows_are_counted_only_for_restore_tests() {
    let args = |backup: &PostgresBackup| build::backup_args(backup);
    let mut plain = backup("physical");
    assert!(args(&plain).contains(&"--no-row-counts".to_string()));
    plain.spec.verify = Some(crate::api::VerifyOptions { enabled: true });
    assert!(
        !args(&plain).contains(&"--no-row-counts".to_string()),
        "its own test"
    );
    let mut scheduled = backup("physical");
    scheduled
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("pgbackup.io/row-counts".into(), "true".into());
    assert!(
        !args(&scheduled).contains(&"--no-row-counts".to_string()),
        "its schedule's test"
    );
}

#[test]
fn an_incremental_backup_asks_the_agent_for_its_policy_and_reports_its_chain() {
    let mut incremental = backup("physical");
    incremental.spec.physical = Some(
        serde_json::from_value(serde_json::json!({
            "incremental": true, "fullEvery": 7, "fullAfter": "8d", "fallBackToFull": true
        }))
        .expect("physical options"),
    );
    let args = build::backup_args(&incremental).join(" ");
    assert!(
        args.contains("--incremental --full-every 7 --full-after 8d --fall-back-to-full"),
        "{args}"
    );

    let report = |extra: serde_json::Value| {
        let mut report = serde_json::json!({
            "backupId": "20261121T102900Z", "location": "s3://b/p/shop-pg/base/20261121T102900Z/manifest.json",
            "manifestSha256": "ab".repeat(32), "size": 5_000_000, "storedSize": 1_000_000,
            "serverVersion": "17.2", "beginTime": "2026-11-21T10:29:00Z", "endTime": "2026-11-21T10:29:30Z"
        });
        report
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        JobState::Succeeded {
            started: None,
            finished: None,
            result: Some(report.to_string()),
        }
    };
    let chained = report(serde_json::json!({
        "kind": "incremental", "parent": "20261120T102900Z", "chainLength": 3
    }));
    let planned = super::plan(
        &incremental,
        &observed(Some(chained)),
        &AgentSettings::default(),
        now(),
    );
    let s = &planned.status;
    assert_eq!(s.kind.as_deref(), Some("incremental"));
    assert_eq!(s.parent.as_deref(), Some("20261120T102900Z"));
    assert_eq!(s.chain_length, Some(3));
    let message = s.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with(
            "incremental backup (on top of 20261120T102900Z, chain of 3) 20261121T102900Z stored"
        ),
        "{message}"
    );

    let fell_back = report(serde_json::json!({
        "kind": "physical", "chainLength": 1,
        "fullBecause": "no incremental backup could be taken: summarize_wal is off"
    }));
    let planned = super::plan(
        &incremental,
        &observed(Some(fell_back)),
        &AgentSettings::default(),
        now(),
    );
    let s = &planned.status;
    assert_eq!(s.kind.as_deref(), Some("full"));
    assert_eq!(s.parent, None);
    let message = s.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("full backup 20261121T102900Z stored")
            && message.ends_with("; full, not incremental: no incremental backup could be taken: summarize_wal is off"),
        "{message}"
    );

    let mut unasked = backup("physical");
    unasked.spec.physical = Some(
        serde_json::from_value(serde_json::json!({"fullEvery": 7})).expect("physical options"),
    );
    let problem = super::validate(&unasked).expect_err("fullEvery without incremental");
    assert!(
        problem.message.contains("need physical.incremental: true"),
        "{}",
        problem.message
    );
}

#[test]
fn a_backup_waits_for_the_incrementals_built_on_it_in_its_repository() {
    let full = backup("physical");
    let on = |name: &str, parent: &str, repository: Option<&str>| {
        let mut other = backup("physical");
        other.metadata.name = Some(name.into());
        if let Some(claim) = repository {
            other.spec.repository =
                serde_json::from_value(serde_json::json!({"volume": {"claimName": claim}}))
                    .expect("repository");
        }
        other.status = Some(PostgresBackupStatus {
            parent: Some(parent.into()),
            ..Default::default()
        });
        other
    };
    let others = [
        on("next", "20261121T102900Z", None),
        on("unrelated", "20261120T000000Z", None),
        on("elsewhere", "20261121T102900Z", Some("other-claim")),
    ];
    assert_eq!(
        super::incrementals_on(&full, "20261121T102900Z", &others),
        ["next"]
    );
    assert!(super::incrementals_on(&full, "20261122T000000Z", &others).is_empty());
}

#[test]
fn the_agents_run_under_the_repositorys_service_account_without_an_api_token() {
    let mut backup = backup("physical");
    backup
        .spec
        .repository
        .s3
        .as_mut()
        .expect("s3")
        .service_account_name = Some("backup-writer".into());
    let job = build::backup_job(&backup, &AgentSettings::default(), "pg-0.pg", 17);
    let pod = job.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("backup-writer"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let delete = build::delete_job(&backup, &AgentSettings::default(), "20261121T102900Z");
    let pod = delete.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("backup-writer"));
}

#[test]
fn agent_jobs_are_placed_as_the_job_options_say() {
    let mut backup = backup("physical");
    backup.spec.job = serde_json::from_value(serde_json::json!({
        "nodeSelector": {"pool": "batch"}, "priorityClassName": "backups",
        "tolerations": [{"key": "batch", "operator": "Exists"}]
    }))
    .expect("job options");
    let settings = AgentSettings::default();
    for job in [
        build::backup_job(&backup, &settings, "pg-0.pg", 17),
        build::delete_job(&backup, &settings, "20261121T102900Z"),
    ] {
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(
            pod.node_selector
                .as_ref()
                .and_then(|s| s.get("pool"))
                .map(String::as_str),
            Some("batch")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("backups"));
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    }
}
