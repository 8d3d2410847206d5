//! Physical backups: `pg_basebackup` as one tar stream with the WAL it needs (`-X fetch`),
//! streamed into the repository. A temporary replication slot, held by our session for the
//! length of the backup, keeps the server from recycling that WAL before it is fetched; it
//! disappears with the session, even if the agent dies. PostgreSQL's `backup_manifest` is
//! kept as an object of its own as well, for incremental backups to build on.

use super::{
    BackupContext, MethodResult, counts,
    incremental::{self, Decision},
    manifest_tap::{Captured, ManifestTap},
    server_compressed, store_tool_output,
};
use crate::{
    agent::AgentError,
    api::CheckpointMode,
    postgres::{lsn_to_wal_file, parse_lsn},
    repository::{NewObject, ObjectEntry, ObjectRole, store_object},
};

pub(super) async fn run(ctx: &BackupContext<'_>) -> Result<MethodResult, AgentError> {
    let can_replicate: bool = ctx
        .client
        .query_one(
            "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(false);
    if !can_replicate {
        // The role is not named: it comes from a Secret.
        return Err(AgentError::Invalid(
            "the role of the credentials given needs the REPLICATION attribute for physical backups (ALTER ROLE <role> REPLICATION)".into(),
        ));
    }
    let slot = format!(
        "pgbackup_{}_{}",
        ctx.dir.backup_id.to_lowercase(),
        std::process::id()
    );
    ctx.client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true, true)",
            &[&slot],
        )
        .await
        .map_err(|source| crate::postgres::ConnectionError::Query {
            what: "creating a temporary replication slot",
            source,
        })?;

    let counters = if ctx.args.no_row_counts {
        counts::Before::new()
    } else {
        counts::before_physical(ctx).await
    };
    let Streamed {
        mut objects,
        stderr,
        backup_manifest,
        parent,
        full_because,
    } = stream(ctx).await?;
    if let Some(bytes) = backup_manifest {
        objects.push(store_backup_manifest(ctx, bytes).await?);
    }
    if let Some(parent) = &parent {
        incremental::check_still_there(ctx, parent).await?;
    }

    let (begin_lsn, timeline) = wal_start(&stderr).ok_or_else(|| {
        AgentError::Corrupt("pg_basebackup did not report its WAL start point".into())
    })?;
    let end_lsn = wal_end(&stderr).ok_or_else(|| {
        AgentError::Corrupt("pg_basebackup did not report its WAL end point".into())
    })?;
    let row_counts = if ctx.args.no_row_counts {
        Vec::new()
    } else {
        counts::after_physical(ctx, &counters).await
    };
    let segment = ctx.server.wal_segment_size;
    let wal_name = |lsn: &str| parse_lsn(lsn).map(|l| lsn_to_wal_file(timeline, l, segment));
    Ok(MethodResult {
        begin_wal: wal_name(&begin_lsn),
        // The end LSN points just past the last record: the segment before it when it falls
        // on a boundary.
        end_wal: parse_lsn(&end_lsn)
            .map(|l| lsn_to_wal_file(timeline, l.saturating_sub(1), segment)),
        objects,
        chain: parent.map(|p| p.chain).unwrap_or_default(),
        full_because,
        timeline: Some(timeline),
        begin_lsn: Some(begin_lsn),
        end_lsn: Some(end_lsn),
        databases: Vec::new(),
        row_counts,
    })
}

/// What the data stream left: its object, `pg_basebackup`'s stderr, PostgreSQL's
/// `backup_manifest`, and what an incremental backup was taken on or why a full one was.
struct Streamed {
    objects: Vec<ObjectEntry>,
    stderr: Vec<String>,
    backup_manifest: Option<Vec<u8>>,
    parent: Option<incremental::Parent>,
    full_because: Option<String>,
}

/// The data stream: incremental when asked and possible; a full one instead when the
/// policy says so, or (with `--fall-back-to-full`) when the server refuses the
/// incremental.
async fn stream(ctx: &BackupContext<'_>) -> Result<Streamed, AgentError> {
    let (parent, mut full_because) = match ctx.args.incremental {
        true => match incremental::decide(ctx).await? {
            Decision::Incremental(parent) => (Some(parent), None),
            Decision::Full(why) => (None, Some(why)),
        },
        false => (None, None),
    };
    let (data, stderr, backup_manifest, parent) = match basebackup(ctx, parent.as_ref()).await {
        Ok((data, stderr, manifest)) => (data, stderr, manifest, parent),
        Err(err) => {
            let Some(refused) = parent else {
                return Err(err);
            };
            let (err, summaries_missing) = incremental::explain_refusal(err, &refused);
            if !(summaries_missing && ctx.args.fall_back_to_full) {
                return Err(err);
            }
            tracing::warn!("{err}; taking a full backup instead");
            full_because = Some(err.to_string());
            let (data, stderr, manifest) = basebackup(ctx, None).await?;
            (data, stderr, manifest, None)
        }
    };
    Ok(Streamed {
        objects: vec![data],
        stderr,
        backup_manifest,
        parent,
        full_because,
    })
}

/// Stores PostgreSQL's `backup_manifest` as an object of its own.
async fn store_backup_manifest(
    ctx: &BackupContext<'_>,
    bytes: Vec<u8>,
) -> Result<ObjectEntry, AgentError> {
    let object = NewObject {
        name: "backup_manifest".into(),
        role: ObjectRole::BackupManifest,
        database: None,
    };
    let source = std::io::Cursor::new(bytes);
    Ok(store_object(
        ctx.store,
        &ctx.dir,
        object,
        source,
        &ctx.options,
        &ctx.progress,
    )
    .await?)
}

/// Streams `pg_basebackup` (incremental on `parent`) into the data object; the object, the
/// tool's stderr, and PostgreSQL's `backup_manifest` picked out of the stream.
async fn basebackup(
    ctx: &BackupContext<'_>,
    parent: Option<&incremental::Parent>,
) -> Result<(ObjectEntry, Vec<String>, Option<Vec<u8>>), AgentError> {
    let label = format!("pgbackup {}", ctx.dir.backup_id);
    let checkpoint = match ctx.args.checkpoint {
        CheckpointMode::Fast => "--checkpoint=fast",
        CheckpointMode::Spread => "--checkpoint=spread",
    };
    let incremental_arg =
        parent.map(|p| format!("--incremental={}", p.manifest_file.path().display()));
    let mut args = vec![
        "--format=tar",
        "--wal-method=fetch",
        checkpoint,
        "--verbose",
        "--no-password",
        "--label",
        &label,
    ];
    args.extend(incremental_arg.as_deref());
    let object = NewObject {
        name: "data.tar".into(),
        role: ObjectRole::Data,
        database: None,
    };
    if parent.is_none()
        && let Some(spec) = server_compressed::server_spec(ctx)
    {
        match server_compressed::basebackup(ctx, &args, &spec, object.clone()).await {
            Err(err) if server_compressed::unsupported(&err) => {
                tracing::warn!("{err}; the agent compresses instead");
            }
            other => return other,
        }
    }
    // The archive on standard output, PostgreSQL's backup_manifest added into it.
    args.splice(0..0, ["-D", "-"]);
    let captured = Captured::default();
    let tap = |stdout| ManifestTap::new(stdout, captured.clone());
    let env = ctx.connection.libpq_env();
    let (data, stderr) = store_tool_output(ctx, "pg_basebackup", &args, &env, object, tap).await?;
    let backup_manifest = captured.lock().ok().and_then(|mut slot| slot.take());
    Ok((data, stderr, backup_manifest))
}

/// `pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1`.
fn wal_start(stderr: &[String]) -> Option<(String, u32)> {
    stderr.iter().find_map(|line| {
        let rest = line.split("write-ahead log start point: ").nth(1)?;
        let (lsn, timeline) = rest.split_once(" on timeline ")?;
        Some((lsn.trim().to_string(), timeline.trim().parse().ok()?))
    })
}

/// `pg_basebackup: write-ahead log end point: 0/2000100`.
fn wal_end(stderr: &[String]) -> Option<String> {
    stderr.iter().find_map(|line| {
        Some(
            line.split("write-ahead log end point: ")
                .nth(1)?
                .trim()
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wal_range_from_pg_basebackup() {
        let stderr = [
            "pg_basebackup: initiating base backup, waiting for checkpoint to complete".to_string(),
            "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1".to_string(),
            "pg_basebackup: write-ahead log end point: 0/2000100".to_string(),
        ];
        assert_eq!(wal_start(&stderr), Some(("0/2000028".into(), 1)));
        assert_eq!(wal_end(&stderr), Some("0/2000100".into()));
        assert_eq!(wal_start(&stderr[..1]), None);
    }
}
