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
/// need no cluster (the schedule controller's own `check_spec`: cron expressions, template
/// against method, repository, options, retention, second copies), and what the operator
/// would refuse of the PostgresBackup its trigger makes from the template.
fn schedule_problem(schedule: &BackupSchedule) -> Option<Problem> {
    use pgbackup::{
        agent::trigger,
        api::ScheduleMethod,
        controllers::{backup_schedule::checks::check_spec, postgres_backup},
    };
    if let Err(problem) = check_spec(schedule) {
        return Some(problem);
    }
    match schedule.spec.method {
        ScheduleMethod::VolumeSnapshot => None,
        _ => trigger::postgres_backup(schedule, "example")
            .ok()
            .and_then(|backup| postgres_backup::plan::validate(&backup).err()),
    }
}
