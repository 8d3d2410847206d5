//! `--to` of `kubectl pgbackup restore` (pure): the moment to restore to, in the words a
//! person at a terminal uses — `latest`, `end-of-backup`, a time, or `10 minutes ago`.

use jiff::{Span, Timestamp};

use crate::api::RecoveryTarget;

/// The recovery target `text` names, with `now` for relative times.
pub fn recovery_target(text: &str, now: Timestamp) -> Result<RecoveryTarget, String> {
    let text = text.trim();
    let mut target = RecoveryTarget::default();
    match text {
        "latest" => target.latest = Some(true),
        "end-of-backup" | "immediate" => target.immediate = Some(true),
        _ => {
            target.time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                moment(text, now)?,
            ))
        }
    }
    Ok(target)
}

/// A time (RFC 3339 with an offset) or a span before `now` (`10 minutes ago`, `2h ago`,
/// `1 day 3 hours ago`), cut to whole seconds.
fn moment(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let time = if let Some(span) = text.strip_suffix("ago") {
        let span: Span = span.trim().parse().map_err(|e| {
            format!("{text:?}: say how long ago as e.g. \"10 minutes ago\" or \"2h ago\" ({e})")
        })?;
        now.checked_sub(span.abs())
            .or_else(|_| {
                now.to_zoned(jiff::tz::TimeZone::UTC)
                    .checked_sub(span.abs())
                    .map(|z| z.timestamp())
            })
            .map_err(|e| format!("{text:?}: {e}"))?
    } else {
        text.parse::<Timestamp>().map_err(|e| {
            format!("{text:?} is not a moment: give latest, end-of-backup, a time such as 2026-12-05T09:14:00Z, or e.g. \"10 minutes ago\" ({e})")
        })?
    };
    if time > now {
        return Err(format!("{text:?} is in the future"));
    }
    Timestamp::from_second(time.as_second()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-05T10:00:00.500Z".parse().expect("time")
    }

    fn time(text: &str) -> String {
        recovery_target(text, now())
            .expect("target")
            .time
            .expect("a time")
            .0
            .to_string()
    }

    #[test]
    fn words_and_times_become_recovery_targets() {
        assert_eq!(
            recovery_target("latest", now()).expect("latest").latest,
            Some(true)
        );
        assert_eq!(
            recovery_target("end-of-backup", now())
                .expect("immediate")
                .immediate,
            Some(true)
        );
        assert_eq!(time("2026-12-05T09:14:00+01:00"), "2026-12-05T08:14:00Z");
        assert_eq!(time("10 minutes ago"), "2026-12-05T09:50:00Z");
        assert_eq!(time("2h ago"), "2026-12-05T08:00:00Z");
        assert_eq!(time("1 day 3 hours ago"), "2026-12-04T07:00:00Z");
    }

    #[test]
    fn what_is_not_a_moment_is_refused_with_examples() {
        let err = recovery_target("yesterday-ish", now()).expect_err("refused");
        assert!(err.contains("10 minutes ago"), "{err}");
        let err = recovery_target("2027-01-01T00:00:00Z", now()).expect_err("future");
        assert!(err.contains("future"), "{err}");
        assert!(recovery_target("ten minutes ago", now()).is_err());
    }
}
