//! The generated CRDs: `crds/` matches `pgbackup crd`, every schema is structural and
//! documented, and the CRDs carry what `kubectl` users rely on.

mod support;

use std::{collections::BTreeSet, fs, path::PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pgbackup::api;
use support::schema::{open_api_schema, structural_violations, undocumented_fields};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn crds_directory_matches_generated_output() {
    let regenerate = "regenerate with `cargo run -p pgbackup -- crd --output-dir crds`";
    let rendered = api::crds_yaml().expect("CRDs render");
    let mut expected_files = BTreeSet::new();
    for (crd, text) in &rendered {
        let file = api::crd_file_name(crd);
        let on_disk = fs::read_to_string(crds_dir().join(&file)).unwrap_or_default();
        assert!(
            on_disk == *text,
            "crds/{file} differs from the generated CRD; {regenerate}"
        );
        expected_files.insert(file);
    }
    let present: BTreeSet<String> = fs::read_dir(crds_dir())
        .expect("crds/ exists")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected_files,
        "crds/ holds exactly one file per kind; {regenerate}"
    );
}

#[test]
fn crd_files_parse_as_custom_resource_definitions() {
    for (_, text) in api::crds_yaml().expect("CRDs render") {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("the YAML is a CRD");
        assert_eq!(crd.spec.group, api::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert!(version.served && version.storage);
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Phase") || columns.contains(&"Ready"),
            "{columns:?}"
        );
        assert!(columns.contains(&"Age"), "{columns:?}");
    }
}

#[test]
fn every_schema_is_structural() {
    for crd in api::crds() {
        let violations = structural_violations(&open_api_schema(&crd));
        assert!(
            violations.is_empty(),
            "{} is not structural:\n{}",
            crd.spec.names.kind,
            violations.join("\n")
        );
    }
}

#[test]
fn the_structural_check_catches_what_the_api_server_refuses() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "ref": {"$ref": "#/definitions/x"},
            "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                     "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]},
            "junctor": {"type": "string", "anyOf": [{"type": "string", "description": "inside"}]}
        }
    });
    let violations = structural_violations(&bad).join("\n");
    for expected in [
        ".untyped: no type",
        ".both: properties and additionalProperties",
        ".ref: keyword $ref",
        "list-map key k must be required",
        "description is not allowed inside",
    ] {
        assert!(
            violations.contains(expected),
            "missing {expected:?} in:\n{violations}"
        );
    }
}

#[test]
fn every_field_has_kubectl_explain_text() {
    for crd in api::crds() {
        let mut missing = Vec::new();
        undocumented_fields(&open_api_schema(&crd), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{} fields without a description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn short_names_match_the_design() {
    let names: Vec<(String, Vec<String>)> = api::crds()
        .into_iter()
        .map(|c| {
            (
                c.spec.names.kind,
                c.spec.names.short_names.unwrap_or_default(),
            )
        })
        .collect();
    let expected = [
        ("PostgresBackup", "pgb"),
        ("BackupSchedule", "pgbs"),
        ("VolumeSnapshotBackup", "vsb"),
        ("PointInTimeRestore", "pitr"),
    ];
    for (kind, short) in expected {
        assert!(
            names
                .iter()
                .any(|(k, s)| k == kind && s == &[short.to_string()]),
            "{kind} → {short} in {names:?}"
        );
    }
}
