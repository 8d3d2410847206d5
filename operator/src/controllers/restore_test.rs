//! The result of a restore test Job (`pgbackup verify --restore`) as status figures and
//! words, shared by PostgresBackups and BackupSchedules.

use crate::{agent::verify::RestoreTest, api::VerificationStatus};

/// The figures of a passed test into the status.
pub(crate) fn record(verification: &mut VerificationStatus, test: &RestoreTest) {
    let count = |n: usize| i64::try_from(n).ok();
    verification.backup_id = Some(test.backup_id.clone());
    verification.verified = Some(test.verified);
    verification.restore_seconds = Some(test.restore_seconds);
    verification.reached_lsn = test.reached_lsn.clone();
    verification.tables = count(test.tables);
    verification.rows = i64::try_from(test.rows).ok();
    verification.matched = count(test.matched);
    verification.changed_during_backup = count(test.changed_count);
}

/// `restored in 12.3 s; 42 tables, 10,000 rows: 42 match …`.
pub(crate) fn passed_message(test: &RestoreTest) -> String {
    format!(
        "backup {} restored into a scratch server in {:.1} s{}; {}",
        test.backup_id,
        test.restore_seconds,
        test.reached_lsn
            .as_deref()
            .map(|lsn| format!(", recovered to {lsn}"))
            .unwrap_or_default(),
        test.summary
    )
}
