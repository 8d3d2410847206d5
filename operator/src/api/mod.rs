//! The custom resources of `pgbackup.io/v1alpha1`: one file per kind, plus the pieces they share.

mod backup_schedule;
mod conditions;
mod crd;
mod job;
mod point_in_time_restore;
mod postgres_backup;
mod repository;
mod target;
mod verification;
mod volume_snapshot_backup;

pub use backup_schedule::*;
pub use conditions::*;
pub use crd::{CrdError, crd_file_name, crds, crds_yaml};
pub use job::*;
pub use point_in_time_restore::*;
pub use postgres_backup::*;
pub use repository::*;
pub use target::*;
pub use verification::*;
pub use volume_snapshot_backup::*;

/// The API group of every pgbackup kind.
pub const GROUP: &str = "pgbackup.io";
/// The API version of every pgbackup kind.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get pgbackup` category that lists all four kinds.
pub const CATEGORY: &str = "pgbackup";

/// What happens to stored data when the object that made it is deleted.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the backup data in the repository (or the VolumeSnapshots) when the object is deleted.
    #[default]
    Retain,
    /// Delete the backup data in the repository (or the VolumeSnapshots) together with the object.
    Delete,
}

/// Pattern of a duration such as `90s`, `10m`, `36h`, `30d` or `2w` (units may be combined: `1d12h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(s|m|h|d|w))+$";

/// Pattern of a PostgreSQL log sequence number such as `0/3000028`.
pub const LSN_PATTERN: &str = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$";

#[cfg(test)]
mod tests;
