//! What the operator reads from a database's StatefulSet and its claims: the database
//! container, where it mounts each claim and keeps PGDATA, the user it runs as, and
//! claim sizes.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolumeClaimSpec, TypedLocalObjectReference, VolumeMount},
};

/// The database container (the one named like postgres, else the first) and where it
/// mounts the claims of `template`.
pub fn database_mount<'a>(
    stateful_set: &'a StatefulSet,
    template: &str,
) -> Option<(&'a k8s_openapi::api::core::v1::Container, &'a VolumeMount)> {
    let pod = stateful_set.spec.as_ref()?.template.spec.as_ref()?;
    let container = pod
        .containers
        .iter()
        .find(|c| c.name.contains("postgres"))
        .or_else(|| pod.containers.first())?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == template)?;
    Some((container, mount))
}

/// Where PGDATA lies inside the data claim, as the StatefulSet's database container says:
/// its `PGDATA` (Bitnami: `POSTGRESQL_DATA_DIR`; else the image's default) relative to
/// where the claim is mounted. `None` when the StatefulSet does not tell.
pub fn expected_data_sub_path(stateful_set: &StatefulSet, template: &str) -> Option<String> {
    let (container, mount) = database_mount(stateful_set, template)?;
    let env = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    let image = container.image.as_deref().unwrap_or_default();
    let pgdata = env("PGDATA")
        .or_else(|| env("POSTGRESQL_DATA_DIR"))
        .or_else(|| {
            if image.contains("bitnami") {
                Some("/bitnami/postgresql/data".to_string())
            } else if image.contains("postgres") {
                Some("/var/lib/postgresql/data".to_string())
            } else {
                None
            }
        })?;
    let mount_path = mount.mount_path.trim_end_matches('/');
    let inside = pgdata.strip_prefix(mount_path)?;
    if !(inside.is_empty() || inside.starts_with('/')) {
        return None;
    }
    let parts: Vec<&str> = [mount.sub_path.as_deref().unwrap_or_default(), inside]
        .iter()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect();
    Some(parts.join("/"))
}

/// The uid and gid the database runs as (its container's, else its pod's security
/// context), so that restored files have the owner PostgreSQL expects.
pub fn database_user(stateful_set: &StatefulSet) -> Option<(i64, Option<i64>, Option<i64>)> {
    let pod = stateful_set.spec.as_ref()?.template.spec.as_ref()?;
    let pod_context = pod.security_context.as_ref();
    let container = pod
        .containers
        .iter()
        .find(|c| c.name.contains("postgres"))
        .or_else(|| pod.containers.first());
    let container_context = container.and_then(|c| c.security_context.as_ref());
    let user = container_context
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user))?;
    let group = container_context
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group));
    Some((user, group, pod_context.and_then(|c| c.fs_group)))
}

/// A size such as `5Gi` or `10G` in bytes.
pub fn quantity_bytes(text: &str) -> Option<u128> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    // `1e9`, `5E3`: a decimal exponent (a bare `E` is exa).
    if let Some(exponent) = unit
        .strip_prefix(['e', 'E'])
        .filter(|e| !e.is_empty())
        .and_then(|e| e.parse::<i32>().ok())
    {
        return Some((number * 10f64.powi(exponent)) as u128);
    }
    let factor: f64 = match unit {
        "" => 1.0,
        "m" => 1e-3,
        "Ei" => 1024f64.powi(6),
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return None,
    };
    Some((number * factor) as u128)
}

/// Makes the claim ask for at least `size` of storage.
pub fn ask_at_least(spec: &mut PersistentVolumeClaimSpec, size: &str) {
    let requests = spec
        .resources
        .get_or_insert_default()
        .requests
        .get_or_insert_default();
    let smaller = requests
        .get("storage")
        .and_then(|q| quantity_bytes(&q.0))
        .zip(quantity_bytes(size))
        .is_none_or(|(asked, needed)| asked < needed);
    if smaller {
        requests.insert(
            "storage".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.to_string()),
        );
    }
}

/// The spec of a claim of volumeClaimTemplate `template`, made from the VolumeSnapshot
/// `snapshot` (its name and restore size) when there is one, and then at least as large
/// as the snapshot needs. `None` when the StatefulSet has no such template.
pub fn claim_spec(
    stateful_set: &StatefulSet,
    template: &str,
    snapshot: Option<(&str, Option<&str>)>,
) -> Option<PersistentVolumeClaimSpec> {
    let found = stateful_set
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(template))?;
    let mut spec = found.spec.clone().unwrap_or_default();
    if let Some((name, restore_size)) = snapshot {
        spec.data_source = Some(TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: name.into(),
        });
        if let Some(size) = restore_size {
            ask_at_least(&mut spec, size);
        }
    }
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(image: &str, env: serde_json::Value, mount: serde_json::Value) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pg"},
            "spec": {"selector": {}, "serviceName": "pg",
                "template": {"spec": {"containers": [{"name": "postgresql", "image": image,
                    "env": env, "volumeMounts": [mount]}]}}}
        }))
        .expect("sts")
    }

    #[test]
    fn sizes_are_read_in_bytes() {
        assert_eq!(quantity_bytes("5Gi"), Some(5 * 1024 * 1024 * 1024));
        assert_eq!(quantity_bytes("10G"), Some(10_000_000_000));
        assert!(quantity_bytes("2Gi") < quantity_bytes("5Gi"));
        assert_eq!(quantity_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 * 512 * 1024 * 1024));
        assert_eq!(quantity_bytes("1Ei"), Some(1 << 60));
        assert_eq!(quantity_bytes("1500m"), Some(1));
        assert_eq!(quantity_bytes("lots"), None);
    }

    #[test]
    fn where_pgdata_lies_in_the_claim_is_read_from_the_container() {
        let official = sts(
            "postgres:16.4",
            serde_json::json!([]),
            serde_json::json!({"name": "data", "mountPath": "/var/lib/postgresql/data"}),
        );
        assert_eq!(
            expected_data_sub_path(&official, "data").as_deref(),
            Some("")
        );
        let with_pgdata = sts(
            "postgres:16.4",
            serde_json::json!([{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}]),
            serde_json::json!({"name": "data", "mountPath": "/var/lib/postgresql/data"}),
        );
        assert_eq!(
            expected_data_sub_path(&with_pgdata, "data").as_deref(),
            Some("pgdata")
        );
        let bitnami = sts(
            "bitnami/postgresql:17.2.0",
            serde_json::json!([]),
            serde_json::json!({"name": "data", "mountPath": "/bitnami/postgresql"}),
        );
        assert_eq!(
            expected_data_sub_path(&bitnami, "data").as_deref(),
            Some("data")
        );
        let sub_path = sts(
            "postgres:16",
            serde_json::json!([]),
            serde_json::json!({"name": "data", "mountPath": "/var/lib/postgresql/data", "subPath": "pg"}),
        );
        assert_eq!(
            expected_data_sub_path(&sub_path, "data").as_deref(),
            Some("pg")
        );
        assert_eq!(expected_data_sub_path(&official, "other"), None);
    }
}
