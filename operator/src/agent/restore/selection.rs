//! What a selective logical restore takes from a dump (pure): the schemas and tables asked
//! for, as pg_restore matches their names, and what belongs to each table — its rows,
//! indexes, constraints, defaults, triggers, owned sequences, comments and grants — which
//! `pg_restore --table` alone leaves out. Foreign keys come only when every table they join
//! is restored too. The result is a list for `pg_restore --use-list`.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;

/// Options of `pgbackup restore --logical` that restore part of a dump, or into another
/// database.
#[derive(Debug, Clone, Default, Args)]
pub struct Selection {
    /// Restore only this schema and everything in it (logical; repeat for several). The
    /// schema is created when the database lacks it. Names are matched exactly.
    #[arg(long = "schema", value_name = "NAME")]
    pub schemas: Vec<String>,

    /// Restore only this table, with its rows, indexes, constraints, defaults, triggers,
    /// owned sequences, comments and grants (logical; repeat for several; `SCHEMA.TABLE`,
    /// or `TABLE` in any schema; double quotes around a name that holds a dot). Foreign
    /// keys come along only when the tables they join are restored too.
    #[arg(long = "table", value_name = "[SCHEMA.]NAME")]
    pub tables: Vec<String>,

    /// Restore definitions only, no rows (with `--schema`/`--table`, or a whole database).
    #[arg(long, conflicts_with = "data_only")]
    pub schema_only: bool,

    /// Restore rows only, into tables that exist (with `--schema`/`--table`).
    #[arg(long)]
    pub data_only: bool,

    /// Restore into this database instead of the dump's own (created when missing; an
    /// existing one only with `--clean`, unless part of the dump is restored). Needs one
    /// database: `--database`, or a backup of one.
    #[arg(long, value_name = "NAME")]
    pub into_database: Option<String>,
}

impl Selection {
    /// Whether only part of a dump is restored.
    pub fn is_partial(&self) -> bool {
        !self.schemas.is_empty() || !self.tables.is_empty() || self.data_only
    }

    /// The pg_restore filters whose matches seed the selection, one run each: the schemas
    /// asked for, then the tables of each schema, then the tables named without one.
    pub fn seed_runs(&self) -> Result<Vec<Vec<String>>, String> {
        let mut runs = Vec::new();
        if !self.schemas.is_empty() {
            runs.push(
                self.schemas
                    .iter()
                    .flat_map(|s| ["--schema".to_string(), s.clone()])
                    .collect(),
            );
        }
        let mut by_schema: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for table in &self.tables {
            let (schema, name) = qualified_name(table)?;
            by_schema.entry(schema).or_default().push(name);
        }
        for (schema, tables) in by_schema {
            let mut run: Vec<String> = schema
                .map(|s| vec!["--schema".to_string(), s])
                .unwrap_or_default();
            run.extend(tables.into_iter().flat_map(|t| ["--table".to_string(), t]));
            runs.push(run);
        }
        if runs.is_empty() {
            // `--data-only` alone: every table's rows.
            runs.push(Vec::new());
        }
        Ok(runs)
    }
}

/// `schema.table`, `table`, or either part in double quotes (`"a.b"."c"`; `""` inside
/// quotes is one quote). Names are taken as written: no folding to lower case.
pub fn qualified_name(text: &str) -> Result<(Option<String>, String), String> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("{text}: a quote is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("{text}: an empty name"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(c) => return Err(format!("{text}: {c:?} after a quoted name")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((Some(schema), table)),
        Err(parts) if parts.len() == 1 => Ok((None, parts.into_iter().next().unwrap_or_default())),
        Err(_) => Err(format!("{text}: say SCHEMA.TABLE or TABLE")),
    }
}

/// One entry of `pg_restore --list --verbose`.
#[derive(Debug, Clone, PartialEq)]
pub struct TocEntry {
    /// The dump id, first on the line.
    pub id: u32,
    /// The entry's kind (`TABLE`, `TABLE DATA`, `FK CONSTRAINT`, …).
    pub desc: String,
    /// The line as pg_restore listed it, for `--use-list`.
    pub line: String,
    /// The dump ids it depends on.
    pub deps: Vec<u32>,
}

/// Kinds of entries taken with a selected object they depend on.
const BELONGING: &[&str] = &[
    "TABLE DATA",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "SEQUENCE",
    "CHECK CONSTRAINT",
    "CONSTRAINT",
    "DEFAULT",
    "INDEX",
    "TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
    "STATISTICS",
    "COMMENT",
    "ACL",
    "SECURITY LABEL",
];

/// Kinds of entries taken only when everything they depend on is selected.
const JOINING: &[&str] = &["FK CONSTRAINT", "TABLE ATTACH", "INDEX ATTACH"];

/// Every kind pg_restore lists, longest first so that a kind is not taken for a shorter
/// one it starts with.
const KINDS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW",
    "CHECK CONSTRAINT",
    "SECURITY LABEL",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "EVENT TRIGGER",
    "ROW SECURITY",
    "SEQUENCE SET",
    "TABLE ATTACH",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "DEFAULT ACL",
    "TABLE DATA",
];

/// Parses `pg_restore --list --verbose`: entry lines and the `; depends on:` lines after
/// them.
pub fn parse_toc(listing: &str) -> Vec<TocEntry> {
    let mut entries: Vec<TocEntry> = Vec::new();
    for line in listing.lines() {
        if let Some(deps) = line
            .trim_start_matches(';')
            .trim()
            .strip_prefix("depends on:")
        {
            if line.starts_with(';')
                && let Some(last) = entries.last_mut()
            {
                last.deps = deps
                    .split_whitespace()
                    .filter_map(|d| d.parse().ok())
                    .collect();
            }
            continue;
        }
        if line.starts_with(';') {
            continue;
        }
        let Some((id, rest)) = line.split_once(';') else {
            continue;
        };
        let Ok(id) = id.trim().parse() else {
            continue;
        };
        // `<catalog oid> <oid> <kind> <schema> <tag> <owner>`
        let rest = rest.trim_start();
        let kind_text = rest.splitn(3, ' ').nth(2).unwrap_or_default();
        let desc = KINDS
            .iter()
            .find(|k| kind_text.starts_with(&format!("{k} ")))
            .map(|k| k.to_string())
            .unwrap_or_else(|| kind_text.split(' ').next().unwrap_or_default().to_string());
        entries.push(TocEntry {
            id,
            desc,
            line: line.to_string(),
            deps: Vec::new(),
        });
    }
    entries
}

/// The dump ids listed by a filtered `pg_restore --list` (without `--verbose`).
pub fn listed_ids(listing: &str) -> BTreeSet<u32> {
    parse_toc(listing).into_iter().map(|e| e.id).collect()
}

/// The name of a `SCHEMA` entry: `<oids> SCHEMA - <name> <owner>`.
pub fn schema_name(entry: &TocEntry) -> Option<&str> {
    let (_, after) = entry.line.split_once(" SCHEMA - ")?;
    Some(after.rsplit_once(' ').map_or(after, |(name, _owner)| name))
}

/// The entries to restore, in the dump's order: the `seed` (what pg_restore matched), what
/// belongs to each selected object, and the schemas they live in that the database
/// lacks (`missing_schema` says which). Entries restored with every dump (encoding,
/// search path) come first as pg_restore lists them.
pub fn select(
    toc: &[TocEntry],
    seed: &BTreeSet<u32>,
    missing_schema: impl Fn(&str) -> bool,
) -> Vec<TocEntry> {
    let by_id: BTreeMap<u32, &TocEntry> = toc.iter().map(|e| (e.id, e)).collect();
    let mut selected: BTreeSet<u32> = seed
        .iter()
        .copied()
        .filter(|id| by_id.contains_key(id))
        .collect();
    loop {
        let before = selected.len();
        for entry in toc {
            let kind = entry.desc.as_str();
            let take = if BELONGING.contains(&kind) {
                entry.deps.iter().any(|d| selected.contains(d))
            } else if JOINING.contains(&kind) {
                !entry.deps.is_empty() && entry.deps.iter().all(|d| selected.contains(d))
            } else {
                false
            };
            if take {
                selected.insert(entry.id);
            }
        }
        if selected.len() == before {
            break;
        }
    }
    let schemas: Vec<u32> = selected
        .iter()
        .flat_map(|id| by_id[id].deps.iter().copied())
        .filter(|d| {
            by_id
                .get(d)
                .is_some_and(|e| e.desc == "SCHEMA" && schema_name(e).is_some_and(&missing_schema))
        })
        .collect();
    selected.extend(schemas);
    toc.iter()
        .filter(|e| {
            selected.contains(&e.id)
                || ["ENCODING", "STDSTRINGS", "SEARCHPATH"].contains(&e.desc.as_str())
        })
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "selection_tests.rs"]
mod tests;
