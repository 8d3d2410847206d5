//! Tests of the configuration a backup records of its StatefulSet (ConfigMaps, Secrets by name).

use super::*;

/// A StatefulSet as a Bitnami chart makes it: configuration from ConfigMaps, the password
/// from a Secret, a claim template with the status the cluster gave it.
fn stateful_set() -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pg", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                     "labels": {"app": "pg"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                     "managedFields": [{"manager": "helm"}]},
        "spec": {
            "serviceName": "pg-hl",
            "selector": {"matchLabels": {"app": "pg"}},
            "template": {"metadata": {"labels": {"app": "pg"}}, "spec": {
                "containers": [{"name": "postgresql", "image": "postgres:16.4",
                    "envFrom": [{"configMapRef": {"name": "pg-env"}}],
                    "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg-auth", "key": "password"}}}]}],
                "volumes": [
                    {"name": "conf", "configMap": {"name": "pg-conf"}},
                    {"name": "tls", "secret": {"secretName": "pg-tls"}}
                ]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Gi"}}},
                "status": {"phase": "Pending"}}]
        },
        "status": {"replicas": 1, "readyReplicas": 1}
    }))
    .expect("statefulset")
}

fn service() -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pg-hl", "uid": "u-2"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "pg"},
                 "ports": [{"name": "tcp", "port": 5432}]}
    }))
    .expect("service")
}

fn config_map(name: &str, text: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "uid": "u-3", "resourceVersion": "7"},
        "data": {"postgresql.conf": text}
    }))
    .expect("configmap")
}

#[test]
fn the_configuration_maps_and_secrets_the_pods_use_are_found() {
    let sts = stateful_set();
    assert_eq!(
        referenced_config_maps(&sts).into_iter().collect::<Vec<_>>(),
        ["pg-conf", "pg-env"]
    );
    let secrets = referenced_secrets(&sts);
    assert_eq!(
        secrets.keys().cloned().collect::<Vec<_>>(),
        ["pg-auth", "pg-tls"]
    );
    assert_eq!(
        secrets["pg-auth"].iter().cloned().collect::<Vec<_>>(),
        ["password"]
    );
}

#[test]
fn the_document_holds_what_was_declared_and_secrets_by_name_only() {
    let text = document(
        &stateful_set(),
        Some(&service()),
        &[config_map("pg-conf", "max_connections = 300\n")],
    );
    assert!(text.contains("#   pg-auth (keys password)\n"), "{text}");
    assert!(text.contains("#   pg-tls\n"), "{text}");
    let objects: Vec<serde_json::Value> = text
        .split("---\n")
        .skip(1)
        .map(|doc| serde_yaml::from_str(doc).expect("yaml"))
        .collect();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["StatefulSet", "Service", "ConfigMap"]);
    let sts = &objects[0];
    assert_eq!(sts["apiVersion"], "apps/v1");
    assert_eq!(sts["metadata"]["name"], "pg");
    for gone in [
        "namespace",
        "uid",
        "resourceVersion",
        "managedFields",
        "annotations",
    ] {
        assert!(sts["metadata"].get(gone).is_none(), "{gone}: {sts}");
    }
    assert!(sts.get("status").is_none());
    assert!(
        sts["spec"]["volumeClaimTemplates"][0]
            .get("status")
            .is_none()
    );
    assert_eq!(
        objects[1]["spec"]["clusterIP"], "None",
        "headless stays headless"
    );
    assert!(objects[1]["spec"].get("clusterIPs").is_none());
    assert_eq!(
        objects[2]["data"]["postgresql.conf"],
        "max_connections = 300\n"
    );
    assert!(!text.contains("u-1") && !text.contains("u-3"), "{text}");

    // ConfigMaps too large for the ConfigMap that carries the document are named only.
    let huge = config_map("pg-conf", &"x".repeat(DOCUMENT_LIMIT));
    let text = document(&stateful_set(), None, &[huge]);
    assert!(
        text.contains("too large to store with the backup: pg-conf"),
        "{}",
        &text[..400]
    );
    assert!(text.len() < DOCUMENT_LIMIT);
}

#[test]
fn a_stored_stateful_set_is_used_only_as_it_was_recorded() {
    let text = document(&stateful_set(), Some(&service()), &[]);
    let recorded = digest(&text);
    let sts = stored_stateful_set(&text, &recorded, "restore-here").expect("stored");
    assert_eq!(sts.metadata.name.as_deref(), Some("pg"));
    assert_eq!(sts.metadata.namespace.as_deref(), Some("restore-here"));
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.service_name.as_deref(), Some("pg-hl"));
    assert_eq!(
        spec.template.spec.expect("pod").containers[0]
            .image
            .as_deref(),
        Some("postgres:16.4")
    );

    let edited = text.replace("postgres:16.4", "attacker/postgres:latest");
    let why = stored_stateful_set(&edited, &recorded, "shop").expect_err("edited");
    assert!(why.contains("changed after the backup"), "{why}");
}
