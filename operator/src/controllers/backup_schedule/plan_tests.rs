//! The BackupSchedule plan through owned objects, bad input, slot conflicts, retention,
//! the archiver's report and the recovery window, restore tests and pod placement.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{CONDITION_LAST_BACKUP_SUCCEEDED, CONDITION_READY, SchedulePhase};
use crate::{
    api::{
        BackupPhase, CONDITION_WAL_ARCHIVING, PostgresBackupStatus, ScheduleMethod, find_condition,
    },
    k8s::fixtures::{backup, references, schedule},
};

fn now() -> Timestamp {
    "2026-11-21T10:30:00Z".parse().expect("time")
}

fn settings() -> Settings {
    Settings {
        trigger_image: "pgbackup/operator:0.1.0".into(),
        ..Settings::default()
    }
}

fn observed() -> Observed {
    Observed {
        references: references("postgres:16.4"),
        ..Observed::default()
    }
}

/// A backup object of the schedule in `phase`, finished at `time`.
fn finished(name: &str, method: &str, phase: BackupPhase, time: &str) -> ScheduledBackup {
    let mut b = backup(method);
    b.metadata.name = Some(name.into());
    b.metadata.creation_timestamp = Some(Time(time.parse().expect("time")));
    b.status = Some(PostgresBackupStatus {
        phase: Some(phase),
        completed_at: Some(Time(time.parse().expect("time"))),
        ..Default::default()
    });
    ScheduledBackup::from(&b)
}

fn reason(status: &BackupScheduleStatus, type_: &str) -> (String, String) {
    let c = find_condition(&status.conditions, type_).expect(type_);
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_schedule_owns_a_cron_job_the_trigger_rbac_and_an_archiver() {
    let schedule = schedule();
    let plan = plan(&schedule, &observed(), &settings(), now());
    let owned = plan.owned.expect("objects");

    let cron = owned.cron_job.spec.as_ref().expect("cron spec");
    assert_eq!(
        owned.cron_job.metadata.name.as_deref(),
        Some("nightly-trigger")
    );
    assert_eq!(cron.schedule, "30 2 * * *");
    assert_eq!(cron.suspend, Some(false));
    assert_eq!(cron.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(cron.successful_jobs_history_limit, Some(3));
    let pod = cron
        .job_template
        .spec
        .as_ref()
        .expect("job")
        .template
        .spec
        .as_ref()
        .expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("nightly-trigger"));
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "the trigger talks to the API"
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("pgbackup/operator:0.1.0"));
    assert_eq!(
        container.args.as_deref().expect("args"),
        ["trigger", "--schedule", "nightly"]
    );
    let owner = &owned
        .cron_job
        .metadata
        .owner_references
        .as_ref()
        .expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("BackupSchedule", "nightly")
    );

    let rules = owned.role.rules.as_ref().expect("rules");
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["nightly".to_string()][..]),
        "the trigger reads only its own schedule"
    );
    assert_eq!(rules[0].verbs, ["get"]);
    assert!(rules.iter().all(|r| !r.verbs.contains(&"*".to_string())));
    assert_eq!(
        owned.binding.subjects.as_ref().expect("subjects")[0].name,
        "nightly-trigger"
    );

    let archiver = owned.archiver.expect("archiver");
    let spec = archiver.spec.as_ref().expect("deployment spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let container = &spec.template.spec.as_ref().expect("pod").containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:16-", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(container.args.as_deref().expect("args")[0], "wal-archive");
    let env = container.env.as_deref().expect("env");
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("PGBACKUP_SLOT").as_deref(), Some("pgbackup_nightly"));
    assert_eq!(
        value("PGBACKUP_PARTIAL_UPLOAD_SECONDS").as_deref(),
        Some("60")
    );
    assert_eq!(
        value("PGHOST").as_deref(),
        Some("pg-0.pg-headless.shop.svc")
    );
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());

    assert_eq!(plan.status.phase, Some(SchedulePhase::Active));
    assert_eq!(
        plan.status.cron_job_name.as_deref(),
        Some("nightly-trigger")
    );
    assert_eq!(
        plan.status
            .wal_archiving
            .as_ref()
            .and_then(|w| w.slot_name.as_deref()),
        Some("pgbackup_nightly")
    );
    assert_eq!(
        reason(&plan.status, CONDITION_READY),
        ("True".into(), "Active".into())
    );
    assert_eq!(reason(&plan.status, CONDITION_WAL_ARCHIVING).0, "Unknown");
    assert!(!plan.remove_archiver);
}

#[test]
fn suspend_reaches_the_cron_job_and_archiving_off_removes_the_archiver() {
    let mut schedule = schedule();
    schedule.spec.suspend = true;
    schedule.spec.wal_archiving = None;
    let plan = plan(&schedule, &observed(), &settings(), now());
    let owned = plan.owned.expect("objects");
    assert_eq!(owned.cron_job.spec.expect("spec").suspend, Some(true));
    assert!(owned.archiver.is_none());
    assert!(plan.remove_archiver);
    assert_eq!(plan.status.phase, Some(SchedulePhase::Suspended));
    assert!(find_condition(&plan.status.conditions, CONDITION_WAL_ARCHIVING).is_none());
}

#[test]
fn bad_input_ends_in_a_condition_and_changes_nothing() {
    let mut invalid_cron = schedule();
    invalid_cron.spec.schedule = "61 2 * * *".into();
    let mut mismatch = schedule();
    mismatch.spec.template.logical =
        Some(serde_json::from_value(serde_json::json!({})).expect("logical"));
    let no_secret = observed();
    let mut no_secret_observed = no_secret.clone();
    no_secret_observed
        .references
        .secrets
        .insert("s3-keys".into(), None);
    let mut no_sts = observed();
    no_sts.references.stateful_set = None;
    // A retention that keeps no backup (the CRD refuses counts below 1; an age of 0 it
    // cannot tell).
    let mut keeps_nothing = schedule();
    keeps_nothing.spec.retention =
        Some(serde_json::from_value(serde_json::json!({"maxAge": "0s"})).expect("retention"));
    for (schedule, observed, reason_wanted) in [
        (invalid_cron, observed(), "InvalidSchedule"),
        (mismatch, observed(), "InvalidSpec"),
        (keeps_nothing, observed(), "InvalidSpec"),
        (schedule(), no_secret_observed, "SecretNotFound"),
        (schedule(), no_sts, "StatefulSetNotFound"),
    ] {
        let plan = plan(&schedule, &observed, &settings(), now());
        assert!(plan.owned.is_none(), "{reason_wanted}: nothing is applied");
        assert!(
            !plan.remove_archiver && plan.expire.is_empty(),
            "{reason_wanted}: nothing is deleted"
        );
        assert_eq!(plan.status.phase, Some(SchedulePhase::Failed));
        assert_eq!(
            reason(&plan.status, CONDITION_READY),
            ("False".into(), reason_wanted.into())
        );
        assert_eq!(plan.events[0].reason, reason_wanted);
    }
}

#[test]
fn the_younger_of_two_schedules_on_one_slot_is_refused() {
    let mut older = schedule();
    older.metadata.name = Some("first".into());
    older.metadata.creation_timestamp = Some(Time("2026-11-01T00:00:00Z".parse().expect("time")));
    older.spec.wal_archiving = Some(
        serde_json::from_value(serde_json::json!({"enabled": true, "slotName": "archiver"}))
            .expect("wal"),
    );
    let mut younger = older.clone();
    younger.metadata.name = Some("second".into());
    younger.metadata.creation_timestamp = Some(Time("2026-11-02T00:00:00Z".parse().expect("time")));
    let mut seen = observed();
    seen.siblings = vec![older.clone(), younger.clone()];

    let plan_younger = plan(&younger, &seen, &settings(), now());
    assert!(plan_younger.owned.is_none());
    assert_eq!(
        reason(&plan_younger.status, CONDITION_READY).1,
        "SlotConflict"
    );
    assert!(
        plan_younger
            .status
            .message
            .as_deref()
            .expect("message")
            .contains("BackupSchedule first")
    );
    assert!(
        plan(&older, &seen, &settings(), now()).owned.is_some(),
        "the first claim stands"
    );

    // Another slot name, or another database, is no conflict.
    younger.spec.wal_archiving = Some(
        serde_json::from_value(serde_json::json!({"enabled": true, "slotName": "archiver_2"}))
            .expect("wal"),
    );
    assert!(plan(&younger, &seen, &settings(), now()).owned.is_some());
}

#[test]
fn retention_drops_the_oldest_completed_and_surplus_failed_backups() {
    let schedule = schedule(); // keepLast: 2
    let backups = vec![
        finished(
            "b1",
            "physical",
            BackupPhase::Completed,
            "2026-11-17T02:30:00Z",
        ),
        finished(
            "b2",
            "physical",
            BackupPhase::Completed,
            "2026-11-18T02:30:00Z",
        ),
        finished(
            "b3",
            "physical",
            BackupPhase::Completed,
            "2026-11-19T02:30:00Z",
        ),
        finished(
            "b4",
            "physical",
            BackupPhase::Completed,
            "2026-11-20T02:30:00Z",
        ),
        finished(
            "f1",
            "physical",
            BackupPhase::Failed,
            "2026-11-10T02:30:00Z",
        ),
        finished(
            "f2",
            "physical",
            BackupPhase::Failed,
            "2026-11-11T02:30:00Z",
        ),
        finished(
            "f3",
            "physical",
            BackupPhase::Failed,
            "2026-11-12T02:30:00Z",
        ),
        finished(
            "f4",
            "physical",
            BackupPhase::Failed,
            "2026-11-13T02:30:00Z",
        ),
        finished(
            "r1",
            "physical",
            BackupPhase::Running,
            "2026-11-21T02:30:00Z",
        ),
    ];
    assert_eq!(expired(&schedule, &backups, now()), ["b1", "b2", "f1"]);

    let mut seen = observed();
    seen.backups = backups;
    let plan = plan(&schedule, &seen, &settings(), now());
    assert_eq!(plan.expire, ["b1", "b2", "f1"]);
    assert_eq!(
        plan.status
            .last_successful_backup
            .as_ref()
            .map(|b| b.name.as_str()),
        Some("b4")
    );
    assert_eq!(
        plan.status
            .last_failed_backup
            .as_ref()
            .map(|b| b.name.as_str()),
        Some("f4")
    );
    assert_eq!(
        reason(&plan.status, CONDITION_LAST_BACKUP_SUCCEEDED),
        ("True".into(), "Completed".into())
    );
    let window = plan.status.recovery_window.expect("window");
    assert_eq!(
        window.first_recoverability_point,
        Some(Time("2026-11-19T02:30:00Z".parse().expect("time"))),
        "the window starts at the oldest backup retention keeps"
    );

    let mut no_retention = schedule.clone();
    no_retention.spec.retention = None;
    assert_eq!(
        expired(&no_retention, &seen.backups, now()),
        ["f1"],
        "no policy keeps every completed backup"
    );
}

#[test]
fn the_archivers_report_sets_lag_window_and_condition() {
    let schedule = schedule();
    let mut seen = observed();
    seen.backups = vec![finished(
        "b1",
        "physical",
        BackupPhase::Completed,
        "2026-11-21T02:30:00Z",
    )];
    seen.archiver = Some(Ok(ArchiverReport {
        ready: true,
        not_ready_reason: None,
        last_archived_wal: Some("000000010000000000000042".into()),
        last_archived_time: Some("2026-11-21T10:29:40.123Z".parse().expect("time")),
        covered_until: Some("2026-11-21T10:29:38.900Z".parse().expect("time")),
        lag_seconds: 0.0,
        backlog_segments: 0,
        window: None,
    }));
    let plan = plan(&schedule, &seen, &settings(), now());
    // Times as the API stores them, so that the next reconcile compares equal and writes
    // nothing.
    let mut again = schedule.clone();
    again.status = Some(plan.status.clone());
    assert!(
        super::super::same_status(
            &plan.status,
            &super::plan(&again, &seen, &settings(), now()).status
        ),
        "an unchanged report changes nothing"
    );
    assert_eq!(
        plan.status
            .wal_archiving
            .as_ref()
            .and_then(|w| w.last_archived_time.clone()),
        Some(Time("2026-11-21T10:29:40Z".parse().expect("time")))
    );
    let wal = plan.status.wal_archiving.as_ref().expect("wal status");
    assert_eq!(
        wal.last_archived_wal.as_deref(),
        Some("000000010000000000000042")
    );
    assert_eq!(
        reason(&plan.status, CONDITION_WAL_ARCHIVING),
        ("True".into(), "Streaming".into())
    );
    let window = plan.status.recovery_window.as_ref().expect("window");
    assert_eq!(
        window.last_recoverability_point,
        Some(Time("2026-11-21T10:29:38Z".parse().expect("time"))),
        "the window ends where every commit is stored, not at the last upload"
    );

    seen.archiver = Some(Ok(ArchiverReport {
        ready: false,
        not_ready_reason: Some(
            "pg_hba.conf has no \"host replication\" line for role backup".into(),
        ),
        ..ArchiverReport::default()
    }));
    let plan = super::plan(&schedule, &seen, &settings(), now());
    assert_eq!(
        reason(&plan.status, CONDITION_WAL_ARCHIVING),
        ("False".into(), "ArchiverNotReady".into())
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "ArchiverNotReady")
    );

    seen.archiver = Some(Ok(ArchiverReport {
        ready: true,
        lag_seconds: 900.0,
        ..ArchiverReport::default()
    }));
    let plan = super::plan(&schedule, &seen, &settings(), now());
    assert_eq!(reason(&plan.status, CONDITION_WAL_ARCHIVING).1, "Lagging");
}

#[test]
fn the_window_read_from_the_repository_starts_after_a_gap_and_outlives_a_silent_archiver() {
    let schedule = schedule();
    let mut seen = observed();
    seen.backups = vec![
        finished(
            "b1",
            "physical",
            BackupPhase::Completed,
            "2026-11-19T02:30:00Z",
        ),
        finished(
            "b2",
            "physical",
            BackupPhase::Completed,
            "2026-11-21T02:30:00Z",
        ),
    ];
    let at = |t: &str| t.parse::<jiff::Timestamp>().expect("time");
    // The WAL after b1 has a gap: only from b2's end on is it unbroken.
    seen.archiver = Some(Ok(ArchiverReport {
        ready: true,
        covered_until: Some(at("2026-11-21T10:29:38.900Z")),
        window: Some(crate::agent::wal_archive::ProvenWindow {
            from: Some(at("2026-11-21T02:30:00.400Z")),
            until: Some(at("2026-11-21T10:29:30Z")),
            timeline: 1,
            checked_at: at("2026-11-21T10:29:50Z"),
        }),
        ..ArchiverReport::default()
    }));
    let plan = plan(&schedule, &seen, &settings(), now());
    let window = plan.status.recovery_window.clone().expect("window");
    assert_eq!(
        window.first_recoverability_point,
        Some(Time(at("2026-11-21T02:30:00Z"))),
        "not b1's end: the WAL from there has a gap"
    );
    assert_eq!(
        window.last_recoverability_point,
        Some(Time(at("2026-11-21T10:29:38Z")))
    );
    assert_eq!(window.proven_by.as_deref(), Some("walArchive"));
    assert_eq!(window.checked_at, Some(Time(at("2026-11-21T10:29:50Z"))));
    // Each backup shows what it reaches: b2 the whole window from its end on, b1 (a gap
    // follows it) its own end.
    let reach = |name: &str| {
        let (_, w) = plan
            .backup_windows
            .iter()
            .find(|(n, _)| n == name)
            .expect(name);
        let point = |t: &Option<Time>| t.as_ref().map(|t| t.0.to_string());
        (
            point(&w.first_recoverability_point),
            point(&w.last_recoverability_point),
            w.proven_by.clone(),
        )
    };
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        reach("b2"),
        (
            some("2026-11-21T02:30:00Z"),
            some("2026-11-21T10:29:38Z"),
            some("walArchive")
        )
    );
    assert_eq!(
        reach("b1"),
        (
            some("2026-11-19T02:30:00Z"),
            some("2026-11-19T02:30:00Z"),
            some("backup")
        )
    );
    // Written once: a backup whose status shows it already is left alone.
    let mut shown = seen.clone();
    for b in &mut shown.backups {
        b.window = plan
            .backup_windows
            .iter()
            .find(|(n, _)| *n == b.name)
            .map(|(_, w)| w.clone());
    }
    let again = super::plan(&schedule, &shown, &settings(), now());
    assert_eq!(again.backup_windows, []);

    // The archiver stops answering: the window stays as it was proven.
    let mut again = schedule.clone();
    again.status = Some(plan.status.clone());
    seen.archiver = None;
    let silent = super::plan(&again, &seen, &settings(), now());
    assert_eq!(silent.status.recovery_window, Some(window));

    // Without archiving the window is the backups' ends, and says so.
    let mut logical = schedule.clone();
    logical.spec.wal_archiving = None;
    let plan = super::plan(&logical, &seen, &settings(), now());
    let window = plan.status.recovery_window.expect("window");
    assert_eq!(window.proven_by.as_deref(), Some("backups"));
    assert_eq!(
        window.first_recoverability_point,
        Some(Time(at("2026-11-19T02:30:00Z")))
    );
    assert_eq!(plan.backup_windows, [], "each backup keeps its own end");
}

#[test]
fn retention_always_keeps_the_newest_completed_backup() {
    let mut schedule = schedule();
    schedule.spec.retention =
        Some(serde_json::from_value(serde_json::json!({"maxAge": "1d"})).expect("retention"));
    let backups = vec![
        finished(
            "b1",
            "physical",
            BackupPhase::Completed,
            "2026-11-01T02:30:00Z",
        ),
        finished(
            "b2",
            "physical",
            BackupPhase::Completed,
            "2026-11-02T02:30:00Z",
        ),
        finished(
            "l1",
            "logical",
            BackupPhase::Completed,
            "2026-11-03T02:30:00Z",
        ),
    ];
    // Every backup is older than a day (the schedule stopped working): the newest of each
    // method stays all the same.
    assert_eq!(expired(&schedule, &backups, now()), ["b1"]);
}

#[test]
fn retention_deletes_a_chain_from_its_newest_incremental_and_keeps_what_kept_ones_build_on() {
    let mut schedule = schedule();
    schedule.spec.retention =
        Some(serde_json::from_value(serde_json::json!({"keepLast": 2})).expect("retention"));
    let backup = |name: &str, day: u32, parent: Option<&str>| {
        let mut b = finished(
            name,
            "physical",
            BackupPhase::Completed,
            &format!("2026-11-{day:02}T02:30:00Z"),
        );
        b.recorded = Some((format!("id-{name}"), "sha".into()));
        b.parent = parent.map(|p| format!("id-{p}"));
        b
    };
    // full1 <- inc1 <- inc2, then full2 <- inc3: the last two are full2 and inc3.
    let mut backups = vec![
        backup("full1", 1, None),
        backup("inc1", 2, Some("full1")),
        backup("inc2", 3, Some("inc1")),
        backup("full2", 4, None),
        backup("inc3", 5, Some("full2")),
    ];
    assert_eq!(expired(&schedule, &backups, now()), ["inc2"]);
    // Being deleted, inc2 still holds its chain; once gone, the next link goes.
    backups[2].deleting = true;
    assert!(expired(&schedule, &backups, now()).is_empty());
    backups.remove(2);
    assert_eq!(expired(&schedule, &backups, now()), ["inc1"]);
    backups.remove(1);
    assert_eq!(expired(&schedule, &backups, now()), ["full1"]);

    // keepLast 1 keeps inc3, and with it full2.
    schedule.spec.retention =
        Some(serde_json::from_value(serde_json::json!({"keepLast": 1})).expect("retention"));
    let backups = vec![backup("full2", 4, None), backup("inc3", 5, Some("full2"))];
    assert!(expired(&schedule, &backups, now()).is_empty());
}

#[test]
fn volume_snapshot_schedules_run_and_keep_their_snapshots_apart() {
    let mut schedule = schedule();
    schedule.spec.method = ScheduleMethod::VolumeSnapshot;
    schedule.spec.wal_archiving = None;
    schedule.spec.template.repository = None;
    let mut seen = observed();
    let snapshot = |name: &str, time: &str| {
        let mut b = crate::api::VolumeSnapshotBackup::new(
            name,
            serde_json::from_value(serde_json::json!({
                "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}
            }))
            .expect("spec"),
        );
        b.metadata.creation_timestamp = Some(Time(time.parse().expect("time")));
        b.status = Some(crate::api::VolumeSnapshotBackupStatus {
            phase: Some(BackupPhase::Completed),
            completed_at: Some(Time(time.parse().expect("time"))),
            ..Default::default()
        });
        ScheduledBackup::from(&b)
    };
    seen.backups = vec![
        snapshot("s1", "2026-11-18T02:30:00Z"),
        snapshot("s2", "2026-11-19T02:30:00Z"),
        snapshot("s3", "2026-11-20T02:30:00Z"),
        // A physical backup from before the method changed is not one of the last two
        // snapshots, and the snapshots do not push it out.
        finished(
            "p1",
            "physical",
            BackupPhase::Completed,
            "2026-11-01T02:30:00Z",
        ),
    ];
    let plan = plan(&schedule, &seen, &settings(), now());
    assert!(plan.owned.is_some(), "the CronJob is made");
    assert_eq!(
        reason(&plan.status, CONDITION_READY),
        ("True".into(), "Active".into())
    );
    assert_eq!(plan.expire, ["s1"]);
    assert_eq!(
        plan.status.last_successful_backup.map(|b| b.name),
        Some("s3".into())
    );
}

fn verifying_schedule() -> BackupSchedule {
    let mut schedule = schedule();
    schedule.spec.verify = Some(crate::api::ScheduledVerify {
        schedule: "0 6 * * 0".into(),
    });
    schedule
}

#[test]
fn scheduled_restore_tests_get_their_own_cron_job() {
    let plan = plan(&verifying_schedule(), &observed(), &settings(), now());
    let owned = plan.owned.expect("objects");
    let verify = owned.verify_cron_job.expect("the restore-test CronJob");
    assert_eq!(verify.metadata.name.as_deref(), Some("nightly-verify"));
    let cron = verify.spec.as_ref().expect("spec");
    assert_eq!(cron.schedule, "0 6 * * 0");
    assert_eq!(cron.concurrency_policy.as_deref(), Some("Forbid"));
    let job = cron.job_template.spec.as_ref().expect("job");
    assert_eq!(
        job.backoff_limit,
        Some(0),
        "a failed test is a result, not a retry"
    );
    let pod = job.template.spec.as_ref().expect("pod");
    assert_eq!(
        pod.service_account_name, None,
        "no Kubernetes API for the test"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:16-", env!("CARGO_PKG_VERSION")))
    );
    // Nothing the schedule made yet: nothing to test, and never whatever the repository
    // holds.
    assert_eq!(cron.suspend, Some(true));
    assert_eq!(reason(&plan.status, "Verified").1, "NotRunYet");

    // Then the schedule's newest completed backup, only as its backup recorded it.
    let mut made = observed();
    for (name, time, id) in [
        ("nightly-1", "2026-11-20T02:00:00Z", "20261120T020000Z"),
        ("nightly-2", "2026-11-21T02:00:00Z", "20261121T020000Z"),
    ] {
        let mut backup = finished(name, "logical", BackupPhase::Completed, time);
        backup.recorded = Some((id.into(), format!("{:0>64}", name.len())));
        made.backups.push(backup);
    }
    made.backups.push(finished(
        "nightly-3",
        "logical",
        BackupPhase::Failed,
        "2026-11-21T03:00:00Z",
    ));
    let pinned = super::plan(&verifying_schedule(), &made, &settings(), now());
    let verify = pinned
        .owned
        .expect("objects")
        .verify_cron_job
        .expect("CronJob");
    let cron = verify.spec.as_ref().expect("spec");
    assert_ne!(cron.suspend, Some(true));
    let job = cron.job_template.spec.as_ref().expect("job");
    let args = job.template.spec.as_ref().expect("pod").containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(
        &args[..7],
        [
            "verify",
            "--restore",
            "--json",
            "--backup",
            "20261121T020000Z",
            "--expect-sha256",
            &format!("{:0>64}", 9)
        ]
    );

    // Without verify there is no such CronJob and no condition.
    let plan = super::plan(&schedule(), &observed(), &settings(), now());
    assert!(plan.owned.expect("objects").verify_cron_job.is_none());
    assert!(find_condition(&plan.status.conditions, "Verified").is_none());
}

#[test]
fn bad_restore_test_settings_are_refused() {
    let mut bad_cron = verifying_schedule();
    bad_cron.spec.verify = Some(crate::api::ScheduledVerify {
        schedule: "every sunday".into(),
    });
    let plan = plan(&bad_cron, &observed(), &settings(), now());
    assert!(plan.owned.is_none());
    assert_eq!(reason(&plan.status, CONDITION_READY).1, "InvalidSchedule");
}

#[test]
fn the_newest_restore_test_job_becomes_the_verified_condition() {
    let schedule = verifying_schedule();
    let status_of = |job: Option<(String, JobState)>, last: Option<BackupScheduleStatus>| {
        let mut s = schedule.clone();
        s.status = last;
        let observed = Observed {
            verify_job: job,
            ..observed()
        };
        let plan = plan(&s, &observed, &settings(), now());
        (plan.status, plan.events)
    };
    let report = serde_json::json!({
        "backupId": "20261121T023000Z", "kind": "physical", "verified": true,
        "restoreSeconds": 40.0, "seconds": 45.0, "databases": 1, "tables": 9, "rows": 500000,
        "matched": 9, "changedCount": 0, "countsRecorded": true,
        "summary": "9 tables, 500000 rows: 9 match the counts recorded at backup time"
    });
    let passed = JobState::Succeeded {
        started: None,
        finished: None,
        result: Some(report.to_string()),
    };
    let (status, events) = status_of(Some(("nightly-verify-1".into(), passed.clone())), None);
    assert_eq!(
        reason(&status, "Verified"),
        ("True".into(), "RestoreTestPassed".into())
    );
    let last = status.last_verification.clone().expect("last verification");
    assert_eq!((last.tables, last.rows), (Some(9), Some(500000)));
    assert_eq!(last.backup_id.as_deref(), Some("20261121T023000Z"));
    assert!(events.iter().any(|e| e.reason == "Verified"));
    // The same Job seen again: no second Event.
    let (_, again) = status_of(
        Some(("nightly-verify-1".into(), passed)),
        Some(status.clone()),
    );
    assert!(!again.iter().any(|e| e.reason == "Verified"));

    // A newer test running keeps the last verdict until it ends.
    let running = JobState::Active {
        started: None,
        stuck: None,
    };
    let (during, _) = status_of(
        Some(("nightly-verify-2".into(), running)),
        Some(status.clone()),
    );
    assert_eq!(reason(&during, "Verified").0, "True");

    let failed = JobState::Failed {
        reason: "VerificationFailed".into(),
        message: "restore test of backup 20261128T023000Z failed: shop/public.orders: 10 rows recorded, 9 restored".into(),
        finished: None,
    };
    let (status, events) = status_of(Some(("nightly-verify-2".into(), failed)), Some(during));
    assert_eq!(
        reason(&status, "Verified"),
        ("False".into(), "VerificationFailed".into())
    );
    assert_eq!(
        status.last_verification.and_then(|l| l.verified),
        Some(false)
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason == "VerificationFailed" && e.warning)
    );
}

#[test]
fn a_scheduled_run_whose_pod_cannot_start_says_so_until_a_backup_is_made() {
    let schedule = schedule();
    let run = |state: JobState, created: &str| JobRun {
        name: "nightly-trigger-29400000".into(),
        state,
        created: Some(created.parse().expect("time")),
    };
    let earlier = finished(
        "b1",
        "physical",
        BackupPhase::Completed,
        "2026-11-20T02:30:00Z",
    );
    let stuck = JobState::Active {
        started: None,
        stuck: Some((
            "PodNotCreated".into(),
            "exceeded quota: limit, requested: pods=1".into(),
        )),
    };
    let seen = Observed {
        trigger_job: Some(run(stuck.clone(), "2026-11-21T02:30:00Z")),
        backups: vec![earlier.clone()],
        ..observed()
    };
    let first = plan(&schedule, &seen, &settings(), now());
    let (value, reason_seen) = reason(&first.status, CONDITION_LAST_BACKUP_SUCCEEDED);
    assert_eq!(
        (value.as_str(), reason_seen.as_str()),
        ("False", "PodNotCreated")
    );
    let message = find_condition(&first.status.conditions, CONDITION_LAST_BACKUP_SUCCEEDED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("exceeded quota"), "{message}");
    assert!(
        first.events.iter().any(|e| e.reason == "PodNotCreated"),
        "a Warning the first time"
    );
    // The same problem again: no second Warning.
    let mut again = schedule.clone();
    again.status = Some(first.status.clone());
    assert!(
        plan(&again, &seen, &settings(), now())
            .events
            .iter()
            .all(|e| e.reason != "PodNotCreated")
    );
    // A Job that failed for good says so too.
    let failed = Observed {
        trigger_job: Some(run(
            JobState::Failed {
                reason: "DeadlineExceeded".into(),
                message: "Job was active longer than specified deadline".into(),
                finished: None,
            },
            "2026-11-21T02:30:00Z",
        )),
        ..seen.clone()
    };
    assert_eq!(
        reason(
            &plan(&schedule, &failed, &settings(), now()).status,
            CONDITION_LAST_BACKUP_SUCCEEDED
        ),
        ("False".into(), "TriggerFailed".into())
    );
    // Once the run made its backup, the backup's outcome is the word.
    let made = Observed {
        backups: vec![
            earlier,
            finished(
                "b2",
                "physical",
                BackupPhase::Completed,
                "2026-11-21T02:31:00Z",
            ),
        ],
        ..seen
    };
    assert_eq!(
        reason(
            &plan(&schedule, &made, &settings(), now()).status,
            CONDITION_LAST_BACKUP_SUCCEEDED
        ),
        ("True".into(), "Completed".into())
    );
}

#[test]
fn every_pod_of_a_schedule_is_placed_as_its_template_says() {
    let mut schedule = schedule();
    schedule.spec.template.job = serde_json::from_value(serde_json::json!({
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "backups",
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchLabels": {"app": "pg"}}}}]}}
    }))
    .expect("job options");
    let plan = plan(&schedule, &observed(), &settings(), now());
    let owned = plan.owned.expect("objects");
    let trigger = owned
        .cron_job
        .spec
        .expect("cron spec")
        .job_template
        .spec
        .expect("job");
    let archiver = owned
        .archiver
        .expect("archiver")
        .spec
        .expect("deployment spec");
    for pod in [
        trigger.template.spec.expect("trigger pod"),
        archiver.template.spec.expect("archiver pod"),
    ] {
        assert_eq!(
            pod.node_selector
                .as_ref()
                .and_then(|s| s.get("pool"))
                .map(String::as_str),
            Some("batch")
        );
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert_eq!(pod.priority_class_name.as_deref(), Some("backups"));
        assert!(pod.affinity.is_some());
    }
}
