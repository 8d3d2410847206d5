//! Every example under `manifests/examples/` and `manifests/walkthrough/` is a valid object
//! of its kind: it validates against the generated CRD schema (unknown fields rejected),
//! passes the CEL rules the API server would run, reads back into the typed API, and asks
//! for nothing the operator would refuse. (Their Kubernetes objects are checked against
//! the Kubernetes schema by `charts/tests/check_chart.py`.)

mod support;

use std::{collections::BTreeSet, fs, path::PathBuf};

use kube::CustomResourceExt;
use pgbackup::api::{self, PostgresBackup};
use serde::Deserialize;
use serde_json::Value;
use support::{
    examples::{is_pgbackup_object, object_problems},
    schema::{open_api_schema, schema_errors},
};

fn example_documents() -> Vec<(String, Value)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<_> = ["examples", "walkthrough"]
        .iter()
        .flat_map(|dir| {
            fs::read_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("manifests/{dir}: {e}"))
                .filter_map(Result::ok)
                .map(|e| e.path())
        })
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let text = fs::read_to_string(&file).expect("read example");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                docs.push((
                    file.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    value,
                ));
            }
        }
    }
    docs
}

#[test]
fn every_example_validates_against_its_crd() {
    let crds = api::crds();
    let mut kinds_seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (file, doc) in example_documents() {
        if !is_pgbackup_object(&doc) {
            continue; // Secrets, StatefulSets and the like are checked by the manifest checks.
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = format!(
            "{file} ({kind} {})",
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        problems.extend(object_problems(&name, &doc));
        kinds_seen.insert(kind);
    }
    assert!(
        problems.is_empty(),
        "invalid examples:\n{}",
        problems.join("\n")
    );
    let all_kinds: BTreeSet<String> = crds.iter().map(|c| c.spec.names.kind.clone()).collect();
    assert_eq!(kinds_seen, all_kinds, "every kind has an example");
}

#[test]
fn the_schema_check_rejects_typos_and_bad_values() {
    let crd = PostgresBackup::crd();
    let schema = open_api_schema(&crd);
    let good = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup", "metadata": {"name": "b"},
        "spec": {"method": "logical", "target": {"statefulSet": "pg", "credentialsSecret": {"name": "s"}},
                 "repository": {"s3": {"bucket": "backups"}}}
    });
    assert_eq!(schema_errors(&schema, &good), Vec::<String>::new());

    let mut typo = good.clone();
    typo["spec"]["target"]["statefullSet"] = "pg".into();
    assert!(
        !schema_errors(&schema, &typo).is_empty(),
        "an unknown field is rejected"
    );

    let mut bad_enum = good.clone();
    bad_enum["spec"]["method"] = "snapshot".into();
    assert!(
        !schema_errors(&schema, &bad_enum).is_empty(),
        "a value outside the enum is rejected"
    );

    let mut bad_port = good.clone();
    bad_port["spec"]["target"]["port"] = 70000.into();
    assert!(
        !schema_errors(&schema, &bad_port).is_empty(),
        "a port above 65535 is rejected"
    );

    let mut missing = good;
    missing["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("target");
    assert!(
        !schema_errors(&schema, &missing).is_empty(),
        "a missing required field is rejected"
    );
}
