//! The checks an example of a pgbackup object must pass wherever it is shown — the files
//! under `manifests/` and the YAML blocks of the documentation: it validates against the
//! generated CRD schema (unknown fields rejected), passes the CEL rules the API server
//! would run, reads back into the typed API, and asks for nothing the operator would
//! refuse before it starts any work.

use kube::{CustomResourceExt, core::cel::validate_cel};
use pgbackup::{
    api::{self, BackupSchedule, PointInTimeRestore, PostgresBackup, VolumeSnapshotBackup},
    controllers::references::Problem,
};
use serde_json::Value;

use super::schema::{open_api_schema, schema_errors};

/// Whether a document is meant as a pgbackup object (`apiVersion: pgbackup.io/…`).
pub fn is_pgbackup_object(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with(api::GROUP))
}

/// What is wrong with the pgbackup object `doc`, one line each, every line starting with
/// `name` (where the object is shown). Empty: an object the API server admits and the
/// operator takes on.
pub fn object_problems(name: &str, doc: &Value) -> Vec<String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let expected = format!("{}/{}", api::GROUP, api::VERSION);
    if api_version != expected {
        return vec![format!(
            "{name}: apiVersion {api_version:?} is not served (use {expected})"
        )];
    }
    let crds = api::crds();
    let Some(crd) = crds.iter().find(|c| c.spec.names.kind == kind) else {
        return vec![format!("{name}: {expected} has no kind {kind:?}")];
    };
    let mut problems: Vec<String> = schema_errors(&open_api_schema(crd), doc)
        .into_iter()
        .map(|e| format!("{name}: the API server refuses it: {e}"))
        .collect();
    problems.extend(match kind {
        "PostgresBackup" => check_typed::<PostgresBackup>(name, doc),
        "BackupSchedule" => check_typed::<BackupSchedule>(name, doc),
        "VolumeSnapshotBackup" => check_typed::<VolumeSnapshotBackup>(name, doc),
        "PointInTimeRestore" => check_typed::<PointInTimeRestore>(name, doc),
        other => vec![format!("{name}: no typed check for {other}")],
    });
    problems.extend(refused_by_operator(name, kind, doc));
    problems
}

/// Reads `value` as `K` and runs the CEL rules of its CRD on it.
pub fn check_typed<K>(name: &str, value: &Value) -> Vec<String>
where
    K: CustomResourceExt + serde::de::DeserializeOwned + serde::Serialize,
{
    let object: K = match serde_json::from_value(value.clone()) {
        Ok(object) => object,
        Err(e) => return vec![format!("{name}: does not read as {}: {e}", K::crd_name())],
    };
    match validate_cel(&object) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| {
                format!(
                    "{name}: the API server refuses it: {} ({})",
                    e.message, e.rule
                )
            })
            .collect(),
    }
}

/// What the operator's own checks (beyond the schema and CEL rules) would refuse in an
/// object before any work starts: the condition a user would find on it.
pub fn refused_by_operator(name: &str, kind: &str, doc: &Value) -> Vec<String> {
    use pgbackup::controllers::{postgres_backup, volume_snapshot_backup::check};
    let problem = match kind {
        "PostgresBackup" => serde_json::from_value::<PostgresBackup>(doc.clone())
            .ok()
            .and_then(|b| postgres_backup::plan::validate(&b).err()),
        "VolumeSnapshotBackup" => serde_json::from_value::<VolumeSnapshotBackup>(doc.clone())
            .ok()
            .and_then(|b| check::validate_options(&b.spec.snapshot).err()),
        "BackupSchedule" => serde_json::from_value::<BackupSchedule>(doc.clone())
            .ok()
            .and_then(|s| schedule_problem(&s)),
        _ => None,
    };
    problem
        .map(|p| {
            vec![format!(
                "{name}: the operator refuses it ({}): {}",
                p.reason, p.message
            )]
        })
        .unwrap_or_default()
}

/// The checks a BackupSchedule passes before the operator creates anything for it that
/// need no cluster: its cron expressions, the template against the method, a repository
/// where one is needed, the options each backup object will carry, and retention.
fn schedule_problem(schedule: &BackupSchedule) -> Option<Problem> {
    use pgbackup::{
        agent::trigger,
        api::ScheduleMethod,
        controllers::{
            backup_schedule::{build, cron, retention},
            postgres_backup,
            volume_snapshot_backup::check,
        },
    };
    let spec = &schedule.spec;
    let invalid = |message: &str| Some(Problem::new("InvalidSpec", message));
    if let Err(why) = cron::check_schedule(&spec.schedule) {
        return Some(Problem::new(
            "InvalidSchedule",
            format!("spec.schedule: {why}"),
        ));
    }
    let template = &spec.template;
    let mismatch = match spec.method {
        ScheduleMethod::Logical => {
            template.physical.is_some() || template.volume_snapshot.is_some()
        }
        ScheduleMethod::Physical => {
            template.logical.is_some() || template.volume_snapshot.is_some()
        }
        ScheduleMethod::VolumeSnapshot => template.logical.is_some() || template.physical.is_some(),
    };
    if mismatch {
        return invalid("the template's options do not match spec.method");
    }
    if spec.method != ScheduleMethod::VolumeSnapshot && template.repository.is_none() {
        return invalid("logical and physical backups need template.repository");
    }
    if build::archiving(schedule) && template.repository.is_none() {
        return invalid("WAL archiving needs template.repository");
    }
    if let Some(verify) = &spec.verify {
        if spec.method == ScheduleMethod::VolumeSnapshot {
            return invalid(
                "verify restores backups from the repository; a volumeSnapshot schedule has none",
            );
        }
        if let Err(why) = cron::check_schedule(&verify.schedule) {
            return Some(Problem::new(
                "InvalidSchedule",
                format!("spec.verify.schedule: {why}"),
            ));
        }
    }
    let backup_problem = match spec.method {
        ScheduleMethod::VolumeSnapshot => template
            .volume_snapshot
            .as_ref()
            .and_then(|options| check::validate_options(options).err()),
        _ => trigger::postgres_backup(schedule, "example")
            .ok()
            .and_then(|backup| postgres_backup::plan::validate(&backup).err()),
    };
    if backup_problem.is_some() {
        return backup_problem;
    }
    if let Err(problem) = retention::retention_policy(schedule) {
        return Some(problem);
    }
    for (i, copy) in spec.copies.iter().enumerate() {
        if let Err(why) = cron::check_schedule(&copy.schedule) {
            return Some(Problem::new(
                "InvalidSchedule",
                format!("spec.copies[{i}].schedule: {why}"),
            ));
        }
        if let Some(Err(problem)) = copy
            .retention
            .as_ref()
            .map(|r| retention::policy_of(r, &format!("spec.copies[{i}].retention")))
        {
            return Some(problem);
        }
    }
    None
}
