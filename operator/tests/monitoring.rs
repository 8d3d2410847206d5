//! The monitoring files in `docs/monitoring/` against the code: every metric the Prometheus
//! rules and the Grafana dashboard query is one the operator or the WAL archiver exposes,
//! every alert is complete and documented, the dashboard asks for its data source, and the
//! chart's copy of the rules is the same file.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
};

use pgbackup::{agent::wal_archive::ArchiverMetrics, controllers::Metrics, http::Probe};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const RULES: &str = "docs/monitoring/pgbackup-rules.yaml";
const CHART_RULES: &str = "charts/pgbackup/files/prometheus-rules.yaml";
const DASHBOARD: &str = "docs/monitoring/grafana-dashboard.json";
const GUIDE: &str = "docs/monitoring.md";
/// The only data source reference the dashboard may hold: its own variable.
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn read(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    fs::read_to_string(root.join(path)).expect(path)
}

/// The sample names a scrape of `text` (OpenMetrics, as `/metrics` answers) can hold, read
/// from its `# TYPE` lines: a counter's samples end in `_total`, a histogram's in
/// `_bucket`, `_sum` and `_count`.
fn sample_names(text: &str, into: &mut BTreeMap<String, &'static str>, source: &'static str) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("{source}: a TYPE line without a name and a type: {line}");
        };
        let names: Vec<String> = match kind {
            "counter" => vec![format!("{name}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect(),
            "gauge" => vec![name.to_string()],
            other => panic!("{source}: {name} has a type this test does not know: {other}"),
        };
        for name in names {
            into.insert(name, source);
        }
    }
}

/// Every sample name the product exposes, with the process that exposes it. A labelled
/// family shows in the text only once it has a series, so one of each is recorded first
/// through the operator's own calls.
fn exposed() -> BTreeMap<String, &'static str> {
    let operator = Metrics::new();
    operator.backup_completed("shop", "nightly", 1_790_000_000.0, 42.0, 1234);
    operator.wal_lag("shop", "nightly", 3.5);
    operator.recovery_window("shop", "nightly", Some((1_780_000_000.0, 1_790_000_000.0)));
    operator.backup_reach("shop", "nightly", &[("nightly-1".into(), 1_790_000_000.0)]);
    operator.reconcile_error("PostgresBackup", "shop", "nightly-1");
    operator.reconciled("PostgresBackup");
    operator.set_leader(true);
    let mut names = BTreeMap::new();
    sample_names(&operator.metrics(), &mut names, "operator");
    sample_names(
        &ArchiverMetrics::new().metrics(),
        &mut names,
        "WAL archiver",
    );
    for known in [
        "pgbackup_backup_last_success_timestamp_seconds",
        "pgbackup_reconcile_errors_total",
        "pgbackup_wal_upload_duration_seconds_bucket",
    ] {
        assert!(
            names.contains_key(known),
            "the rendered registries lack {known}: {names:?}"
        );
    }
    names
}

/// The `pgbackup_…` metric names in a PromQL expression: whole identifiers outside quoted
/// label values, not recorded series (`pgbackup:…`) nor a longer identifier that merely
/// contains `pgbackup_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut identifier = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars().chain([' ']) {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            identifier.push(c);
            continue;
        }
        if identifier.starts_with("pgbackup_")
            && identifier
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            found.insert(identifier.clone());
        }
        identifier.clear();
        if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
        }
    }
    found
}

fn rules() -> Yaml {
    serde_yaml::from_str(&read(RULES)).expect("docs/monitoring/pgbackup-rules.yaml is YAML")
}

/// Every rule of the file, with its group's name.
fn each_rule(rules: &Yaml) -> Vec<(String, Yaml)> {
    let groups = rules
        .get("groups")
        .and_then(Yaml::as_sequence)
        .expect("the rule file has a `groups` list");
    assert!(!groups.is_empty(), "the rule file has no groups");
    let mut all = Vec::new();
    for group in groups {
        let name = group
            .get("name")
            .and_then(Yaml::as_str)
            .expect("every group has a name")
            .to_string();
        let list = group
            .get("rules")
            .and_then(Yaml::as_sequence)
            .expect("every group has a `rules` list");
        all.extend(list.iter().map(|rule| (name.clone(), rule.clone())));
    }
    all
}

fn text<'a>(value: &'a Yaml, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Yaml::as_str)
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("docs/monitoring/grafana-dashboard.json is JSON")
}

/// Every `(key, value)` of the objects in the JSON document, depth first.
fn entries<'a>(value: &'a Json, into: &mut Vec<(&'a str, &'a Json)>) {
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                into.push((k, v));
                entries(v, into);
            }
        }
        Json::Array(items) => {
            for item in items {
                entries(item, into);
            }
        }
        _ => {}
    }
}

#[test]
fn the_rules_and_the_dashboard_query_only_exposed_metrics() {
    let exposed = exposed();
    let mut queried: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (group, rule) in each_rule(&rules()) {
        let what = text(&rule, "alert")
            .or_else(|| text(&rule, "record"))
            .expect("every rule is an `alert` or a `record`");
        let expr = text(&rule, "expr").expect("every rule has an `expr`");
        for name in metric_names(expr) {
            queried
                .entry(name)
                .or_default()
                .insert(format!("{RULES}: {group}/{what}"));
        }
    }
    let dashboard = dashboard();
    let mut all = Vec::new();
    entries(&dashboard, &mut all);
    let mut panels_with_queries = 0;
    for (key, value) in all {
        let Some(query) = value.as_str() else {
            continue;
        };
        if key == "expr" {
            panels_with_queries += 1;
        }
        if matches!(key, "expr" | "query" | "definition") {
            for name in metric_names(query) {
                queried
                    .entry(name)
                    .or_default()
                    .insert(format!("{DASHBOARD}: {query}"));
            }
        }
    }
    assert!(
        panels_with_queries >= 10,
        "the dashboard has only {panels_with_queries} queries"
    );
    let unknown: Vec<String> = queried
        .iter()
        .filter(|(name, _)| !exposed.contains_key(*name))
        .map(|(name, uses)| format!("{name} (in {uses:?})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics that neither the operator nor the WAL archiver exposes: {unknown:#?}\nexposed: {:#?}",
        exposed.keys().collect::<Vec<_>>()
    );
    // Each process's metrics are used somewhere.
    for source in ["operator", "WAL archiver"] {
        assert!(
            queried
                .keys()
                .any(|name| exposed.get(name) == Some(&source)),
            "no rule or panel uses a metric of the {source}"
        );
    }
}

#[test]
fn every_alert_has_a_duration_a_severity_a_summary_and_a_documented_runbook() {
    let guide = read(GUIDE);
    let anchors: BTreeSet<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| {
            heading
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let mut alerts = BTreeSet::new();
    for (group, rule) in each_rule(&rules()) {
        let Some(alert) = text(&rule, "alert") else {
            continue;
        };
        assert!(
            alerts.insert(alert.to_string()),
            "{group}/{alert}: the alert name is used twice"
        );
        assert!(
            text(&rule, "for").is_some(),
            "{group}/{alert} has no `for`: one bad scrape would page"
        );
        let severity = rule
            .get("labels")
            .and_then(|labels| text(labels, "severity"))
            .expect("every alert has a `severity` label");
        assert!(
            matches!(severity, "critical" | "warning"),
            "{group}/{alert}: severity {severity:?} is neither critical nor warning"
        );
        let annotations = rule
            .get("annotations")
            .expect("every alert has annotations");
        for key in ["summary", "description"] {
            assert!(
                text(annotations, key).is_some_and(|s| !s.trim().is_empty()),
                "{group}/{alert} has no `{key}` annotation"
            );
        }
        let runbook = text(annotations, "runbook_url").expect("every alert has a `runbook_url`");
        let anchor = runbook
            .strip_prefix("docs/monitoring.md#")
            .expect("runbook_url points into docs/monitoring.md");
        assert_eq!(
            anchor,
            alert.to_lowercase(),
            "{group}/{alert}: the runbook anchor is the alert's name"
        );
        assert!(
            anchors.contains(anchor),
            "{group}/{alert}: docs/monitoring.md has no `### {alert}` section for its runbook"
        );
    }
    assert!(alerts.len() >= 8, "only {} alerts", alerts.len());
}

#[test]
fn the_dashboard_names_no_data_source_of_its_own() {
    let dashboard = dashboard();
    let mut all = Vec::new();
    entries(&dashboard, &mut all);
    let mut references = 0;
    for (key, value) in all {
        if key != "datasource" {
            continue;
        }
        references += 1;
        let uid = match value {
            Json::String(uid) => Some(uid.as_str()),
            Json::Object(map) => map.get("uid").and_then(Json::as_str),
            _ => None,
        };
        assert_eq!(
            uid,
            Some(DATASOURCE),
            "a data source reference other than {DATASOURCE}: {value}"
        );
    }
    assert!(references > 0, "the dashboard's panels name no data source");
    let variables = dashboard
        .pointer("/templating/list")
        .and_then(Json::as_array)
        .expect("the dashboard has template variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v.get("name").and_then(Json::as_str) == Some(name))
            .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
    };
    assert_eq!(
        variable("DS_PROMETHEUS").get("type").and_then(Json::as_str),
        Some("datasource"),
        "DS_PROMETHEUS is a data source variable, so the dashboard works on any Prometheus"
    );
    for name in ["namespace", "name"] {
        let definition = variable(name)
            .get("definition")
            .and_then(Json::as_str)
            .expect("the variable has a definition");
        assert!(
            definition.starts_with("label_values("),
            "`{name}` comes from label_values: {definition}"
        );
    }
    assert!(
        dashboard.get("uid").and_then(Json::as_str).is_some(),
        "a fixed dashboard uid keeps links stable across imports"
    );
}

#[test]
fn the_charts_prometheus_rule_holds_the_documented_rules() {
    assert!(
        read(CHART_RULES) == read(RULES),
        "{CHART_RULES} differs from {RULES}: copy it (`cp {RULES} {CHART_RULES}`)"
    );
}

#[test]
fn metric_names_are_read_whole() {
    let names = metric_names(
        r#"time() - max by (namespace, name) (pgbackup_backup_last_success_timestamp_seconds{job="pgbackup_x", a='pgbackup_y'}) and pgbackup:recorded and __meta_pgbackup_io and pgbackup_wal_archive_gaps_total"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "pgbackup_backup_last_success_timestamp_seconds",
            "pgbackup_wal_archive_gaps_total"
        ],
        "quoted label values, longer identifiers and recorded series are not metric names"
    );
}
