//! The recovery settings of a point-in-time restore: `restore_command` calling
//! `pgbackup wal-fetch` for this repository, the target, the timeline and what to do at the
//! target (promote). Written into `postgresql.auto.conf` for a later start, or handed to
//! the server on its command line by `--recover` (leaving the configuration untouched).

use std::{io::Write, path::Path};

use super::{RecoveryTarget, TimelineChoice};
use crate::agent::{AgentError, repository_args::RepositoryArgs};

/// Marks the block this restore appends to `postgresql.auto.conf`.
const BLOCK_START: &str =
    "# pgbackup restore: recovery settings (ignored once recovery has ended; remove them then)";

/// Settings for every session on a server started on restored data, given by the client
/// (`options` of the startup message): they override what the restored catalog sets per
/// role and database (`ALTER ROLE … SET session_preload_libraries`, `jit`), which the
/// server's command line does not. From PostgreSQL 17 on, login event triggers are off too.
pub fn restored_session_options(major: u32) -> String {
    let mut options =
        String::from("-c session_preload_libraries= -c local_preload_libraries= -c jit=off");
    if major >= 17 {
        options.push_str(" -c event_triggers=off");
    }
    options
}

/// `name = value` settings, values unquoted.
pub(super) type Settings = Vec<(&'static str, String)>;

/// Settings that turn off every way a restored configuration can make the server load a
/// library or run a command, for the servers the agent starts on restored data (recovery,
/// restore tests): the configuration came from the repository, and the agent's pod holds
/// the repository's credentials and key. Given on the command line, they override
/// `postgresql.conf`, `postgresql.auto.conf` and their includes. (`archive_library` is
/// unused with archiving off; `ssl_passphrase_command` with SSL off.)
pub const RESTORED_CODE_OFF: [(&str, &str); 8] = [
    ("shared_preload_libraries", ""),
    ("session_preload_libraries", ""),
    ("local_preload_libraries", ""),
    ("jit", "off"),
    ("jit_provider", "llvmjit"),
    ("recovery_end_command", ""),
    ("archive_cleanup_command", ""),
    ("primary_conninfo", ""),
];

/// The settings for recovering to `target`. Every target setting is given, the unused ones
/// empty (and before the one used), so that targets left in the restored configuration (a cluster restored before)
/// cannot add to or replace this one. Without an archive, `restore_command` finds nothing:
/// recovery then uses only the WAL inside the backup.
pub(super) fn recovery_settings(
    repository: &RepositoryArgs,
    archive: bool,
    target: &RecoveryTarget,
    inclusive: Option<bool>,
    timeline: Option<TimelineChoice>,
) -> Result<Settings, AgentError> {
    let mut settings = Vec::new();
    // PostgreSQL refuses archive recovery without a restore_command; with no archive the
    // command answers "not there" for every file and recovery reads the backup's own WAL.
    let command = if archive {
        restore_command(repository)?
    } else {
        "false".into()
    };
    settings.push(("restore_command", command));
    let mut targets: Settings = TARGETS.iter().map(|name| (*name, String::new())).collect();
    let mut set = |name: &'static str, value: String| {
        if let Some(slot) = targets.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        }
    };
    match target {
        RecoveryTarget::Time(time) => set(
            "recovery_target_time",
            time.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
        ),
        RecoveryTarget::Lsn(lsn) => set("recovery_target_lsn", crate::repository::format_lsn(*lsn)),
        RecoveryTarget::Xid(xid) => set("recovery_target_xid", xid.clone()),
        RecoveryTarget::Name(name) => set("recovery_target_name", name.clone()),
        RecoveryTarget::Immediate => set("recovery_target", "immediate".into()),
        RecoveryTarget::Latest => {}
    }
    // PostgreSQL refuses any target setting, even an empty one, once another kind of
    // target is set: the emptied ones come first.
    targets.sort_by_key(|(_, value)| !value.is_empty());
    settings.extend(targets);
    settings.push((
        "recovery_target_inclusive",
        on_off(inclusive.unwrap_or(true)),
    ));
    let timeline = match (timeline, target) {
        (Some(TimelineChoice::Id(id)), _) => id.to_string(),
        (Some(TimelineChoice::Current), _) | (None, RecoveryTarget::Immediate) => "current".into(),
        (Some(TimelineChoice::Latest) | None, _) => "latest".into(),
    };
    settings.push(("recovery_target_timeline", timeline));
    settings.push(("recovery_target_action", "promote".into()));
    Ok(settings)
}

/// The recovery target settings, of which PostgreSQL allows one to be set.
const TARGETS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The settings without the target: recovery to the end of the archived WAL.
pub(super) fn without_target(settings: &Settings) -> Settings {
    settings
        .iter()
        .map(|(name, value)| {
            let value = if TARGETS.contains(name) {
                String::new()
            } else {
                value.clone()
            };
            (*name, value)
        })
        .collect()
}

/// The settings with a `restore_command` that fetches timeline history files only: the
/// server replays the WAL it holds and nothing of the archive's, and still sees which
/// timelines the archive has when it picks a new one at promotion.
pub(super) fn history_only(settings: &Settings) -> Settings {
    settings
        .iter()
        .map(|(name, value)| {
            let value = if *name == "restore_command" && value != "false" {
                format!("case %f in *.history) {value} ;; *) exit 1 ;; esac")
            } else {
                value.clone()
            };
            (*name, value)
        })
        .collect()
}

/// `restore_command`: this binary's `wal-fetch` with the repository options. Credentials
/// are not written: the server's environment must carry them (as the agent's does).
fn restore_command(repository: &RepositoryArgs) -> Result<String, AgentError> {
    let exe = std::env::current_exe().map_err(|source| AgentError::Io {
        path: "the pgbackup executable".into(),
        source,
    })?;
    let mut words = vec![
        exe.to_string_lossy().into_owned(),
        "wal-fetch".into(),
        "--repository".into(),
        repository.repository.clone(),
        "--server".into(),
        repository.server.clone(),
    ];
    if let Some(endpoint) = repository.s3_endpoint.as_ref().filter(|e| !e.is_empty()) {
        words.extend(["--s3-endpoint".into(), endpoint.clone()]);
    }
    if let Some(region) = repository.s3_region.as_ref().filter(|r| !r.is_empty()) {
        words.extend(["--s3-region".into(), region.clone()]);
    }
    if repository.s3_force_path_style {
        words.push("--s3-force-path-style=true".into());
    }
    // A key given in the environment reaches wal-fetch through the server's environment.
    if let Some(file) = &repository.encryption_key_file {
        words.extend([
            "--encryption-key-file".into(),
            file.to_string_lossy().into_owned(),
        ]);
    }
    if repository.allow_unencrypted {
        words.push("--allow-unencrypted".into());
    }
    // PostgreSQL replaces %f and %p before the shell runs: a literal % is %%.
    let mut command: Vec<String> = words
        .iter()
        .map(|w| shell_quote(w).replace('%', "%%"))
        .collect();
    command.extend(["%f".into(), "%p".into()]);
    Ok(command.join(" "))
}

/// Appends the settings to `postgresql.auto.conf` and creates `recovery.signal`.
pub(super) fn write(pgdata: &Path, settings: &Settings) -> Result<(), AgentError> {
    let auto_conf = pgdata.join("postgresql.auto.conf");
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| AgentError::Io { path, source }
    };
    let existing = match std::fs::read_to_string(&auto_conf) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&auto_conf)(e)),
    };
    // A block from an earlier restore of this cluster ends where the file ends.
    let mut text = match existing.find(BLOCK_START) {
        Some(at) => existing[..at].trim_end().to_string(),
        None => existing.trim_end().to_string(),
    };
    text.push_str(&format!("\n\n{BLOCK_START}\n"));
    for (name, value) in settings {
        text.push_str(&format!("{name} = {}\n", conf_quote(value)));
    }
    let mut file = std::fs::File::create(&auto_conf).map_err(io_err(&auto_conf))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&auto_conf))?;
    signal_recovery(pgdata)
}

/// Creates `recovery.signal`: the server starts in targeted recovery. A backup read from a
/// standby carries that server's `standby.signal`, which would keep the restored server
/// waiting for WAL (or streaming from the old primary) forever: a restore makes a primary,
/// so it goes.
pub(super) fn signal_recovery(pgdata: &Path) -> Result<(), AgentError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| AgentError::Io { path, source }
    };
    let standby = pgdata.join("standby.signal");
    match std::fs::remove_file(&standby) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&standby)(e)),
        _ => {}
    }
    let signal = pgdata.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(io(&signal))
}

fn on_off(value: bool) -> String {
    if value { "on" } else { "off" }.to_string()
}

/// Quotes a word for `sh`, which runs `restore_command`.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Quotes a value for a PostgreSQL configuration file.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell_and_the_config_file() {
        assert_eq!(shell_quote("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(shell_quote("my server"), "'my server'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(conf_quote("a 'b' c"), "'a ''b'' c'");
        assert_eq!(conf_quote(r"C:\x"), r"'C:\\x'");
    }

    #[test]
    fn a_standby_signal_from_the_backup_gives_way_to_recovery() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("standby.signal"), b"").expect("standby.signal");
        signal_recovery(dir.path()).expect("signal");
        assert!(!dir.path().join("standby.signal").exists());
        assert!(dir.path().join("recovery.signal").exists());
        signal_recovery(dir.path()).expect("again, with nothing to remove");
    }

    #[test]
    fn targets_become_postgresql_settings() {
        let time: jiff::Timestamp = "2026-11-21T12:00:00.25Z".parse().expect("time");
        let repository = RepositoryArgs {
            repository: "file:///backups".into(),
            server: "ns-db".into(),
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_part_size_mib: 16,
            s3_concurrency: 4,
            s3_sse: None,
            s3_sse_kms_key_id: None,
            s3_storage_class: None,
            encryption_key: Some("never written".into()),
            encryption_key_file: Some("/keys/age key".into()),
            allow_unencrypted: false,
        };
        let settings = recovery_settings(
            &repository,
            true,
            &RecoveryTarget::Time(time),
            Some(false),
            None,
        )
        .expect("settings");
        let get = |name: &str| {
            settings
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("recovery_target_time"),
            Some("2026-11-21 12:00:00.25+00")
        );
        assert_eq!(get("recovery_target_inclusive"), Some("off"));
        assert_eq!(get("recovery_target_timeline"), Some("latest"));
        assert_eq!(get("recovery_target_action"), Some("promote"));
        let command = get("restore_command").expect("restore_command");
        assert!(
            command.ends_with(
                "wal-fetch --repository file:///backups --server ns-db --encryption-key-file '/keys/age key' %f %p"
            ),
            "{command}"
        );
        assert!(
            !command.contains("never written"),
            "the key itself stays out"
        );
        assert_eq!(
            get("recovery_target_xid"),
            Some(""),
            "unused targets are emptied"
        );
        let latest = without_target(&settings);
        assert!(
            latest
                .iter()
                .all(|(n, v)| !n.starts_with("recovery_target_t")
                    || n.ends_with("timeline")
                    || v.is_empty())
        );
        assert!(latest.iter().any(|(n, _)| *n == "restore_command"));
        let no_archive =
            recovery_settings(&repository, false, &RecoveryTarget::Immediate, None, None)
                .expect("settings");
        // PostgreSQL insists on a restore_command; without an archive it finds nothing.
        assert!(
            no_archive
                .iter()
                .any(|(n, v)| *n == "restore_command" && v == "false")
        );
    }
}
