//! `verify --restore` as the command runs it: which backup is tested (the one named, or the
//! latest logical or physical one), its manifest pinned with `--expect-sha256`, the restore
//! test itself ([`super::restore_test`]) in a scratch directory, and its outcome as a line
//! or as JSON.

use super::{VerifyArgs, expected_manifest, restore_test, scratch_dir};
use crate::{
    agent::{AgentError, process::PgBin},
    repository::{BackupKind, Catalog, Store},
};

/// `--restore`: the restore test of one backup.
pub(super) async fn restore(
    args: &VerifyArgs,
    store: &Store,
    catalog: &Catalog,
) -> Result<String, AgentError> {
    let manifest = match args.backup.as_deref() {
        Some(id) if id != "latest" => catalog.find(id).map(|(_, m)| m),
        _ => catalog
            .completed()
            .map(|(_, m)| m)
            .filter(|m| m.kind != BackupKind::Snapshot)
            .last(),
    }
    .ok_or_else(|| {
        AgentError::Invalid(format!(
            "no complete backup {} of server {}",
            args.backup.as_deref().unwrap_or("(logical or physical)"),
            args.repository.server
        ))
    })?;
    let expected;
    let manifest = match &args.expect_sha256 {
        Some(sha256) => {
            expected = expected_manifest(store, manifest, sha256).await?;
            &expected
        }
        None => manifest,
    };
    crate::agent::restore::check_authentic(args.repository.keys()?.as_ref(), manifest)?;
    let scratch = scratch_dir(args.scratch_dir.as_deref())?;
    tracing::info!(
        backup_id = %manifest.backup_id,
        "restore test of {} backup {} in {}",
        manifest.kind.as_str(),
        manifest.backup_id,
        scratch.path().display()
    );
    let pg_bin = PgBin(args.pg_bin.clone());
    let test = restore_test::run(&args.repository, manifest, &pg_bin, scratch.path()).await?;
    tracing::info!(backup_id = %test.backup_id, verified = test.verified, "{}", test.summary);
    if !test.verified {
        return Err(AgentError::Verification(format!(
            "restore test of backup {} failed: {}",
            test.backup_id, test.summary
        )));
    }
    if args.json {
        return serde_json::to_string(&test)
            .map_err(|e| AgentError::Invalid(format!("report: {e}")));
    }
    Ok(format!(
        "{} {}: restored in {:.1} s{}; {}",
        test.backup_id,
        test.kind,
        test.restore_seconds,
        test.reached_lsn
            .as_deref()
            .map(|lsn| format!(", recovered to {lsn} and out of recovery"))
            .unwrap_or_default(),
        test.summary
    ))
}
