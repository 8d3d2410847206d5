//! Spec rules of a PostgresBackup that the API server's CEL rules do not cover (pure).

use crate::{
    api::{BackupMethod, PostgresBackup},
    controllers::references::Problem,
};

/// Spec rules the API server's CEL rules do not cover, or features this version lacks.
pub fn validate(backup: &PostgresBackup) -> Result<(), Problem> {
    let spec = &backup.spec;
    if spec.logical.is_some() && spec.method != BackupMethod::Logical {
        return Err(Problem::new(
            "InvalidSpec",
            "logical options need method: logical",
        ));
    }
    if spec.physical.is_some() && spec.method != BackupMethod::Physical {
        return Err(Problem::new(
            "InvalidSpec",
            "physical options need method: physical",
        ));
    }
    if let Some(physical) = &spec.physical {
        check_physical(physical).map_err(|message| Problem::new("InvalidSpec", &message))?;
    }
    Ok(())
}

/// What the physical options need beyond the API server's rules (shared with the
/// schedules' templates).
pub(crate) fn check_physical(physical: &crate::api::PhysicalOptions) -> Result<(), String> {
    let policy = physical.full_every.is_some()
        || physical.full_after.is_some()
        || physical.fall_back_to_full;
    if policy && !physical.incremental {
        return Err(
            "physical.fullEvery, fullAfter and fallBackToFull need physical.incremental: true"
                .into(),
        );
    }
    if physical.full_every.is_some_and(|n| n < 1) {
        return Err("physical.fullEvery must be 1 or more".into());
    }
    if let Some(after) = &physical.full_after {
        crate::repository::parse_duration(after).map_err(|e| format!("physical.fullAfter: {e}"))?;
    }
    Ok(())
}
