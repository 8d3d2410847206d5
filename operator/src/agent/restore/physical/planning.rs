//! Planning a point-in-time restore before anything is written: the base (a backup, or a
//! snapshot copy), the timeline the target lies on and its history, the plan with its
//! window and warnings, the checks on the chosen base, and the settings recovery gets.

use super::Run;
use crate::{
    agent::{
        AgentError,
        restore::{
            Plan, PlanRequest, RecoveryTarget, Sources, TimelineChoice, backup_checks, plan,
            same_cluster, settings, snapshot_copy,
        },
    },
    repository::{BackupKind, Manifest, TimelinePath, WalFile},
};

impl Run<'_> {
    /// With `--snapshot-data`, what the data directory (a snapshot's copy) is as a base;
    /// `None` for a restore from a backup.
    pub(super) async fn snapshot_base(
        &self,
        restorable: &[&Manifest],
    ) -> Result<Option<snapshot_copy::Base>, AgentError> {
        if !self.args.snapshot_data {
            return Ok(None);
        }
        let keys = self.held.keys.as_ref();
        snapshot_copy::copy_base(self.args, restorable, self.pgdata, &self.pg_bin, keys)
            .await
            .map(Some)
    }

    /// The timeline recovery follows (asked for, the latest archived, or the base's own)
    /// and its history.
    pub(super) async fn timeline_path(
        &self,
        bases: &[&Manifest],
        chosen: Option<&str>,
    ) -> Result<TimelinePath, AgentError> {
        let server = &self.args.repository.server;
        let segment_size = self.held.segment_size;
        let base_kind = if self.args.snapshot_data {
            BackupKind::Snapshot
        } else {
            BackupKind::Physical
        };
        let backup_timeline = || {
            let id = chosen.filter(|b| *b != "latest");
            bases
                .iter()
                .rev()
                .find(|m| m.kind == base_kind && id.is_none_or(|id| m.backup_id == id))
                .and_then(|m| m.timeline)
                .unwrap_or(1)
        };
        let index = self.held.index.as_ref();
        for stray in index.map(|i| i.unplaced_timelines()).unwrap_or_default() {
            tracing::warn!(
                "the WAL archive of server {server} holds WAL of timeline {stray} but no history file for it ({}): that WAL is ignored",
                WalFile::history(stray).name(segment_size)
            );
        }
        let timeline = match (self.args.target_timeline, self.target) {
            (Some(TimelineChoice::Id(id)), _) => id,
            (Some(TimelineChoice::Current), _) | (None, RecoveryTarget::Immediate) => {
                backup_timeline()
            }
            _ => index
                .map(|i| i.latest_timeline())
                .unwrap_or_else(backup_timeline),
        };
        let history = match self.held.archive.history(timeline, segment_size).await? {
            Some(history) => history,
            None if index.is_none() => Vec::new(),
            None => {
                return Err(AgentError::Invalid(format!(
                    "the WAL archive of server {server} has no history file for timeline {timeline} ({})",
                    WalFile::history(timeline).name(segment_size)
                )));
            }
        };
        Ok(TimelinePath::new(timeline, &history))
    }

    /// The plan along `path`: the base, and the WAL to the target all there.
    pub(super) fn plan<'p>(
        &'p self,
        bases: &'p [&'p Manifest],
        path: &'p TimelinePath,
        chosen: Option<&'p str>,
    ) -> Result<Plan<'p>, AgentError> {
        let sources = Sources {
            backups: bases,
            index: self.held.index.as_ref(),
            identity: self.held.identity.as_ref(),
            coverage: self.held.coverage.as_ref(),
            path,
        };
        let request = PlanRequest {
            target: self.target,
            backup: chosen,
            snapshot: self.args.snapshot_data,
        };
        let plan = plan(&sources, &request).map_err(|e| AgentError::Invalid(e.to_string()))?;
        for warning in &plan.warnings {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            backup = %plan.backup.backup_id,
            wal_through = plan.wal_through.as_deref().unwrap_or("-"),
            "restoring to {} from backup {} ({})",
            self.target,
            plan.backup.backup_id,
            plan.window
        );
        Ok(plan)
    }

    /// The checks on the chosen base that need no data written: the cluster it is of,
    /// its manifest (authentic, as pinned), and the server binary for `--recover`.
    pub(super) async fn check_before_writing(
        &self,
        backup: &Manifest,
        from_copy: bool,
    ) -> Result<(), AgentError> {
        let args = self.args;
        if let Some(expected) = &args.expect_cluster {
            same_cluster::check(
                expected,
                backup,
                Some(self.pgdata),
                args.set_aside.as_deref(),
            )?;
        }
        if !from_copy {
            backup_checks::check_authentic(self.held.keys.as_ref(), backup)?;
        }
        backup_checks::check_pinned(args, self.store, backup).await?;
        if args.recover {
            backup_checks::check_server_version(&self.pg_bin, backup).await?;
        }
        Ok(())
    }

    /// The recovery settings. A copy without a label is consistent once its own WAL is
    /// replayed: "immediate" is the end of that WAL, recovered without any WAL of the
    /// archive.
    pub(super) fn recovery_settings(
        &self,
        from_copy: bool,
    ) -> Result<settings::Settings, AgentError> {
        let args = self.args;
        let archive = self.held.identity.is_some();
        if from_copy && *self.target == RecoveryTarget::Immediate {
            return Ok(settings::history_only(&settings::recovery_settings(
                &args.repository,
                archive,
                &RecoveryTarget::Latest,
                None,
                Some(TimelineChoice::Current),
            )?));
        }
        settings::recovery_settings(
            &args.repository,
            archive,
            self.target,
            args.target_inclusive,
            args.target_timeline,
        )
    }
}
