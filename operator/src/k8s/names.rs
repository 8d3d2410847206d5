//! Names and labels of the objects the operator makes for a pgbackup object.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME};

/// Longest name that is also a valid label value (Jobs put their name in a pod label).
const MAX_NAME: usize = 63;

/// Longest CronJob name (its Jobs get an 11-character suffix and must stay within 63).
pub const MAX_CRON_JOB_NAME: usize = 52;

/// `<parent>-<suffix>`, cut to 63 characters with a hash of the whole parent name when it
/// would be longer, so that two long parents never share a child name.
pub fn child_name(parent: &str, suffix: &str) -> String {
    child_name_within(parent, suffix, MAX_NAME)
}

/// [`child_name`] within `max` characters (at least 12). A parent too long is cut and
/// followed by a hash of all of it; a suffix too long to leave room for the parent's head
/// is cut too, and the hash is then of both. The name starts and ends with a letter or
/// digit, as every Kubernetes name must.
pub fn child_name_within(parent: &str, suffix: &str, max: usize) -> String {
    debug_assert!(max >= 12, "room for a head, a hash and a tail");
    let full = format!("{parent}-{suffix}");
    if full.len() <= max {
        return full;
    }
    let head = cut(parent, max.saturating_sub(suffix.len() + 10));
    if !head.is_empty() {
        return format!("{head}-{}-{suffix}", short_hash(parent));
    }
    // `-<hash>-` takes 10 characters; the parent's head and the suffix's share the rest.
    let room = max - 10;
    let head = cut(parent, (room / 2).max(room.saturating_sub(suffix.len())));
    let tail = cut(suffix, room - head.len());
    let hash = short_hash(&full);
    match (head.is_empty(), tail.is_empty()) {
        (false, false) => format!("{head}-{hash}-{tail}"),
        (false, true) => format!("{head}-{hash}"),
        (true, false) => format!("{hash}-{tail}"),
        (true, true) => hash,
    }
}

/// A name for a Service or another object whose name must be a DNS-1035 label (lower-case
/// letters, digits and `-`, starting with a letter, ending with a letter or digit) of at
/// most `max` characters: `<parent>-<suffix>` as [`child_name_within`] makes it when that is
/// such a label, else `<parent>-<suffix>` with `-` for what a label may not hold, cut, and a
/// hash of the names as they were (`a.b` and `a-b` stay apart).
pub fn dns_label_within(parent: &str, suffix: &str, max: usize) -> String {
    let name = child_name_within(parent, suffix, max);
    if is_dns_label(&name, max) {
        return name;
    }
    let full = format!("{parent}-{suffix}");
    let mut cleaned = String::with_capacity(full.len() + 2);
    for c in full.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (cleaned.is_empty() || cleaned.ends_with('-'))) {
            cleaned.push(c);
        }
    }
    if !cleaned.starts_with(|c: char| c.is_ascii_lowercase()) {
        cleaned.insert_str(0, "x-");
    }
    let hash = short_hash(&full);
    let head = cut(&cleaned, max - hash.len() - 1);
    format!("{head}-{hash}")
}

/// Whether `name` is a DNS-1035 label of at most `max` characters.
pub fn is_dns_label(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The first `at_most` characters of `text`, without the `-`, `.` or `_` a cut can leave
/// at its end.
fn cut(text: &str, at_most: usize) -> &str {
    let end = text
        .char_indices()
        .nth(at_most)
        .map_or(text.len(), |(i, _)| i);
    text[..end].trim_end_matches(['-', '.', '_'])
}

fn short_hash(text: &str) -> String {
    crate::repository::hex_digest(&Sha256::digest(text.as_bytes()))[..8].to_string()
}

/// The labels of an object made for `instance` in the role `component`.
pub fn labels(component: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "pgbackup".to_string()),
        (LABEL_NAME.to_string(), "pgbackup".to_string()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
        (LABEL_INSTANCE.to_string(), label_value(instance)),
    ])
}

/// The label selector of what schedule `schedule` made (its backup objects, CronJobs).
pub fn schedule_selector(schedule: &str) -> String {
    format!("{}={}", super::LABEL_SCHEDULE, label_value(schedule))
}

/// A label value from an object name (names may be up to 253 characters, label values
/// 63): the name itself, or its head and a hash of all of it.
pub fn label_value(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    format!("{}-{}", cut(name, MAX_NAME - 9), short_hash(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_joined() {
        assert_eq!(
            child_name("nightly-20261121", "backup"),
            "nightly-20261121-backup"
        );
    }

    #[test]
    fn long_names_are_cut_and_stay_distinct() {
        let a = child_name(&format!("{}a", "x".repeat(80)), "backup");
        let b = child_name(&format!("{}b", "x".repeat(80)), "backup");
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.ends_with("-backup"));
    }

    #[test]
    fn cron_job_names_leave_room_for_their_jobs() {
        let name = child_name_within(&"s".repeat(60), "trigger", MAX_CRON_JOB_NAME);
        assert!(name.len() <= 52 && name.ends_with("-trigger"), "{name}");
    }

    /// Kubernetes object names (DNS-1123 subdomains) of every length from 1 to 253, made of
    /// letters, digits, `-` and `.` in the places a name may have them.
    fn names() -> Vec<String> {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-.";
        let mut seed = 0x2545_f491_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut names = Vec::new();
        for len in 1..=253usize {
            for _ in 0..4 {
                let mut name: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                // Starts and ends with a letter or digit; no `-.`, `.-` or `..`.
                name[0] = b'a' + (next() % 26) as u8;
                name[len - 1] = b'0' + (next() % 10) as u8;
                for i in 1..len {
                    if name[i] == b'.' && matches!(name[i - 1], b'.' | b'-') {
                        name[i] = b'x';
                    }
                    if name[i] == b'-' && name[i - 1] == b'.' {
                        name[i] = b'y';
                    }
                }
                names.push(String::from_utf8(name).expect("ascii"));
            }
        }
        names
    }

    fn is_name(name: &str, max: usize) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
    }

    #[test]
    fn child_names_are_valid_and_distinct_at_every_length() {
        let names = names();
        let suffixes: Vec<String> = ["backup", "restore-1a2b3c4d", "wal-archiver"]
            .into_iter()
            .map(String::from)
            .chain(names.iter().step_by(37).cloned())
            .collect();
        for max in [MAX_NAME, MAX_CRON_JOB_NAME, 52, 12] {
            for suffix in &suffixes {
                let mut seen = std::collections::HashMap::new();
                for parent in &names {
                    let child = child_name_within(parent, suffix, max);
                    assert!(is_name(&child, max), "{parent:?} + {suffix:?} -> {child:?}");
                    if parent.len() + suffix.len() < max {
                        assert_eq!(child, format!("{parent}-{suffix}"), "fits as it is");
                    }
                    if suffix.len() + 12 <= max {
                        assert!(child.ends_with(&format!("-{suffix}")), "{child}");
                    }
                    if let Some(other) = seen.insert(child.clone(), parent) {
                        assert_eq!(other, parent, "two parents share {child}");
                    }
                }
            }
        }
    }

    #[test]
    fn dns_labels_are_valid_and_distinct_at_every_length() {
        let names = names();
        let restores: Vec<&String> = names.iter().step_by(11).collect();
        for target in names.iter().step_by(29).chain(names.iter().take(8)) {
            let mut seen = std::collections::HashMap::new();
            for restore in &restores {
                let label = dns_label_within(target, restore, 52);
                assert!(
                    is_dns_label(&label, 52),
                    "{target:?} + {restore:?} -> {label:?}"
                );
                let plain = format!("{target}-{restore}");
                if is_dns_label(&plain, 52) {
                    assert_eq!(label, plain, "a valid name is kept as it is");
                }
                if let Some(other) = seen.insert(label.clone(), restore) {
                    assert_eq!(other, restore, "two restores share {label}");
                }
            }
        }
        assert_eq!(dns_label_within("pg", "back.to.noon", 52).len(), 24);
        assert!(dns_label_within("pg", "back.to.noon", 52).starts_with("pg-back-to-noon-"));
        assert!(dns_label_within("1pg", "drill", 52).starts_with("x-1pg-drill-"));
    }

    #[test]
    fn a_long_restore_name_no_longer_makes_a_name_that_starts_with_a_dash() {
        let restore = "restore-to-the-moment-before-the-bad-migration";
        let name = child_name_within("orders-db", restore, 52);
        assert!(is_name(&name, 52), "{name}");
        assert!(name.starts_with("orders-db-"), "{name}");
    }

    #[test]
    fn labels_name_the_component_and_instance() {
        let l = labels("backup", "nightly");
        assert_eq!(l["app.kubernetes.io/managed-by"], "pgbackup");
        assert_eq!(l["app.kubernetes.io/component"], "backup");
        assert_eq!(l["app.kubernetes.io/instance"], "nightly");
        let long_a = format!("{}a", "y".repeat(200));
        let long_b = format!("{}b", "y".repeat(200));
        assert!(labels("backup", &long_a)["app.kubernetes.io/instance"].len() <= 63);
        assert_ne!(
            label_value(&long_a),
            label_value(&long_b),
            "the whole name is hashed"
        );
        assert_eq!(label_value("nightly"), "nightly");
    }
}
