//! Rows per table, counted at backup time and again in the restore test: the figure a user
//! would check by hand after a restore. Only permanent ordinary tables are counted
//! (unlogged tables come back empty from a physical restore by design), and only those
//! the role may read.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::ConnectionError;

/// The rows of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableRows {
    /// The database.
    pub database: String,
    /// `schema.table`, each part quoted as needed (`public."Order"`).
    pub table: String,
    /// Rows counted.
    pub rows: u64,
    /// Rows were inserted or deleted while the backup ran, so the count taken after it
    /// ended may differ from the backup's state (physical backups; a logical backup's
    /// counts are taken in the dump's own snapshot and are exact).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changing: bool,
}

/// The readable permanent tables of the connected database, as `(oid, quoted name)`.
const TABLES: &str = "SELECT c.oid::bigint, format('%I.%I', n.nspname, c.relname) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
       AND has_table_privilege(c.oid, 'SELECT') \
     ORDER BY 2";

/// Counts the rows of every readable table of the connected database, in the client's
/// current snapshot (run it inside a repeatable-read transaction for one consistent view).
pub async fn count_rows(
    client: &Client,
    database: &str,
) -> Result<Vec<TableRows>, ConnectionError> {
    let tables = client
        .query(TABLES, &[])
        .await
        .map_err(|source| ConnectionError::Query {
            what: "listing the tables to count",
            source,
        })?;
    let mut counted = Vec::with_capacity(tables.len());
    for row in tables {
        let table: String = row.get(1);
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {table}"), &[])
            .await
            .map_err(|source| ConnectionError::Query {
                what: "counting the rows of a table",
                source,
            })?
            .get(0);
        counted.push(TableRows {
            database: database.to_string(),
            table,
            rows: rows.max(0) as u64,
            changing: false,
        });
    }
    Ok(counted)
}

/// Rows inserted plus rows deleted per table so far (the statistics system's counters),
/// keyed by quoted table name. Two readings that differ mean the table's row count moved
/// in between.
pub async fn write_counters(
    client: &Client,
) -> Result<std::collections::BTreeMap<String, i64>, ConnectionError> {
    let rows = client
        .query(
            "SELECT format('%I.%I', schemaname, relname), n_tup_ins + n_tup_del \
             FROM pg_stat_user_tables",
            &[],
        )
        .await
        .map_err(|source| ConnectionError::Query {
            what: "reading the tables' write statistics",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect())
}

/// How the rows found after a restore compare with the rows recorded at backup time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Tables compared.
    pub tables: usize,
    /// Rows found in them.
    pub rows: u64,
    /// Tables whose count is the recorded one.
    pub matched: usize,
    /// Tables that took writes while the backup ran and differ (not a failure).
    pub changed_during_backup: Vec<Difference>,
    /// Tables that differ though nothing wrote to them, or are missing: failures.
    pub mismatched: Vec<Difference>,
}

/// One table whose count is not the recorded one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
    /// Rows recorded at backup time.
    pub recorded: u64,
    /// Rows found after the restore; `None` when the table is missing.
    pub found: Option<u64>,
}

impl Comparison {
    /// Compares the recorded counts with the counts found.
    pub fn of(recorded: &[TableRows], found: &[TableRows]) -> Self {
        let mut comparison = Comparison {
            tables: recorded.len(),
            ..Comparison::default()
        };
        for expected in recorded {
            let actual = found
                .iter()
                .find(|f| f.database == expected.database && f.table == expected.table)
                .map(|f| f.rows);
            comparison.rows += actual.unwrap_or(0);
            if actual == Some(expected.rows) {
                comparison.matched += 1;
                continue;
            }
            let difference = Difference {
                database: expected.database.clone(),
                table: expected.table.clone(),
                recorded: expected.rows,
                found: actual,
            };
            if expected.changing && actual.is_some() {
                comparison.changed_during_backup.push(difference);
            } else {
                comparison.mismatched.push(difference);
            }
        }
        comparison
    }

    /// One line for people: `42 tables, 1,234 rows: all match`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} tables, {} rows: {} match the counts recorded at backup time",
            self.tables, self.rows, self.matched
        );
        if !self.changed_during_backup.is_empty() {
            text.push_str(&format!(
                ", {} took writes while the backup ran",
                self.changed_during_backup.len()
            ));
        }
        for d in self.mismatched.iter().take(5) {
            match d.found {
                Some(found) => text.push_str(&format!(
                    "; {}/{}: {} rows recorded, {found} restored",
                    d.database, d.table, d.recorded
                )),
                None => text.push_str(&format!(
                    "; {}/{}: missing after the restore ({} rows recorded)",
                    d.database, d.table, d.recorded
                )),
            }
        }
        if self.mismatched.len() > 5 {
            text.push_str(&format!("; {} more differ", self.mismatched.len() - 5));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(table: &str, rows: u64, changing: bool) -> TableRows {
        TableRows {
            database: "shop".into(),
            table: table.into(),
            rows,
            changing,
        }
    }

    #[test]
    fn quiet_tables_must_match_and_busy_ones_are_reported() {
        let recorded = [
            rows("public.orders", 10, false),
            rows("public.events", 500, true),
            rows("public.items", 3, false),
            rows("public.gone", 7, true),
        ];
        let found = [
            rows("public.orders", 10, false),
            rows("public.events", 512, false),
            rows("public.items", 2, false),
        ];
        let c = Comparison::of(&recorded, &found);
        assert_eq!((c.tables, c.matched, c.rows), (4, 1, 524));
        assert_eq!(c.changed_during_backup.len(), 1);
        assert_eq!(c.changed_during_backup[0].table, "public.events");
        let failed: Vec<_> = c.mismatched.iter().map(|d| d.table.as_str()).collect();
        assert_eq!(failed, ["public.items", "public.gone"]);
        let summary = c.summary();
        assert!(
            summary.contains("shop/public.items: 3 rows recorded, 2 restored"),
            "{summary}"
        );
        assert!(summary.contains("shop/public.gone: missing"), "{summary}");
    }

    #[test]
    fn everything_matching_says_so() {
        let recorded = [rows("public.a", 1, false), rows("public.b", 0, false)];
        let c = Comparison::of(&recorded, &recorded);
        assert!(c.mismatched.is_empty() && c.changed_during_backup.is_empty());
        assert_eq!(
            c.summary(),
            "2 tables, 1 rows: 2 match the counts recorded at backup time"
        );
    }
}
