//! Where a PointInTimeRestore restores from: a backup, a snapshot or a schedule (and which
//! copy), and for a logical backup what of it to restore.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// What of a logical backup to restore, and where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.database) || (!has(self.schemas) || size(self.schemas) == 0) && (!has(self.tables) || size(self.tables) == 0) && !(has(self.schemaOnly) && self.schemaOnly) && !(has(self.dataOnly) && self.dataOnly) && !has(self.intoDatabase)").message("schemas, tables, schemaOnly, dataOnly and intoDatabase restore one database: name it in logical.database"),
    validation = Rule::new("!(has(self.schemaOnly) && self.schemaOnly && has(self.dataOnly) && self.dataOnly)").message("set at most one of logical.schemaOnly and logical.dataOnly")
)]
pub struct LogicalRestore {
    /// The one database of the backup to restore (else every database it holds, with
    /// the roles and tablespaces of the backup, each into its own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub database: Option<String>,

    /// Only these schemas, with everything in them (created when the database lacks
    /// them). Names are matched exactly, case included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub schemas: Vec<String>,

    /// Only these tables (`schema.table`, or `table` in any schema; `"a.b"."c"` quotes a
    /// dot), each with its rows, indexes, constraints, defaults, triggers, owned
    /// sequences, comments and grants; a foreign key only when the tables it joins come
    /// too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub tables: Vec<String>,

    /// Definitions without rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub schema_only: bool,

    /// Rows only, into tables that exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_only: bool,

    /// Restore into this database instead of the backup's, created when missing (and
    /// dropped again when the restore fails): the everyday "I deleted rows" case puts a
    /// table back next to the live one, e.g. `shop_yesterday`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub into_database: Option<String>,

    /// Replace what exists: a whole database is dropped and re-created (after the dump
    /// was read and checked whole), selected objects are dropped and re-created in the
    /// one transaction of a partial restore. Without it, what exists refuses the restore
    /// and nothing changes. Needs `confirm: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean: bool,

    /// Restore no owners or grants: for a server without the backup's roles.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_owner: bool,

    /// pg_restore processes for a whole database of a directory-format (parallel) dump;
    /// a partial restore runs in one transaction and uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub jobs: Option<i32>,
}

impl LogicalRestore {
    /// The `pgbackup restore --logical` options it asks for.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec!["--logical".to_string()];
        let mut pair = |flag: &str, value: &str| args.extend([flag.to_string(), value.into()]);
        if let Some(database) = &self.database {
            pair("--database", database);
        }
        for schema in &self.schemas {
            pair("--schema", schema);
        }
        for table in &self.tables {
            pair("--table", table);
        }
        if let Some(into) = &self.into_database {
            pair("--into-database", into);
        }
        if let Some(jobs) = self.jobs {
            pair("--jobs", &jobs.to_string());
        }
        let flags = [
            (self.schema_only, "--schema-only"),
            (self.data_only, "--data-only"),
            (self.clean, "--clean"),
            (self.no_owner, "--no-owner"),
        ];
        args.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f.to_string()),
        );
        args
    }
}

/// Where the base backup and WAL come from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.postgresBackup) ? 1 : 0) + (has(self.volumeSnapshotBackup) ? 1 : 0) + (has(self.backupSchedule) ? 1 : 0) == 1"
).message("set exactly one of source.postgresBackup, source.volumeSnapshotBackup or source.backupSchedule"),
  validation = Rule::new("!has(self.copy) || has(self.backupSchedule)").message("source.copy names a copy of source.backupSchedule: set that too"))]
pub struct RestoreSource {
    /// A completed physical PostgresBackup in this namespace; WAL comes from its
    /// repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_backup: Option<String>,

    /// A completed VolumeSnapshotBackup in this namespace; WAL comes from its repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_backup: Option<String>,

    /// A BackupSchedule in this namespace: the newest base backup that ended before the
    /// recovery target is picked, and WAL comes from the schedule's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,

    /// With `backupSchedule`: read the base backup and WAL from that schedule's second
    /// copy of this name (`spec.copies[].name`) instead of its repository, e.g. when the
    /// first repository is lost or unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub copy: Option<String>,

    /// Restore a backup of another PostgreSQL cluster (another system identifier) than
    /// the one the StatefulSet runs. Off by default: a backup carries its server's
    /// configuration, which runs in the restored pods (preload libraries, commands) with
    /// the StatefulSet's ServiceAccount and Secrets, so a backup of a server someone else
    /// runs could take the database over. Turn it on only for a repository whose writers
    /// you trust, e.g. to move a database from another cluster; the admission policy
    /// admits it only from a user who may update the StatefulSet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_other_cluster: bool,
}
