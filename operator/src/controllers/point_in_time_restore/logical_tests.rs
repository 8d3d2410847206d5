//! Tests of a PointInTimeRestore of tables from a logical backup: the Job, refusals, failures.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;

use super::super::plan::{Observed, Plan, SourceObject, Step, plan};
use crate::{
    api::{
        CONDITION_READY, PointInTimeRestore, PointInTimeRestoreSpec, RestorePhase, find_condition,
    },
    controllers::job_state::JobState,
    k8s::{agent_pod::AgentSettings, fixtures::references},
};

fn now() -> Timestamp {
    "2026-12-05T10:00:00Z".parse().expect("time")
}

fn restore(logical: serde_json::Value) -> PointInTimeRestore {
    let spec: PointInTimeRestoreSpec = serde_json::from_value(serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "source": {"postgresBackup": "nightly-1"},
        "recoveryTarget": {"immediate": true},
        "mode": "inPlace",
        "logical": logical,
    }))
    .expect("spec");
    let mut restore = PointInTimeRestore::new("orders-back", spec);
    restore.metadata.namespace = Some("shop".into());
    restore.metadata.uid = Some("uid-logical".into());
    restore.metadata.generation = Some(1);
    restore
}

fn source(phase: &str, method: &str) -> SourceObject {
    let mut backup = crate::k8s::fixtures::backup(method);
    backup.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": phase, "backupId": "20261205T020000Z", "sha256": "5e".repeat(32),
            "databases": ["shop", "crm"], "serverVersion": "16.4"
        }))
        .expect("status"),
    );
    SourceObject::Backup(Some(Box::new(backup)))
}

fn observed() -> Observed {
    let mut refs = references("postgres:16.4");
    if let Some(spec) = refs.stateful_set.as_mut().and_then(|s| s.spec.as_mut()) {
        spec.replicas = Some(2);
    }
    Observed {
        references: refs,
        pods: Vec::new(),
        claims: Vec::new(),
        source: source("Completed", "logical"),
        rivals: Vec::new(),
        jobs: BTreeMap::new(),
        clone: None,
        clone_pods: Vec::new(),
        verification: None,
        target_cluster: None,
        restore_pods: 0,
        refused: None,
        stored_stateful_set: None,
        snapshot_pick: None,
        snapshot_storage: Vec::new(),
        claim_limits: None,
        volumes: Default::default(),
    }
}

fn step(restore: &mut PointInTimeRestore, observed: &Observed) -> Plan {
    let plan = plan(restore, observed, &AgentSettings::default(), now());
    restore.status = Some(plan.status.clone());
    plan
}

fn the_job(plan: &Plan) -> &Job {
    match plan.steps.as_slice() {
        [Step::CreateJob(job)] => job,
        other => panic!("one Job and nothing else: {other:?}"),
    }
}

fn ready(plan: &Plan) -> (String, String) {
    let c = find_condition(&plan.status.conditions, CONDITION_READY).expect("Ready");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_table_comes_back_beside_the_live_one_by_one_job_against_the_primary() {
    let mut restore = restore(serde_json::json!({
        "database": "shop", "tables": ["sales.orders"], "intoDatabase": "shop_yesterday"
    }));
    let mut seen = observed();
    let plan = step(&mut restore, &seen);
    assert_eq!(plan.status.phase, Some(RestorePhase::Restoring));
    let job = the_job(&plan);
    let name = job.metadata.name.clone().expect("name");
    assert_eq!(plan.status.restore_job_name.as_deref(), Some(name.as_str()));
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default().join(" ");
    for wanted in [
        "restore --backup 20261205T020000Z --expect-sha256 5e5e",
        "--logical --database shop --table sales.orders --into-database shop_yesterday",
        "--expect-cluster pgdata",
    ] {
        assert!(args.contains(wanted), "{wanted:?} in {args}");
    }
    assert!(!args.contains("--clean"), "{args}");
    let env = |key: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == key)
            .and_then(|e| e.value.clone())
    };
    // Every pod is asked; the agent writes into the one that is the primary.
    assert_eq!(
        env("PGHOST").as_deref(),
        Some("pg-0.pg-headless,pg-1.pg-headless")
    );
    assert_eq!(env("PGBACKUP_SERVER_ROLE").as_deref(), Some("primary"));
    assert_eq!(job.spec.as_ref().and_then(|s| s.backoff_limit), Some(0));

    // Running: nothing more to do; done: the agent's words are the status.
    seen.jobs.insert(
        name.clone(),
        JobState::Active {
            started: None,
            stuck: None,
        },
    );
    let plan = step(&mut restore, &seen);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert_eq!(plan.status.phase, Some(RestorePhase::Restoring));
    seen.jobs.insert(
        name,
        JobState::Succeeded {
            started: None,
            finished: None,
            result: Some("restored tables [\"sales.orders\"] of shop into shop_yesterday".into()),
        },
    );
    let plan = step(&mut restore, &seen);
    assert_eq!(plan.status.phase, Some(RestorePhase::Completed));
    assert_eq!(ready(&plan), ("True".into(), "Completed".into()));
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("shop_yesterday")),
        "{:?}",
        plan.status.message
    );
    assert_eq!(plan.requeue, None);
}

#[test]
fn what_cannot_be_restored_is_refused_before_anything_runs() {
    type Change = fn(&mut PointInTimeRestore, &mut Observed);
    let cases: [(&str, Change); 6] = [
        ("PhysicalSource", |_, o| {
            o.source = source("Completed", "physical");
        }),
        ("DatabaseNotInBackup", |r, _| {
            if let Some(l) = r.spec.logical.as_mut() {
                l.database = Some("billing".into());
            }
        }),
        ("NotConfirmed", |r, _| {
            if let Some(l) = r.spec.logical.as_mut() {
                l.clean = true;
            }
        }),
        ("RestoreInProgress", |_, o| {
            o.rivals = vec!["back-to-noon".into()];
        }),
        ("StatefulSetBusy", |_, o| {
            if let Some(sts) = o.references.stateful_set.as_mut() {
                sts.metadata.annotations = Some(
                    [(
                        crate::k8s::scale::ANNOTATION_SCALED_DOWN_BY.to_string(),
                        "PointInTimeRestore/back-to-noon".to_string(),
                    )]
                    .into(),
                );
            }
        }),
        ("SourceNotFound", |_, o| {
            o.source = SourceObject::Backup(None)
        }),
    ];
    for (reason, change) in cases {
        let mut restore = restore(serde_json::json!({"database": "shop"}));
        let mut seen = observed();
        change(&mut restore, &mut seen);
        let plan = step(&mut restore, &seen);
        assert_eq!(plan.status.phase, Some(RestorePhase::Failed), "{reason}");
        assert_eq!(ready(&plan).1, reason);
        assert!(plan.steps.is_empty(), "{reason}: {:?}", plan.steps);
    }
    // A backup still running is waited for.
    let mut restore = restore(serde_json::json!({}));
    let mut seen = observed();
    seen.source = source("Running", "logical");
    let plan = step(&mut restore, &seen);
    assert_eq!(plan.status.phase, Some(RestorePhase::Validating));
    assert_eq!(ready(&plan).1, "SourceNotReady");
    assert!(plan.steps.is_empty());
}

#[test]
fn a_failed_stuck_or_lost_job_says_so_and_nothing_rolls_back() {
    let mut restore = restore(serde_json::json!({"database": "shop", "clean": true}));
    restore.spec.confirm = true;
    let mut seen = observed();
    let plan = step(&mut restore, &seen);
    let name = the_job(&plan).metadata.name.clone().expect("name");
    assert!(
        the_job(&plan).spec.as_ref().is_some_and(|s| {
            let args = s.template.spec.as_ref().expect("pod").containers[0]
                .args
                .clone()
                .unwrap_or_default();
            args.contains(&"--clean".to_string())
        }),
        "clean with confirm"
    );

    seen.jobs.insert(
        name.clone(),
        JobState::Active {
            started: None,
            stuck: Some(("ImagePullBackOff".into(), "no such image".into())),
        },
    );
    let plan = step(&mut restore.clone(), &seen);
    assert_eq!(plan.status.phase, Some(RestorePhase::Restoring));
    assert_eq!(ready(&plan).1, "ImagePullBackOff");

    seen.jobs.insert(
        name.clone(),
        JobState::Failed {
            reason: "Invalid".into(),
            message: "databases [\"shop\"] already exist".into(),
            finished: None,
        },
    );
    let plan = step(&mut restore.clone(), &seen);
    assert_eq!(plan.status.phase, Some(RestorePhase::Failed));
    assert_eq!(ready(&plan).1, "Invalid");
    assert!(plan.steps.is_empty(), "no scaling, no put-back");

    seen.jobs.clear();
    let plan = step(&mut restore.clone(), &seen);
    assert_eq!(ready(&plan).1, "JobLost");

    // The API server refused the Job (a quota): failed, not rolled back.
    let mut fresh = self::restore(serde_json::json!({}));
    let mut refused = observed();
    refused.refused = Some("to create Job: exceeded quota".into());
    let plan = step(&mut fresh, &refused);
    assert_eq!(plan.status.phase, Some(RestorePhase::Failed));
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
}

#[test]
fn the_spec_becomes_the_agents_options() {
    let logical: crate::api::LogicalRestore = serde_json::from_value(serde_json::json!({
        "database": "shop", "schemas": ["sales", "crm"], "schemaOnly": true, "noOwner": true, "jobs": 4
    }))
    .expect("logical");
    assert_eq!(
        logical.agent_args().join(" "),
        "--logical --database shop --schema sales --schema crm --jobs 4 --schema-only --no-owner"
    );
    assert_eq!(
        super::describe(&logical),
        "database shop (schemas [\"sales\", \"crm\"])"
    );
}
