//! PostgreSQL from the agent's and the controller's side: connection settings with libpq's
//! environment fallbacks, and the SQL the backups need.

mod connection;
mod server;

pub use connection::{ConnectionArgs, ConnectionError, PgConnection};
pub use server::{ServerInfo, lsn_to_wal_file, parse_lsn};
