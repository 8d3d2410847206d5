//! Checks a CronJob schedule before it reaches the API (pure): five fields or an `@` macro,
//! each field a list of `*`, values, ranges and steps within its bounds — so a typo ends in
//! a condition that names the field, not in a CronJob that never runs.

const MACROS: [&str; 8] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "@every",
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The fields: name, lowest, highest, names for values.
const FIELDS: [(&str, u32, u32, &[&str]); 5] = [
    ("minute", 0, 59, &[]),
    ("hour", 0, 23, &[]),
    ("day of month", 1, 31, &[]),
    ("month", 1, 12, &MONTHS),
    ("day of week", 0, 7, &DAYS),
];

/// `Ok` when `schedule` is a valid CronJob schedule, else what is wrong with it.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    let schedule = schedule.trim();
    if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") {
        return Err("set the time zone in spec.timeZone, not in the schedule".into());
    }
    if schedule.starts_with('@') {
        return match schedule {
            s if MACROS[..7].contains(&s) => Ok(()),
            _ => Err(format!(
                "unknown schedule macro {schedule:?} (use @hourly, @daily, @weekly, @monthly or @yearly)"
            )),
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{schedule:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week",
            fields.len()
        ));
    }
    for (text, (name, low, high, names)) in fields.iter().zip(FIELDS) {
        for part in text.split(',') {
            check_part(
                part,
                low,
                high,
                names,
                name == "day of month" || name == "day of week",
            )
            .map_err(|why| format!("{name} field {text:?}: {why}"))?;
        }
    }
    Ok(())
}

fn check_part(
    part: &str,
    low: u32,
    high: u32,
    names: &[&str],
    question_mark: bool,
) -> Result<(), String> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (part, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(n) if n >= 1 => {}
            _ => return Err(format!("step {step:?} is not a positive number")),
        }
    }
    if range == "*" || (question_mark && range == "?") {
        return Ok(());
    }
    let (from, to) = match range.split_once('-') {
        Some((from, to)) => (
            value(from, low, high, names)?,
            Some(value(to, low, high, names)?),
        ),
        None => (value(range, low, high, names)?, None),
    };
    match to {
        Some(to) if to < from => Err(format!("range {range:?} runs backwards")),
        _ => Ok(()),
    }
}

fn value(text: &str, low: u32, high: u32, names: &[&str]) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(index) = names.iter().position(|n| *n == upper) {
        return Ok(index as u32 + low);
    }
    match text.parse::<u32>() {
        Ok(n) if (low..=high).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is outside {low}-{high}")),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_schedules_pass() {
        for s in [
            "30 2 * * *",
            "*/15 * * * *",
            "0 0 1,15 * MON-FRI",
            "0 3 ? JAN-jun 0",
            "5-55/10 1-23/2 * * 7",
            "@daily",
            "@hourly",
        ] {
            assert_eq!(check_schedule(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (s, needle) in [
            ("30 2 * *", "has 4 fields"),
            ("60 2 * * *", "minute field \"60\": 60 is outside 0-59"),
            ("0 24 * * *", "hour field"),
            ("0 0 0 * *", "day of month field"),
            ("0 0 * 13 *", "month field"),
            ("0 0 * * 8", "day of week field"),
            ("*/0 * * * *", "step \"0\""),
            ("0 5-1 * * *", "runs backwards"),
            ("0 x * * *", "\"x\" is not a number"),
            ("@sometimes", "unknown schedule macro"),
            ("TZ=UTC 0 0 * * *", "spec.timeZone"),
            ("0 0 ? * *", ""),
        ] {
            let result = check_schedule(s);
            if needle.is_empty() {
                assert_eq!(result, Ok(()), "{s}");
            } else {
                let why = result.expect_err(s);
                assert!(why.contains(needle), "{s}: {why}");
            }
        }
    }
}
