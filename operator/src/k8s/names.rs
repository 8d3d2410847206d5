//! Names and labels of the objects the operator makes for a pgbackup object.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME};

/// Longest name that is also a valid label value (Jobs put their name in a pod label).
const MAX_NAME: usize = 63;

/// `<parent>-<suffix>`, cut to 63 characters with a hash of the whole parent name when it
/// would be longer, so that two long parents never share a child name.
pub fn child_name(parent: &str, suffix: &str) -> String {
    let full = format!("{parent}-{suffix}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = crate::repository::hex_digest(&Sha256::digest(parent.as_bytes()));
    let keep = MAX_NAME - suffix.len() - 10;
    let head = parent[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{}-{suffix}", &hash[..8])
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

/// A label value from a name (object names may be up to 253 characters, label values 63).
fn label_value(name: &str) -> String {
    if name.len() <= MAX_NAME {
        name.to_string()
    } else {
        child_name(&name[..MAX_NAME], "x")
    }
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
    fn labels_name_the_component_and_instance() {
        let l = labels("backup", "nightly");
        assert_eq!(l["app.kubernetes.io/managed-by"], "pgbackup");
        assert_eq!(l["app.kubernetes.io/component"], "backup");
        assert_eq!(l["app.kubernetes.io/instance"], "nightly");
        assert!(labels("backup", &"y".repeat(200))["app.kubernetes.io/instance"].len() <= 63);
    }
}
