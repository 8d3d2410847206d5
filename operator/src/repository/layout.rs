//! Where things go inside a repository (DESIGN §3):
//! `<server>/base/<id>/`, `<server>/logical/<id>/`, `<server>/snapshots/<id>/`, `<server>/wal/`.

use jiff::Timestamp;

use super::BackupKind;

/// The directory of one backup: `<server>/<kind dir>/<backup id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDir {
    /// Name of the database server inside the repository.
    pub server: String,
    /// What kind of backup.
    pub kind: BackupKind,
    /// The backup's id.
    pub backup_id: String,
}

impl BackupDir {
    /// The key prefix of the backup's objects, ending in `/`.
    pub fn prefix(&self) -> String {
        format!(
            "{}/{}/{}/",
            self.server,
            self.kind.directory(),
            self.backup_id
        )
    }

    /// The key of one object of the backup.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// A sortable backup id from a UTC time: `20261120T234500Z`.
pub fn new_backup_id(at: Timestamp) -> String {
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// An object name for a database name: safe in keys and file names whatever the database is
/// called (`/`, spaces, non-ASCII), and distinct for distinct names.
pub fn database_object_name(database: &str) -> String {
    let mut out = String::with_capacity(database.len());
    for byte in database.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time() {
        let a: Timestamp = "2026-11-20T23:45:00Z".parse().expect("time");
        let b: Timestamp = "2026-11-21T00:00:01Z".parse().expect("time");
        assert_eq!(new_backup_id(a), "20261120T234500Z");
        assert!(new_backup_id(a) < new_backup_id(b));
    }

    #[test]
    fn database_names_become_safe_distinct_object_names() {
        assert_eq!(database_object_name("orders"), "orders");
        assert_eq!(database_object_name("a/b c"), "a%2Fb%20c");
        assert_ne!(database_object_name("a.b"), database_object_name("a_b"));
        assert_eq!(database_object_name(".."), "%2E%2E");
    }

    #[test]
    fn keys_follow_the_design_layout() {
        let dir = BackupDir {
            server: "ns-pg".into(),
            kind: BackupKind::Logical,
            backup_id: "20261120T234500Z".into(),
        };
        assert_eq!(
            dir.key("manifest.json"),
            "ns-pg/logical/20261120T234500Z/manifest.json"
        );
        let dir = BackupDir {
            kind: BackupKind::Physical,
            ..dir
        };
        assert_eq!(dir.prefix(), "ns-pg/base/20261120T234500Z/");
    }
}
