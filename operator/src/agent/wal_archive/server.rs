//! What the archiver asks the database: its identity and timeline over a replication
//! connection (through psql, which speaks libpq and its TLS), and its replication slot over
//! SQL. The slot is not used for streaming: the archiver advances it only past WAL that is
//! stored, so the server keeps everything not yet in the repository even if the archiver
//! and its local spool are lost.

use tokio_postgres::Client;

use crate::{
    agent::{
        AgentError,
        process::{PgBin, Tool},
    },
    postgres::{ConnectionError, parse_lsn},
    repository::{HistoryEntry, Store, WalArchive, format_lsn, parse_history},
};

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// The server's current timeline.
    pub timeline: u32,
}

/// Runs one replication command through psql; returns its output.
async fn replication_command(
    pg_bin: &PgBin,
    env: &[(&str, String)],
    command: &str,
) -> Result<String, AgentError> {
    let mut tool = Tool::spawn(
        &pg_bin.program("psql"),
        &[
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "\u{1f}",
            "--no-password",
            "-d",
            "replication=true",
            "-c",
            command,
        ],
        env,
        false,
    )?;
    let mut stdout = tool
        .take_stdout()
        .ok_or_else(|| AgentError::Invalid("psql has no stdout".into()))?;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out)
        .await
        .map_err(|source| AgentError::Io {
            path: "psql".into(),
            source,
        })?;
    tool.finish().await?;
    Ok(out)
}

/// The server's system identifier and timeline.
pub(super) async fn identify(
    pg_bin: &PgBin,
    env: &[(&str, String)],
) -> Result<Identity, AgentError> {
    let out = replication_command(pg_bin, env, "IDENTIFY_SYSTEM").await?;
    let mut fields = out.trim().split('\u{1f}');
    let system_identifier = fields.next().unwrap_or_default().to_string();
    let timeline = fields.next().and_then(|t| t.parse().ok());
    match timeline {
        Some(timeline) if !system_identifier.is_empty() => Ok(Identity {
            system_identifier,
            timeline,
        }),
        _ => Err(AgentError::Invalid(format!(
            "unexpected IDENTIFY_SYSTEM answer {out:?}"
        ))),
    }
}

/// The history file of `timeline` from the server: its name and content.
pub(super) async fn timeline_history(
    pg_bin: &PgBin,
    env: &[(&str, String)],
    timeline: u32,
) -> Result<(String, String, Vec<HistoryEntry>), AgentError> {
    let out = replication_command(pg_bin, env, &format!("TIMELINE_HISTORY {timeline}")).await?;
    let (name, content) = out.split_once('\u{1f}').ok_or_else(|| {
        AgentError::Invalid(format!("unexpected TIMELINE_HISTORY answer {out:?}"))
    })?;
    // psql ends the row with a newline of its own.
    let content = content.strip_suffix('\n').unwrap_or(content).to_string();
    let history = parse_history(&content).map_err(AgentError::Corrupt)?;
    Ok((name.trim().to_string(), content, history))
}

/// Whether the archiver created `slot` for this archive (recorded in it). Archives of
/// archivers from before the record (WAL archived up to some moment, no record at all) and
/// slots named `pgbackup_…` are taken for the archiver's, and recorded now.
async fn created_here(archive: &WalArchive<'_, Store>, slot: &str) -> Result<bool, AgentError> {
    let recorded = archive.created_slots_record().await?;
    if recorded
        .as_ref()
        .is_some_and(|slots| slots.iter().any(|s| s == slot))
    {
        return Ok(true);
    }
    let archived_before_records = recorded.is_none() && archive.coverage().await?.is_some();
    if archived_before_records || slot.starts_with("pgbackup_") {
        archive.record_slot(slot, true).await?;
        return Ok(true);
    }
    Ok(false)
}

/// The archiver's slot: created (reserving WAL from now) when missing, and recorded in
/// the archive as the archiver's. An existing slot the archiver did not create is another
/// application's (a standby's, say): it is never advanced or dropped. Returns where the
/// slot holds WAL from.
pub(super) async fn ensure_slot(
    client: &Client,
    slot: &str,
    archive: &WalArchive<'_, Store>,
) -> Result<u64, AgentError> {
    let query = |what| move |source| ConnectionError::Query { what, source };
    let row = client
        .query_opt(
            // invalidation_reason is 17+: read through jsonb, NULL on older servers.
            "SELECT slot_type, active, restart_lsn::text, wal_status, \
             to_jsonb(s) ->> 'invalidation_reason' \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query("reading the replication slot"))?;
    let restart = match row {
        None => {
            // Recorded first: a slot that exists is always one the record names.
            archive.record_slot(slot, true).await?;
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_physical_replication_slot($1, true)",
                    &[&slot],
                )
                .await
                .map_err(query("creating the replication slot"))?;
            tracing::info!(slot, "created replication slot {slot}");
            row.get::<_, Option<String>>(0)
        }
        Some(row) => {
            let kind: String = row.get(0);
            let active: bool = row.get(1);
            let status: Option<String> = row.get(3);
            if kind != "physical" {
                return Err(AgentError::Invalid(format!(
                    "replication slot {slot} is a {kind} slot; the archiver needs its own physical slot"
                )));
            }
            if !created_here(archive, slot).await? {
                return Err(AgentError::Invalid(format!(
                    "replication slot {slot} exists and was not created by pgbackup's archiver for this archive: it is another application's (a standby's, say), which the archiver must neither advance nor drop; name another slot (walArchiving.slotName, --slot)"
                )));
            }
            if active {
                return Err(AgentError::Invalid(format!(
                    "replication slot {slot} is in use by another connection; is another archiver or a standby using it?"
                )));
            }
            let invalidated: Option<String> = row.get(4);
            if let Some(why) = slot_lost(slot, status.as_deref(), invalidated.as_deref()) {
                return Err(AgentError::Invalid(why));
            }
            row.get::<_, Option<String>>(2)
        }
    };
    restart.as_deref().and_then(parse_lsn).ok_or_else(|| {
        AgentError::Invalid(format!("replication slot {slot} holds no WAL position"))
    })
}

/// Why the server gave up the slot, when it did: WAL it removed (`max_slot_wal_keep_size`),
/// or on PostgreSQL 18 a slot unused for longer than `idle_replication_slot_timeout`.
fn slot_lost(slot: &str, wal_status: Option<&str>, invalidated: Option<&str>) -> Option<String> {
    let cause = match (invalidated, wal_status) {
        (Some("idle_timeout"), _) => "was invalidated by the server (idle_timeout): it went unused longer than idle_replication_slot_timeout, the archiver stopped that long (raise the setting, or keep the archiver running)".to_string(),
        (Some("wal_removed"), _) | (None, Some("lost")) => {
            "has lost WAL the server removed (max_slot_wal_keep_size)".to_string()
        }
        (Some(reason), _) => format!("was invalidated by the server ({reason})"),
        (None, _) => return None,
    };
    Some(format!(
        "replication slot {slot} {cause}: WAL since is missing from the archive; drop the slot (SELECT pg_drop_replication_slot('{slot}')) to start archiving afresh, and take a new base backup"
    ))
}

/// The server's clock and how far it has inserted WAL (received, on a standby).
pub(super) async fn wal_position(client: &Client) -> Result<(jiff::Timestamp, u64), AgentError> {
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8, \
             (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                   ELSE pg_current_wal_insert_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|source| ConnectionError::Query {
            what: "reading the WAL position",
            source,
        })?;
    let millis: i64 = row.get(0);
    let lsn: Option<String> = row.get(1);
    let at = jiff::Timestamp::from_millisecond(millis)
        .map_err(|e| AgentError::Interrupted(format!("server clock: {e}")))?;
    let lsn = lsn
        .as_deref()
        .and_then(parse_lsn)
        // A standby that has not received WAL yet: try again later.
        .ok_or_else(|| AgentError::Interrupted("the server reports no WAL position yet".into()))?;
    Ok((at, lsn))
}

/// Lets the server recycle WAL before `lsn` (everything before it is stored).
pub(super) async fn advance_slot(client: &Client, slot: &str, lsn: u64) -> Result<(), AgentError> {
    client
        .query_one(
            // Never behind where the slot is (a slot created after older WAL was received).
            "SELECT a.end_lsn::text FROM pg_replication_slots s, \
             LATERAL pg_replication_slot_advance(s.slot_name, GREATEST($2::text::pg_lsn, s.restart_lsn)) a \
             WHERE s.slot_name = $1",
            &[&slot, &format_lsn(lsn)],
        )
        .await
        .map_err(|source| ConnectionError::Query {
            what: "advancing the replication slot",
            source,
        })?;
    Ok(())
}

/// Whether `slot` is taken for the archiver's when dropping: by the archive's record when it
/// can be read, else by its name alone.
async fn archivers(archive: Option<&WalArchive<'_, Store>>, slot: &str) -> bool {
    match archive {
        Some(archive) => match created_here(archive, slot).await {
            Ok(ours) => ours,
            Err(err) => {
                tracing::warn!(error = %err, "the archive's record of slots cannot be read");
                slot.starts_with("pgbackup_")
            }
        },
        None => slot.starts_with("pgbackup_"),
    }
}

/// Drops the archiver's slot; `false` when there is none. Refused while a connection
/// streams from it (a standby using the same name); the archiver itself only advances its
/// slot, so it must be stopped first.
pub(super) async fn drop_slot(
    client: &Client,
    slot: &str,
    archive: Option<&WalArchive<'_, Store>>,
) -> Result<String, AgentError> {
    let query = |what| move |source| ConnectionError::Query { what, source };
    let found: Option<(String, bool)> = client
        .query_opt(
            "SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query("reading the replication slot"))?
        .map(|row| (row.get(0), row.get(1)));
    match found {
        None => Ok(format!("replication slot {slot} does not exist")),
        // An archiver's slot is physical: a logical one of that name is another
        // application's change stream (logical replication, CDC), never pgbackup's.
        Some((kind, _)) if kind != "physical" => Ok(format!(
            "replication slot {slot} is a {kind} slot, not an archiver's: left as it is"
        )),
        Some(_) if !archivers(archive, slot).await => {
            tracing::warn!(
                slot,
                "replication slot {slot} was not created by pgbackup's archiver: left as it is"
            );
            Ok(format!(
                "replication slot {slot} was not created by pgbackup's archiver: left as it is (drop it by hand if it is unused)"
            ))
        }
        Some((_, true)) => Err(AgentError::Interrupted(format!(
            "replication slot {slot} is in use; stop the archiver first"
        ))),
        Some((_, false)) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(query("dropping the replication slot"))?;
            if let Some(archive) = archive
                && let Err(err) = archive.record_slot(slot, false).await
            {
                tracing::warn!(error = %err, "slot {slot} dropped; its record stays in the archive");
            }
            tracing::info!(slot, "dropped replication slot {slot}");
            Ok(format!("dropped replication slot {slot}"))
        }
    }
}
