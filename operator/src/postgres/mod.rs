//! PostgreSQL from the agent's and the controller's side: connection settings with libpq's
//! environment fallbacks and TLS, the SQL the backups need (including low-level backup mode
//! for volume snapshots), and the WAL segment header.

mod backup_mode;
mod connection;
mod login_guard;
mod row_counts;
mod server;
mod server_choice;
mod tls;
mod wal_header;

pub use backup_mode::{
    BackupLabel, BackupModeError, StoppedBackup, checkpoint, parse_backup_label, start_backup,
    stop_backup,
};
pub use connection::{ConnectionArgs, ConnectionError, PgConnection};
pub use row_counts::{Comparison, Difference, TableRows, count_rows, write_counters};
pub use server::{ServerInfo, lsn_to_wal_file, parse_lsn};
pub use server_choice::{Answer, ServerRole, pick};
pub use tls::{CertificateCheck, RootCertificates, TlsError, client_config};
pub use wal_header::{LONG_HEADER_LEN, WalSegmentHeader, read_wal_header};
