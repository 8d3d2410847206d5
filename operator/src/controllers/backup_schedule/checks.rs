//! Whether a BackupSchedule's spec can be carried out (pure): what can be checked without
//! the cluster, then the references, and that no older schedule archives through the
//! same replication slot.

use kube::ResourceExt;

use super::retention::retention_policy;
use super::{build, copies, cron, plan::Observed};
use crate::{
    api::{BackupSchedule, ScheduleMethod},
    controllers::references::{self, Problem},
};

/// Checks what can be checked without the cluster, then the references and the slot.
pub(super) fn check(schedule: &BackupSchedule, observed: &Observed) -> Result<String, Problem> {
    check_spec(schedule)?;
    let template = &schedule.spec.template;
    if build::archiving(schedule) {
        check_slot(schedule, &observed.siblings)?;
    }
    let namespace = schedule.namespace().unwrap_or_default();
    let host = references::check(
        &namespace,
        &template.target,
        template.repository.as_ref(),
        &observed.references,
    )?;
    for (secret, key, field) in copies::secret_keys_needed(schedule) {
        references::check_secret_key(
            &namespace,
            &observed.references.secrets,
            (&secret, &key, &field),
        )?;
    }
    Ok(host)
}

/// What can be checked of a schedule without the cluster: its cron expressions, the
/// template against the method, a repository where one is needed, the options its backup
/// objects will carry, retention and second copies.
pub fn check_spec(schedule: &BackupSchedule) -> Result<(), Problem> {
    let spec = &schedule.spec;
    cron::check_schedule(&spec.schedule)
        .map_err(|why| Problem::new("InvalidSchedule", format!("spec.schedule: {why}")))?;
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
        return Err(Problem::new(
            "InvalidSpec",
            "the template's options do not match spec.method (template.logical needs method logical, template.physical physical, template.volumeSnapshot volumeSnapshot)",
        ));
    }
    if let Some(physical) = &template.physical {
        crate::controllers::postgres_backup::plan::check_physical(physical)
            .map_err(|message| Problem::new("InvalidSpec", format!("spec.template.{message}")))?;
    }
    if spec.method != ScheduleMethod::VolumeSnapshot && template.repository.is_none() {
        return Err(Problem::new(
            "InvalidSpec",
            "logical and physical backups need template.repository",
        ));
    }
    if let Some(verify) = &spec.verify {
        if spec.method == ScheduleMethod::VolumeSnapshot {
            return Err(Problem::new(
                "InvalidSpec",
                "verify restores the newest logical or physical backup from the repository; a volumeSnapshot schedule has none: rehearse restores of snapshots with a PointInTimeRestore in clone mode",
            ));
        }
        cron::check_schedule(&verify.schedule).map_err(|why| {
            Problem::new("InvalidSchedule", format!("spec.verify.schedule: {why}"))
        })?;
    }
    if build::archiving(schedule) && template.repository.is_none() {
        return Err(Problem::new(
            "InvalidSpec",
            "WAL archiving needs template.repository",
        ));
    }
    if let Some(options) = &template.volume_snapshot {
        crate::controllers::volume_snapshot_backup::check::validate_options(options)?;
    }
    retention_policy(schedule)?;
    copies::check(schedule)
}

/// Two archivers on one slot would each advance it past WAL only the other stored. The
/// schedule that claimed the slot first keeps it.
fn check_slot(schedule: &BackupSchedule, siblings: &[BackupSchedule]) -> Result<(), Problem> {
    let slot = build::slot_name(schedule);
    let target = &schedule.spec.template.target;
    let seniority = |s: &BackupSchedule| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.name_any(),
        )
    };
    let rival = siblings.iter().find(|other| {
        other.name_any() != schedule.name_any()
            && build::archiving(other)
            && build::slot_name(other) == slot
            && other.spec.template.target.stateful_set == target.stateful_set
            && seniority(other) < seniority(schedule)
    });
    match rival {
        Some(other) => Err(Problem::new(
            "SlotConflict",
            format!(
                "replication slot {slot} on StatefulSet {} is already used by BackupSchedule {}; set walArchiving.slotName to another name",
                target.stateful_set,
                other.name_any()
            ),
        )),
        None => Ok(()),
    }
}
