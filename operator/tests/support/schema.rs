//! Checks on CRD schemas the way the API server makes them: structural-schema rules,
//! descriptions for `kubectl explain`, and validation of objects against a schema with
//! unknown fields rejected (as `kubectl apply --validate=strict` does).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// The `openAPIV3Schema` of a CRD's only version, as JSON.
pub fn open_api_schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("CRD has an openAPIV3Schema")).expect("schema serializes")
}

/// Everything in a schema that makes it non-structural, as `path: problem` lines.
/// See "Specifying a structural schema" in the Kubernetes CRD documentation.
pub fn structural_violations(root: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_node(root, "", false, &mut out);
    if let Some(metadata) = root
        .pointer("/properties/metadata/properties")
        .and_then(Value::as_object)
    {
        for key in metadata
            .keys()
            .filter(|k| *k != "name" && *k != "generateName")
        {
            out.push(format!(
                ".metadata.{key}: only name and generateName may be specified under metadata"
            ));
        }
    }
    out
}

const FORBIDDEN: &[&str] = &[
    "$ref",
    "$schema",
    "$defs",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
    "id",
];
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "description",
    "default",
    "additionalProperties",
    "nullable",
];

fn check_node(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for key in FORBIDDEN.iter().filter(|k| obj.contains_key(**k)) {
        out.push(format!("{path}: keyword {key} is not allowed"));
    }
    if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
        out.push(format!("{path}: uniqueItems: true is not allowed"));
    }
    let flag = |key: &str| obj.get(key) == Some(&Value::Bool(true));
    if in_junctor {
        for key in NOT_IN_JUNCTORS.iter().filter(|k| obj.contains_key(**k)) {
            out.push(format!(
                "{path}: {key} is not allowed inside allOf/anyOf/oneOf/not"
            ));
        }
    } else {
        let typed = obj
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if !typed
            && !flag("x-kubernetes-int-or-string")
            && !flag("x-kubernetes-preserve-unknown-fields")
        {
            out.push(format!("{path}: no type"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if obj.get("type").and_then(Value::as_str) == Some("array")
        && !obj.get("items").is_some_and(Value::is_object)
    {
        out.push(format!("{path}: an array needs a single items schema"));
    }
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        check_list_map(obj, path, out);
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_node(child, &format!("{path}.{name}"), in_junctor, out);
        }
    }
    if let Some(items) = obj.get("items") {
        check_node(items, &format!("{path}[]"), in_junctor, out);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_node(additional, &format!("{path}{{*}}"), in_junctor, out);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in obj
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_node(child, &format!("{path}<{junctor}[{i}]>"), true, out);
        }
    }
    if let Some(not) = obj.get("not") {
        check_node(not, &format!("{path}<not>"), true, out);
    }
}

fn check_list_map(obj: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    let keys: Vec<&str> = obj
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        out.push(format!(
            "{path}: list-type map needs x-kubernetes-list-map-keys"
        ));
    }
    let items = obj.get("items").and_then(Value::as_object);
    let required: Vec<&str> = items
        .and_then(|i| i.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for key in keys {
        let defaulted = items
            .and_then(|i| i.get("properties"))
            .and_then(|p| p.get(key))
            .is_some_and(|p| p.get("default").is_some());
        if !required.contains(&key) && !defaulted {
            out.push(format!(
                "{path}: list-map key {key} must be required or defaulted"
            ));
        }
    }
}

/// Paths of properties without a description (they would read empty in `kubectl explain`).
pub fn undocumented_fields(node: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            let root_meta =
                path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
            if !described && !root_meta {
                out.push(child_path.clone());
            }
            undocumented_fields(child, &child_path, out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented_fields(items, &format!("{path}[]"), out);
    }
}

/// A copy of the schema that rejects unknown fields, as strict field validation does. The
/// API server adds `apiVersion`, `kind` and `metadata` to every root schema; so does this.
pub fn strict(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props
            .entry("apiVersion")
            .or_insert(serde_json::json!({"type": "string"}));
        props
            .entry("kind")
            .or_insert(serde_json::json!({"type": "string"}));
        props
            .entry("metadata")
            .or_insert(serde_json::json!({"type": "object"}));
    }
    close_objects(&mut schema);
    schema
}

fn close_objects(node: &mut Value) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") && !preserve {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties", "additionalProperties", "items"] {
        match obj.get_mut(key) {
            Some(Value::Object(children)) if key == "properties" => {
                children.values_mut().for_each(close_objects)
            }
            Some(child) if key != "properties" => close_objects(child),
            _ => {}
        }
    }
}

/// Validation errors of an object against a CRD schema with unknown fields rejected.
pub fn schema_errors(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&strict(schema))
        .expect("CRD schema compiles as JSON Schema");
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}
