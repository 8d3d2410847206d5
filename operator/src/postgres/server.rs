//! What the agent asks a PostgreSQL server before a backup: version, system identifier,
//! recovery state, WAL segment size, databases; and LSN arithmetic.

use tokio_postgres::Client;

use super::ConnectionError;

/// Facts about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`, trimmed to `15.18`.
    pub version: String,
    /// `server_version_num`, e.g. `150018`.
    pub version_num: u32,
    /// The system identifier, when the role may read `pg_control_system()`.
    pub system_identifier: Option<String>,
    /// Whether the server is a standby.
    pub in_recovery: bool,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
}

impl ServerInfo {
    /// Asks the server.
    pub async fn query(client: &Client) -> Result<Self, ConnectionError> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int4, \
                 pg_is_in_recovery(), (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')",
                &[],
            )
            .await
            .map_err(|source| ConnectionError::Query { what: "reading the server version", source })?;
        let version: String = row.get(0);
        let version_num: i32 = row.get(1);
        // Roles without the privilege may not read the control data; the identifier is then
        // left out rather than failing the backup.
        let system_identifier = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .ok()
            .map(|row| row.get::<_, String>(0));
        Ok(Self {
            version: version
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            version_num: u32::try_from(version_num).unwrap_or_default(),
            system_identifier,
            in_recovery: row.get(2),
            wal_segment_size: u64::try_from(row.get::<_, i64>(3)).unwrap_or(16 * 1024 * 1024),
        })
    }

    /// The major version, e.g. 15.
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }

    /// The databases a logical backup covers by default: every one that accepts connections,
    /// except templates.
    pub async fn databases(client: &Client) -> Result<Vec<String>, ConnectionError> {
        let rows = client
            .query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname", &[])
            .await
            .map_err(|source| ConnectionError::Query { what: "listing the databases", source })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Parses an LSN such as `0/3000028`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// The name of the WAL segment file holding `lsn` on `timeline`.
pub fn lsn_to_wal_file(timeline: u32, lsn: u64, segment_size: u64) -> String {
    let segment = lsn / segment_size;
    let per_xlogid = 0x1_0000_0000 / segment_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_xlogid,
        segment % per_xlogid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_map_to_wal_file_names() {
        let lsn = parse_lsn("0/3000028").expect("lsn");
        assert_eq!(lsn, 0x3000028);
        assert_eq!(
            lsn_to_wal_file(1, lsn, 16 << 20),
            "000000010000000000000003"
        );
        assert_eq!(
            lsn_to_wal_file(2, parse_lsn("1A/FF000000").expect("lsn"), 16 << 20),
            "000000020000001A000000FF"
        );
        assert_eq!(
            lsn_to_wal_file(1, parse_lsn("0/3000028").expect("lsn"), 64 << 20),
            "000000010000000000000000"
        );
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
    }
}
