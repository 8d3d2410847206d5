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

/// [`child_name`] within `max` characters.
pub fn child_name_within(parent: &str, suffix: &str, max: usize) -> String {
    let full = format!("{parent}-{suffix}");
    if full.len() <= max {
        return full;
    }
    let keep = max.saturating_sub(suffix.len() + 10);
    let head = parent[..keep.min(parent.len())].trim_end_matches(['-', '.']);
    format!("{head}-{}-{suffix}", short_hash(parent))
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

/// A label value from an object name (names may be up to 253 characters, label values
/// 63): the name itself, or its head and a hash of all of it.
pub fn label_value(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    let head = name[..MAX_NAME - 9].trim_end_matches(['-', '.', '_']);
    format!("{head}-{}", short_hash(name))
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
