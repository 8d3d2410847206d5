//! The PostgresBackup status under construction (pure): the phase, message and conditions
//! of a backup that waits, failed or completed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    agent::backup::BackupReport,
    api::{
        BackupPhase, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY,
        PostgresBackupStatus, STATUS_FALSE, STATUS_TRUE, set_condition,
    },
    controllers::job_state::JobState,
};

/// The status under construction.
pub(super) struct Next {
    pub(super) status: PostgresBackupStatus,
    pub(super) generation: Option<i64>,
    pub(super) now: Time,
}

impl Next {
    pub(super) fn condition(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
            self.now.clone(),
        );
    }

    /// Not started, for a reason the user can fix; retried.
    pub(super) fn waiting(&mut self, reason: &str, message: &str) {
        self.status.phase = Some(BackupPhase::Pending);
        self.status.message = Some(message.to_string());
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, reason, message);
    }

    pub(super) fn failed(&mut self, reason: &str, message: &str) {
        self.status.phase = Some(BackupPhase::Failed);
        self.status.message = Some(message.to_string());
        if self.status.completed_at.is_none() {
            self.status.completed_at = Some(self.now.clone());
        }
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, reason, message);
        self.condition(CONDITION_FAILED, STATUS_TRUE, reason, message);
    }

    pub(super) fn completed(&mut self, report: &BackupReport) {
        let s = &mut self.status;
        s.phase = Some(BackupPhase::Completed);
        s.backup_id = Some(report.backup_id.clone());
        s.location = Some(report.location.clone());
        s.started_at = Some(Time(report.begin_time));
        s.completed_at = Some(Time(report.end_time));
        s.size = i64::try_from(report.size).ok();
        s.stored_size = i64::try_from(report.stored_size).ok();
        s.sha256 = Some(report.manifest_sha256.clone());
        s.server_version = Some(report.server_version.clone());
        s.system_identifier = report.system_identifier.clone();
        s.timeline = report.timeline.map(i64::from);
        s.begin_lsn = report.begin_lsn.clone();
        s.end_lsn = report.end_lsn.clone();
        s.begin_wal = report.begin_wal.clone();
        s.end_wal = report.end_wal.clone();
        s.databases = report.databases.clone();
        s.kind = report.kind.as_deref().map(|kind| match kind {
            "physical" => "full".to_string(),
            other => other.to_string(),
        });
        s.parent = report.parent.clone();
        s.chain_length = report.chain_length.map(i64::from);
        s.source = report.source.clone();
        // A physical backup restores to its end; a schedule archiving WAL widens this.
        if s.kind.as_deref() != Some("logical") {
            let end = Time(crate::controllers::backup_schedule::status::whole_seconds(
                report.end_time,
            ));
            s.recovery_window = Some(crate::api::RecoveryWindow {
                first_recoverability_point: Some(end.clone()),
                last_recoverability_point: Some(end),
                proven_by: Some("backup".into()),
                checked_at: None,
            });
        }
        let seconds = (report.end_time.as_second() - report.begin_time.as_second()).max(0);
        let what = match (&report.parent, report.chain_length) {
            (Some(parent), Some(length)) => {
                format!("incremental backup (on top of {parent}, chain of {length})")
            }
            _ => s
                .kind
                .as_deref()
                .map_or("backup".into(), |k| format!("{k} backup")),
        };
        let instead = report.full_because.as_deref().map_or(String::new(), |why| {
            format!("; full, not incremental: {why}")
        });
        let from = report
            .source
            .as_deref()
            .map_or(String::new(), |source| format!(" from {source}"));
        let message = format!(
            "{what} {}{from} stored: {} read, {} stored, in {seconds} s{instead}",
            report.backup_id,
            crate::agent::progress::human_bytes(report.size),
            crate::agent::progress::human_bytes(report.stored_size),
        );
        s.message = Some(message.clone());
        self.condition(CONDITION_READY, STATUS_TRUE, "Completed", &message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, "Completed", "");
        self.condition(CONDITION_FAILED, STATUS_FALSE, "Completed", "");
    }

    /// The Job exists: its state, as the backup's status.
    pub(super) fn follow(&mut self, state: &JobState, job_name: &str) {
        self.status.job_name = Some(job_name.to_string());
        match state {
            JobState::Active {
                stuck: Some((reason, message)),
                ..
            } => {
                self.waiting(reason, &format!("the backup pod cannot start: {message}"));
            }
            JobState::Active {
                started,
                stuck: None,
            } => {
                self.status.phase = Some(BackupPhase::Running);
                self.status.started_at = started.clone().or(self.status.started_at.take());
                self.status.message = Some(format!("backup Job {job_name} is running"));
                self.condition(
                    CONDITION_READY,
                    STATUS_FALSE,
                    "Running",
                    "the backup is running",
                );
                self.condition(
                    CONDITION_PROGRESSING,
                    STATUS_TRUE,
                    "Running",
                    &format!("backup Job {job_name} is running"),
                );
            }
            JobState::Succeeded { result, .. } => {
                match result.as_deref().and_then(|r| serde_json::from_str::<BackupReport>(r).ok()) {
                    Some(report) => self.completed(&report),
                    None => self.failed(
                        "ResultMissing",
                        &format!("the backup Job {job_name} succeeded but left no report; `pgbackup list` shows what the repository holds"),
                    ),
                }
            }
            JobState::Failed {
                reason,
                message,
                finished,
            } => {
                self.status.completed_at = finished.clone();
                self.failed(reason, message);
            }
        }
    }
}
