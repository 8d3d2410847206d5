//! Which server of a replicated database to work on. `PGHOST` may list several hosts,
//! comma-separated as libpq reads it (the operator lists every pod of the StatefulSet);
//! the agent asks each whether it is in recovery and keeps one of the role asked for:
//! the primary (where WAL is archived from, and backups by default), a standby (backups
//! that should not load the primary), or whichever answers first. Charts with replication
//! move the primary between pods; this is how a backup or the archiver finds it again.

use clap::ValueEnum;

use super::{ConnectionError, PgConnection};

/// The role of the server to connect to, as libpq's `target_session_attrs` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ServerRole {
    /// The first host that answers; a single host is used without asking.
    #[default]
    Any,
    /// The server that is not in recovery.
    Primary,
    /// A server in recovery.
    Standby,
    /// A server in recovery, else the primary.
    PreferStandby,
}

impl ServerRole {
    fn describe(self) -> &'static str {
        match self {
            Self::Any => "server",
            Self::Primary => "primary",
            Self::Standby | Self::PreferStandby => "standby",
        }
    }
}

/// What a host answered when asked whether it is in recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `pg_is_in_recovery()` is false.
    Primary,
    /// `pg_is_in_recovery()` is true.
    Standby,
    /// No answer: why.
    Failed(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Standby => f.write_str("standby"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

/// The host to use among `answers` (in the order the hosts were listed), or why none fits.
/// Two primaries at once (a split brain) are refused whenever the primary may be chosen:
/// WAL or a backup of the wrong one would be taken for the database's.
pub fn pick(wanted: ServerRole, answers: &[(String, Answer)]) -> Result<usize, String> {
    let of = |role: &Answer| {
        answers
            .iter()
            .enumerate()
            .filter(|(_, (_, answer))| answer == role)
            .map(|(index, _)| index)
            .collect::<Vec<_>>()
    };
    let (primaries, standbys) = (of(&Answer::Primary), of(&Answer::Standby));
    let answered = || {
        answers
            .iter()
            .map(|(host, answer)| format!("{host}: {answer}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let one_primary = || match primaries.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no server answers as the primary ({})", answered())),
        _ => Err(format!(
            "more than one server answers as the primary, refusing to choose ({})",
            answered()
        )),
    };
    match wanted {
        ServerRole::Any => answers
            .iter()
            .position(|(_, answer)| !matches!(answer, Answer::Failed(_)))
            .ok_or_else(|| format!("no server answers ({})", answered())),
        ServerRole::Primary => one_primary(),
        ServerRole::Standby => standbys
            .first()
            .copied()
            .ok_or_else(|| format!("no server answers as a standby ({})", answered())),
        ServerRole::PreferStandby => standbys.first().copied().map_or_else(one_primary, Ok),
    }
}

impl PgConnection {
    /// The hosts `PGHOST` lists.
    pub fn hosts(&self) -> Vec<&str> {
        self.args
            .pg_host
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// The connection to the one server of the role asked for (`--pg-server-role`): every
    /// listed host is asked at once; a single host with role `any` is used as it is.
    pub async fn choose_server(&self) -> Result<PgConnection, ConnectionError> {
        let wanted = self.args.pg_server_role;
        let hosts = self.hosts();
        if let ([host], ServerRole::Any) = (hosts.as_slice(), wanted) {
            return Ok(self.with_host(host));
        }
        let asked = hosts.iter().map(|host| async move {
            let connection = self.with_host(host);
            match connection.connect(None).await {
                Ok(client) => {
                    let answer = match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                        Ok(row) if row.get::<_, bool>(0) => Answer::Standby,
                        Ok(_) => Answer::Primary,
                        Err(err) => Answer::Failed(crate::agent::error_chain(&err)),
                    };
                    ((host.to_string(), answer), None)
                }
                Err(err) => (
                    (
                        host.to_string(),
                        Answer::Failed(crate::agent::error_chain(&err)),
                    ),
                    Some(err),
                ),
            }
        });
        let (answers, errors): (Vec<_>, Vec<_>) =
            futures::future::join_all(asked).await.into_iter().unzip();
        // No server could be reached or logged into: that is the failure (a refused login,
        // an unreachable database), in the words and with the reason of the first.
        if answers.iter().all(|(_, a)| matches!(a, Answer::Failed(_)))
            && let Some(first) = errors.into_iter().flatten().next()
        {
            return Err(first);
        }
        let index = pick(wanted, &answers).map_err(|reason| ConnectionError::NoServer {
            wanted: wanted.describe(),
            reason,
        })?;
        let (host, answer) = &answers[index];
        if hosts.len() > 1 {
            tracing::info!(
                "using {host} ({answer}) of {} servers listed: {}",
                hosts.len(),
                answers
                    .iter()
                    .map(|(h, a)| format!("{h}: {a}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if wanted == ServerRole::PreferStandby && *answer == Answer::Primary {
            tracing::warn!("no standby answers: backing up from the primary {host}");
        }
        Ok(self.with_host(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(&str, Answer)]) -> Vec<(String, Answer)> {
        list.iter()
            .map(|(h, a)| (h.to_string(), a.clone()))
            .collect()
    }

    fn down() -> Answer {
        Answer::Failed("cannot reach PostgreSQL".into())
    }

    #[test]
    fn the_primary_is_found_wherever_it_moved() {
        let moved = answers(&[
            ("pg-0", Answer::Standby),
            ("pg-1", down()),
            ("pg-2", Answer::Primary),
        ]);
        assert_eq!(pick(ServerRole::Primary, &moved), Ok(2));
        assert_eq!(pick(ServerRole::Any, &moved), Ok(0));
    }

    #[test]
    fn a_standby_is_preferred_and_the_primary_stands_in() {
        let both = answers(&[("pg-0", Answer::Primary), ("pg-1", Answer::Standby)]);
        assert_eq!(pick(ServerRole::PreferStandby, &both), Ok(1));
        assert_eq!(pick(ServerRole::Standby, &both), Ok(1));
        let no_standby = answers(&[("pg-0", Answer::Primary), ("pg-1", down())]);
        assert_eq!(pick(ServerRole::PreferStandby, &no_standby), Ok(0));
        let err = pick(ServerRole::Standby, &no_standby).expect_err("no standby");
        assert!(err.contains("pg-1: cannot reach"), "{err}");
    }

    #[test]
    fn no_primary_or_two_primaries_are_refused_with_every_answer() {
        let none = answers(&[("pg-0", Answer::Standby), ("pg-1", down())]);
        let err = pick(ServerRole::Primary, &none).expect_err("no primary");
        assert!(err.contains("pg-0: standby; pg-1: cannot reach"), "{err}");
        let split = answers(&[("pg-0", Answer::Primary), ("pg-1", Answer::Primary)]);
        for role in [ServerRole::Primary, ServerRole::PreferStandby] {
            let err = pick(role, &split).expect_err("split brain");
            assert!(err.contains("more than one"), "{err}");
        }
        assert_eq!(
            pick(ServerRole::Any, &answers(&[("pg-0", down())])).ok(),
            None
        );
    }
}
