//! The self-describing manifest of a backup, written last: a backup without one is not
//! complete. JSON, so that a person can read it with `cat`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{api::CompressionAlgorithm, postgres::TableRows};

/// Version of the manifest format; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a backup's directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What kind of backup a manifest describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackupKind {
    /// `pg_dumpall --globals-only` plus `pg_dump` per database.
    Logical,
    /// `pg_basebackup` of the cluster.
    Physical,
    /// A CSI volume snapshot's backup label and LSNs.
    Snapshot,
}

impl BackupKind {
    /// The directory of this kind under the server's directory.
    pub fn directory(self) -> &'static str {
        match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "base",
            BackupKind::Snapshot => "snapshots",
        }
    }

    /// The word used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
            BackupKind::Snapshot => "snapshot",
        }
    }
}

/// The manifest of one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// What kind of backup.
    pub kind: BackupKind,
    /// The backup's id (its UTC start time).
    pub backup_id: String,
    /// Name of the database server inside the repository.
    pub server: String,
    /// `server_version` of PostgreSQL, e.g. `15.18`.
    pub server_version: String,
    /// `server_version_num`, e.g. `150018`.
    pub server_version_num: u32,
    /// The cluster's system identifier, when the role may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Timeline of the backup (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// WAL location where the backup starts (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_lsn: Option<String>,
    /// WAL location where the backup becomes consistent (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    /// First WAL segment needed (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_wal: Option<String>,
    /// Last WAL segment needed (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_wal: Option<String>,
    /// When the backup started.
    pub begin_time: Timestamp,
    /// When the last object was stored.
    pub end_time: Timestamp,
    /// Compression of the stored objects.
    pub compression: CompressionAlgorithm,
    /// Compression level used.
    pub compression_level: i32,
    /// Whether objects are encrypted client-side (never the key).
    #[serde(default)]
    pub encrypted: bool,
    /// `pgbackup <version>` that wrote the backup.
    pub tool_version: String,
    /// The databases in a logical backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// For an incremental physical backup: the backups it builds on, the full one first and
    /// its direct parent last. Empty for a full backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Every object of the backup.
    pub objects: Vec<ObjectEntry>,
    /// Rows per table at backup time, for the restore test (`verify --restore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_counts: Vec<TableRows>,
    /// For a volume snapshot: where its data is, and what restores need to replay WAL on
    /// top of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotDetails>,
    /// With an encryption key: the MAC of the rest of the manifest under it
    /// ([`Manifest::seal`]), so that a manifest someone without the key wrote is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What a repository records of a VolumeSnapshotBackup: the data stays in the
/// VolumeSnapshots; the repository keeps the label and positions that WAL replay needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDetails {
    /// Namespace of the VolumeSnapshotBackup and its VolumeSnapshots.
    pub namespace: String,
    /// Name of the VolumeSnapshotBackup.
    pub name: String,
    /// The StatefulSet whose volumes were snapshotted.
    pub stateful_set: String,
    /// `online` or `checkpoint`.
    pub mode: String,
    /// The VolumeSnapshots, data volume first.
    pub volume_snapshots: Vec<VolumeSnapshotEntry>,
    /// The `backup_label` to write into the restored data directory (`online`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_label: Option<String>,
    /// The `tablespace_map` to write with it, when the server has tablespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
}

/// One VolumeSnapshot of a recorded snapshot backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotEntry {
    /// Name of the VolumeSnapshot.
    pub name: String,
    /// The claim it was taken from.
    pub claim_name: String,
    /// Minimum size of a volume restored from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<String>,
}

impl Manifest {
    /// The bytes the MAC covers: the manifest without its MAC, as compact JSON.
    fn authenticated_bytes(&self) -> Vec<u8> {
        let unsealed = Manifest {
            mac: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsealed).unwrap_or_default()
    }

    /// Adds the MAC under `keys`.
    pub fn seal(&mut self, keys: &super::Keys) {
        self.mac = None;
        self.mac = Some(keys.manifest_mac(&self.authenticated_bytes()));
    }

    /// Whether the manifest carries a MAC under `keys`: `Ok(true)` when it does, `Ok(false)`
    /// when it carries none, `Err` when its MAC is not the key's.
    pub fn sealed_by(&self, keys: &super::Keys) -> Result<bool, String> {
        match &self.mac {
            None => Ok(false),
            Some(mac) if keys.manifest_mac_matches(&self.authenticated_bytes(), mac) => Ok(true),
            Some(_) => Err(format!(
                "the manifest of backup {} is not authenticated by the encryption key given: either none of the keys given opens it (give the key the backup was made with), or it was altered or written by someone without the key",
                self.backup_id
            )),
        }
    }

    /// Whether the manifest of the backup in `backup_id`'s directory is fit to act on: it
    /// names that backup, and every file it names is a plain file name of that directory
    /// (a manifest written by someone else must not lead a restore or a prune to other
    /// servers' objects or to files outside the repository).
    pub fn check(&self, backup_id: &str) -> Result<(), String> {
        if self.backup_id != backup_id {
            return Err(format!(
                "it names backup {:?}, but lies in the directory of backup {backup_id}",
                self.backup_id
            ));
        }
        for chunk in self.objects.iter().flat_map(|o| &o.chunks) {
            if !is_plain_file_name(&chunk.file) {
                return Err(format!(
                    "{:?} is not a plain file name of the backup's directory",
                    chunk.file
                ));
            }
        }
        if let Some(id) = self.chain.iter().find(|id| !is_plain_file_name(id)) {
            return Err(format!("{id:?} is not a backup id"));
        }
        if self.chain.iter().any(|id| id.as_str() >= backup_id) {
            return Err(format!(
                "its chain {:?} names a backup that is not older than itself",
                self.chain
            ));
        }
        if let Some(name) = self
            .databases
            .iter()
            .chain(self.objects.iter().filter_map(|o| o.database.as_ref()))
            .find(|d| d.is_empty() || d.len() > 63 || d.contains('\0'))
        {
            return Err(format!("{name:?} is not a PostgreSQL database name"));
        }
        Ok(())
    }

    /// The backup this incremental one builds on; `None` for a full backup.
    pub fn parent(&self) -> Option<&str> {
        self.chain.last().map(String::as_str)
    }

    /// The kind's word, `incremental` for an incremental physical backup.
    pub fn kind_label(&self) -> &'static str {
        match self.parent() {
            Some(_) => "incremental",
            None => self.kind.as_str(),
        }
    }

    /// Bytes read from the database, over all objects.
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// Bytes stored in the repository, over all objects.
    pub fn stored_size(&self) -> u64 {
        self.objects.iter().map(ObjectEntry::stored_size).sum()
    }

    /// The dump of `database`, in either format.
    pub fn dump_of(&self, database: &str) -> Option<&ObjectEntry> {
        self.object(ObjectRole::Database, Some(database))
            .or_else(|| self.object(ObjectRole::DatabaseDirectory, Some(database)))
    }

    /// The object of a role (and database, for dumps).
    pub fn object(&self, role: ObjectRole, database: Option<&str>) -> Option<&ObjectEntry> {
        self.objects
            .iter()
            .find(|o| o.role == role && o.database.as_deref() == database)
    }
}

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectRole {
    /// `pg_dumpall --globals-only` SQL.
    Globals,
    /// A `pg_dump` custom-format archive of one database.
    Database,
    /// A `pg_dump` directory-format archive of one database, as a tar stream of its files.
    DatabaseDirectory,
    /// The `pg_basebackup` tar stream of the cluster.
    Data,
    /// PostgreSQL's `backup_manifest` of a physical backup (also inside its tar stream), kept
    /// apart so that an incremental backup can name it as its parent's without reading the
    /// whole stream.
    BackupManifest,
    /// The Kubernetes objects the database ran as when the backup was taken (its
    /// StatefulSet, Service and ConfigMaps), as one YAML stream: what a disaster recovery
    /// applies to a new cluster.
    Configuration,
    /// A server configuration file the backup does not otherwise hold: `postgresql.conf`,
    /// `pg_hba.conf` or `pg_ident.conf` outside the data directory (where images such as
    /// Bitnami's keep them), or any of them with a logical backup. `path` says where.
    ServerFile,
}

/// One logical object (a dump, a tar stream), stored as one or more chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntry {
    /// Logical name, e.g. `data.tar` or `orders.dump`.
    pub name: String,
    /// What it holds.
    pub role: ObjectRole,
    /// The database a dump belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Where the server kept a server file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bytes before compression.
    pub size: u64,
    /// The stored chunks, in order: concatenated they are the compressed stream.
    pub chunks: Vec<ChunkEntry>,
}

impl ObjectEntry {
    /// Bytes stored, over all chunks.
    pub fn stored_size(&self) -> u64 {
        self.chunks.iter().map(|c| c.size).sum()
    }
}

/// One stored chunk of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEntry {
    /// File name inside the backup's directory, e.g. `data.tar.zst` or `data.tar.zst.1`.
    pub file: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// A file name as pgbackup writes them (`data.tar.zst.1`, `orders.dump.zst.age`, database
/// names percent-encoded): letters, digits, `.`, `_`, `-` and `%`, not starting with `.`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'))
}

#[cfg(test)]
impl Manifest {
    /// A complete physical backup of cluster `42` on timeline 1, for tests to adjust.
    pub(crate) fn fixture(backup_id: &str) -> Self {
        let at = Timestamp::from_second(1_767_225_600).expect("time");
        Manifest {
            format_version: FORMAT_VERSION,
            kind: BackupKind::Physical,
            backup_id: backup_id.into(),
            server: "s".into(),
            server_version: "17.6".into(),
            server_version_num: 170006,
            system_identifier: Some("42".into()),
            timeline: Some(1),
            begin_lsn: None,
            end_lsn: None,
            begin_wal: None,
            end_wal: None,
            begin_time: at,
            end_time: at,
            compression: CompressionAlgorithm::Zstd,
            compression_level: 3,
            encrypted: false,
            tool_version: "test".into(),
            databases: Vec::new(),
            chain: Vec::new(),
            objects: Vec::new(),
            row_counts: Vec::new(),
            snapshot: None,
            mac: None,
        }
    }
}
