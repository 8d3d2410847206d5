//! Retention: which completed backups a policy keeps. A pure function of the backups'
//! times, the policy and the current time; a backup is kept when any rule keeps it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{Timestamp, tz::TimeZone};

/// A retention policy. Periods (days, ISO weeks, months) are in UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    pub keep_monthly: Option<u32>,
    /// Keep every backup younger than this many seconds.
    pub max_age_seconds: Option<i64>,
}

/// A policy that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetentionPolicyError {
    /// No rule at all: pruning would delete everything.
    #[error(
        "no retention rule given: set at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --max-age"
    )]
    Empty,
    /// Every rule given keeps nothing (`--keep-last 0`, `--max-age 0s`, …): pruning would
    /// delete everything.
    #[error(
        "the retention rules keep no backup (every count is 0 and every age 0): pruning would delete every backup; to do that, say so with --keep-none"
    )]
    KeepsNothing,
    /// A duration that does not parse.
    #[error("invalid duration {0:?}: use a number and a unit s, m, h, d or w, e.g. 30d or 1w3d")]
    Duration(String),
}

impl RetentionPolicy {
    /// The policy that keeps nothing: what `prune --keep-none` applies.
    pub fn none() -> Self {
        Self {
            keep_last: Some(0),
            ..Self::default()
        }
    }

    /// Checks that the policy has a rule, and that some rule can keep a backup.
    pub fn validate(&self) -> Result<(), RetentionPolicyError> {
        let counts = [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ];
        if counts.iter().all(Option::is_none) && self.max_age_seconds.is_none() {
            return Err(RetentionPolicyError::Empty);
        }
        let keeps_some = counts.iter().flatten().any(|n| *n > 0)
            || self.max_age_seconds.is_some_and(|age| age > 0);
        if !keeps_some {
            return Err(RetentionPolicyError::KeepsNothing);
        }
        Ok(())
    }
}

/// Parses `90s`, `10m`, `36h`, `30d`, `2w`, or combinations like `1w3d`, into seconds.
pub fn parse_duration(text: &str) -> Result<i64, RetentionPolicyError> {
    let err = || RetentionPolicyError::Duration(text.to_string());
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(err()),
        };
        let n: i64 = number.parse().map_err(|_| err())?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(err)?)
            .ok_or_else(err)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 && text.is_empty() {
        return Err(err());
    }
    Ok(total)
}

/// Maps a time to the period (day, ISO week, month) it falls in.
type PeriodOf = fn(Timestamp) -> (i16, i16);

/// The ids of the backups the policy keeps. `backups` are `(id, end time)` in any order.
pub fn select_kept(
    backups: &[(String, Timestamp)],
    policy: &RetentionPolicy,
    now: Timestamp,
) -> BTreeSet<String> {
    let mut newest_first: Vec<&(String, Timestamp)> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    if let Some(n) = policy.keep_last {
        kept.extend(
            newest_first
                .iter()
                .take(n as usize)
                .map(|(id, _)| id.clone()),
        );
    }
    let period_rules: [(Option<u32>, PeriodOf); 3] = [
        (policy.keep_daily, |t| {
            let d = t.to_zoned(TimeZone::UTC).date();
            (d.year(), d.day_of_year())
        }),
        (policy.keep_weekly, |t| {
            let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
            (w.year(), w.week() as i16)
        }),
        (policy.keep_monthly, |t| {
            let d = t.to_zoned(TimeZone::UTC).date();
            (d.year(), d.month() as i16)
        }),
    ];
    for (count, period_of) in period_rules {
        let Some(count) = count else { continue };
        let mut periods = BTreeSet::new();
        for (id, time) in &newest_first {
            if periods.len() >= count as usize {
                break;
            }
            if periods.insert(period_of(*time)) {
                kept.insert(id.clone());
            }
        }
    }
    if let Some(max_age) = policy.max_age_seconds {
        let cutoff = now.as_second().saturating_sub(max_age);
        kept.extend(
            newest_first
                .iter()
                .filter(|(_, t)| t.as_second() >= cutoff)
                .map(|(id, _)| id.clone()),
        );
    }
    kept
}

/// Adds to `kept` every backup a kept incremental backup builds on (`chains`: a backup's id
/// to the ids of its chain), so that retention never leaves an incremental backup without
/// its parents. A backup that is not kept takes the incrementals built on it along, since
/// none of them is kept either.
pub fn keep_chains(kept: &mut BTreeSet<String>, chains: &BTreeMap<String, Vec<String>>) {
    let needed: Vec<String> = kept
        .iter()
        .filter_map(|id| chains.get(id))
        .flatten()
        .cloned()
        .collect();
    kept.extend(needed);
}

/// The backups built on any of `doomed` that are not in it themselves: deleting `doomed`
/// alone would leave them without a parent.
pub fn orphaned_by<'a>(
    doomed: &BTreeSet<String>,
    chains: &'a BTreeMap<String, Vec<String>>,
) -> Vec<&'a str> {
    chains
        .iter()
        .filter(|(id, chain)| !doomed.contains(*id) && chain.iter().any(|p| doomed.contains(p)))
        .map(|(id, _)| id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_incremental_keeps_its_chain_and_a_deleted_full_takes_its_incrementals() {
        let chains: BTreeMap<String, Vec<String>> = [
            ("f1", vec![]),
            ("i1", vec!["f1"]),
            ("i2", vec!["f1", "i1"]),
            ("f2", vec![]),
            ("i3", vec!["f2"]),
        ]
        .into_iter()
        .map(|(id, chain)| {
            (
                id.to_string(),
                chain.into_iter().map(String::from).collect(),
            )
        })
        .collect();
        let times: Vec<(String, Timestamp)> = ["f1", "i1", "i2", "f2", "i3"]
            .iter()
            .enumerate()
            .map(|(n, id)| {
                (
                    id.to_string(),
                    Timestamp::from_second(n as i64 * 3600).expect("t"),
                )
            })
            .collect();
        let policy = RetentionPolicy {
            keep_last: Some(3),
            ..RetentionPolicy::default()
        };
        let mut kept = select_kept(&times, &policy, Timestamp::from_second(86_400).expect("t"));
        assert_eq!(kept, ["f2", "i2", "i3"].map(String::from).into());
        keep_chains(&mut kept, &chains);
        assert_eq!(
            kept,
            ["f1", "f2", "i1", "i2", "i3"].map(String::from).into()
        );

        let doomed: BTreeSet<String> = ["i1".to_string()].into();
        assert_eq!(orphaned_by(&doomed, &chains), ["i2"]);
        let doomed: BTreeSet<String> = ["f2", "i3"].map(String::from).into();
        assert!(orphaned_by(&doomed, &chains).is_empty());
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    /// Backups at 03:00 every day from 2026-09-01 to 2026-11-20, plus an extra one at 15:00
    /// on 2026-11-20; ids are the dates.
    fn daily_backups() -> Vec<(String, Timestamp)> {
        let mut out = Vec::new();
        let mut day = jiff::civil::date(2026, 9, 1);
        while day <= jiff::civil::date(2026, 11, 20) {
            let t = day
                .at(3, 0, 0, 0)
                .to_zoned(TimeZone::UTC)
                .expect("time")
                .timestamp();
            out.push((day.to_string(), t));
            day = day.tomorrow().expect("day");
        }
        out.push(("2026-11-20-late".into(), at("2026-11-20T15:00:00Z")));
        out
    }

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const NOW: &str = "2026-11-20T16:00:00Z";

    #[test]
    fn keep_last_keeps_the_newest() {
        let policy = RetentionPolicy {
            keep_last: Some(3),
            ..Default::default()
        };
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-11-20", "2026-11-19"])
        );
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let policy = RetentionPolicy {
            keep_daily: Some(3),
            ..Default::default()
        };
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-11-19", "2026-11-18"])
        );
    }

    #[test]
    fn keep_weekly_uses_iso_weeks() {
        // 2026-11-20 is a Friday; ISO weeks start on Monday: 11-16, 11-09, 11-02.
        let policy = RetentionPolicy {
            keep_weekly: Some(3),
            ..Default::default()
        };
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-11-15", "2026-11-08"])
        );
    }

    #[test]
    fn keep_monthly_keeps_the_newest_of_each_month() {
        let policy = RetentionPolicy {
            keep_monthly: Some(5),
            ..Default::default()
        };
        // Only three months have backups: all three are kept, nothing more.
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-10-31", "2026-09-30"])
        );
    }

    #[test]
    fn max_age_keeps_everything_younger() {
        let policy = RetentionPolicy {
            max_age_seconds: Some(parse_duration("2d").expect("duration")),
            ..Default::default()
        };
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-11-20", "2026-11-19"])
        );
    }

    #[test]
    fn rules_combine_as_a_union() {
        let policy = RetentionPolicy {
            keep_last: Some(1),
            keep_monthly: Some(2),
            ..Default::default()
        };
        assert_eq!(
            select_kept(&daily_backups(), &policy, at(NOW)),
            ids(&["2026-11-20-late", "2026-10-31"])
        );
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        assert_eq!(
            RetentionPolicy::default().validate(),
            Err(RetentionPolicyError::Empty)
        );
        let nothing = |policy: RetentionPolicy| {
            assert_eq!(policy.validate(), Err(RetentionPolicyError::KeepsNothing));
        };
        nothing(RetentionPolicy::none());
        nothing(RetentionPolicy {
            keep_last: Some(0),
            keep_daily: Some(0),
            max_age_seconds: Some(0),
            ..Default::default()
        });
        // One rule that keeps something is enough.
        assert_eq!(
            RetentionPolicy {
                keep_last: Some(0),
                keep_weekly: Some(2),
                ..Default::default()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("1w3d"), Ok(10 * 86_400));
        assert_eq!(parse_duration("36h"), Ok(36 * 3600));
        for bad in ["", "10", "d", "3x", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
