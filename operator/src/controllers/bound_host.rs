//! Credentials go only to the StatefulSet's own pods. The agents and the operator log in
//! with the password of the Secret a backup, schedule, snapshot or restore names, at the
//! host `target.host` gives; a host of one's choosing would receive that password (or a
//! hash of it). So a host must name a pod of the StatefulSet (`<statefulset>-<n>.
//! <serviceName>`) or a Service of the namespace whose selector picks the StatefulSet's
//! pods — its selector holds the StatefulSet's own, and it is not an ExternalName — in one
//! of the forms the namespace's DNS answers (`name`, `name.<namespace>`,
//! `name.<namespace>.svc`, `name.<namespace>.svc.cluster.local`, no trailing dot); anything
//! else needs `target.allowExternalHost: true`. Agents and the operator alike connect to
//! the name qualified with the namespace ([`qualified`]), so that the DNS search path never
//! leads a short name into another namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;

use super::references::Problem;
use crate::api::DatabaseTarget;

/// The Services of the namespace a host could name, by name: their selector (empty when
/// they select nothing).
pub type Selectors = BTreeMap<String, BTreeMap<String, String>>;

/// The Service a host names, read to check its selector: its first DNS label, unless the
/// host names a pod (`<statefulset>-<n>.<service>…`) or none is needed.
pub fn service_to_read(target: &DatabaseTarget) -> Option<String> {
    let host = given_host(target)?;
    let labels = labels(&host);
    let first = labels.first()?;
    (ordinal_of(&target.stateful_set, first).is_none() || labels.len() == 1)
        .then(|| first.to_string())
}

/// Refuses a `target.pod` that is not one of the StatefulSet's pods and a `target.host`
/// that does not lead to them.
pub fn check(
    namespace: &str,
    target: &DatabaseTarget,
    stateful_set: &StatefulSet,
    services: &Selectors,
) -> Result<(), Problem> {
    let name = &target.stateful_set;
    if let Some(pod) = &target.pod
        && ordinal_of(name, pod).is_none()
    {
        return Err(Problem::new(
            "PodNotOfStatefulSet",
            format!(
                "target.pod {pod} is not a pod of StatefulSet {name}: name one of {name}-0, {name}-1, …"
            ),
        ));
    }
    let Some(host) = given_host(target) else {
        return Ok(());
    };
    if bound(namespace, target, stateful_set, services, &host) {
        return Ok(());
    }
    Err(Problem::new(
        "HostNotOfStatefulSet",
        format!(
            "target.host {host} is neither a pod of StatefulSet {name} (<pod>.<serviceName>) nor a Service of namespace {namespace} that selects its pods: pgbackup sends the database's credentials only to the StatefulSet's own pods; set target.allowExternalHost: true to connect elsewhere"
        ),
    ))
}

/// `host` in a form the operator, in a namespace of its own, resolves to the same server
/// as a pod of `namespace` does: short names get `.<namespace>.svc`.
pub fn qualified(host: &str, namespace: &str, target: &DatabaseTarget) -> String {
    if target.allow_external_host || host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_string();
    }
    let labels = labels(host);
    let name_labels = match labels.first() {
        Some(first) if ordinal_of(&target.stateful_set, first).is_some() && labels.len() > 1 => 2,
        _ => 1,
    };
    match labels.len() - name_labels.min(labels.len()) {
        0 => format!("{}.{namespace}.svc", labels.join(".")),
        1 => format!("{}.svc", labels.join(".")),
        _ => labels.join("."),
    }
}

/// `target.host`, when it is set and must be checked.
fn given_host(target: &DatabaseTarget) -> Option<String> {
    target
        .host
        .as_deref()
        .filter(|h| !h.is_empty() && !target.allow_external_host)
        .map(str::to_string)
}

fn labels(host: &str) -> Vec<String> {
    host.trim_end_matches('.')
        .to_ascii_lowercase()
        .split('.')
        .map(str::to_string)
        .collect()
}

/// The ordinal of `pod` when it is a pod name of StatefulSet `name`.
fn ordinal_of(name: &str, pod: &str) -> Option<u32> {
    let digits = pod.strip_prefix(name)?.strip_prefix('-')?;
    let canonical = digits == "0" || !digits.starts_with('0');
    digits.parse().ok().filter(|_| canonical)
}

/// Whether the labels after a name are a suffix the namespace's DNS answers for it.
fn in_namespace(rest: &[String], namespace: &str) -> bool {
    match rest {
        [] => true,
        [ns] => ns == namespace,
        [ns, svc] => ns == namespace && svc == "svc",
        [ns, svc, cluster, local] => {
            ns == namespace && svc == "svc" && cluster == "cluster" && local == "local"
        }
        _ => false,
    }
}

fn bound(
    namespace: &str,
    target: &DatabaseTarget,
    stateful_set: &StatefulSet,
    services: &Selectors,
    host: &str,
) -> bool {
    // An absolute name leaves the cluster's search path: it may resolve anywhere.
    if host.ends_with('.') {
        return false;
    }
    let labels = labels(host);
    let spec = stateful_set.spec.as_ref();
    let service_name = spec.and_then(|s| s.service_name.as_deref()).unwrap_or("");
    if let [pod, service, rest @ ..] = labels.as_slice()
        && ordinal_of(&target.stateful_set, pod).is_some()
        && !service_name.is_empty()
        && service == service_name
        && in_namespace(rest, namespace)
    {
        return true;
    }
    let Some((service, rest)) = labels.split_first() else {
        return false;
    };
    let pod_labels = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    // Only the StatefulSet's pods: the selector holds the StatefulSet's own, and matches.
    let own = spec
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let selects = services.get(service).is_some_and(|selector| {
        !own.is_empty()
            && own.iter().all(|(k, v)| selector.get(k) == Some(v))
            && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    });
    selects && in_namespace(rest, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::{backup_spec, stateful_set};

    fn target(host: Option<&str>, pod: Option<&str>) -> DatabaseTarget {
        let mut target = backup_spec("logical").target;
        target.host = host.map(str::to_string);
        target.pod = pod.map(str::to_string);
        target
    }

    fn services() -> Selectors {
        let selector = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sts = stateful_set("postgres:16");
        let labels = sts
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels)
            .expect("fixture labels");
        BTreeMap::from([
            ("pg-rw".to_string(), labels),
            ("other-app".to_string(), selector(&[("app", "other")])),
            ("everything".to_string(), selector(&[])),
        ])
    }

    fn host_ok(host: &str) -> Result<(), Problem> {
        check(
            "shop",
            &target(Some(host), None),
            &stateful_set("postgres:16"),
            &services(),
        )
    }

    #[test]
    fn the_statefulsets_pods_and_the_services_that_select_them_are_accepted() {
        let sts = stateful_set("postgres:16");
        let name = backup_spec("logical").target.stateful_set;
        let service = sts.spec.and_then(|s| s.service_name).expect("serviceName");
        for host in [
            format!("{name}-0.{service}"),
            format!("{name}-12.{service}.shop"),
            format!("{name}-1.{service}.shop.svc"),
            format!("{name}-1.{service}.shop.svc.cluster.local"),
            "pg-rw".into(),
            "PG-RW.shop.svc".into(),
            "pg-rw.shop.svc.cluster.local".into(),
        ] {
            assert_eq!(host_ok(&host), Ok(()), "{host}");
        }
    }

    #[test]
    fn any_other_host_is_refused_unless_allowed() {
        let name = backup_spec("logical").target.stateful_set;
        for host in [
            "db.example.com".to_string(),
            "10.0.0.7".into(),
            "pg-rw.other-namespace.svc".into(),
            "pg-rw.shop.svc.example.com".into(),
            "other-app".into(),
            "everything".into(),
            "not-a-service".into(),
            format!("{name}-0.not-the-service"),
            format!("{name}-01.not-the-service"),
            "pg-rw.shop.".into(),
            "pg-rw.".into(),
        ] {
            let problem = host_ok(&host).expect_err(&host);
            assert_eq!(problem.reason, "HostNotOfStatefulSet", "{host}");
            assert!(problem.message.contains("allowExternalHost"), "{problem:?}");
        }
        let mut allowed = target(Some("db.example.com"), None);
        allowed.allow_external_host = true;
        assert_eq!(
            check("shop", &allowed, &stateful_set("postgres:16"), &services()),
            Ok(())
        );
    }

    #[test]
    fn a_pod_must_be_one_of_the_statefulsets() {
        let name = backup_spec("logical").target.stateful_set;
        let sts = stateful_set("postgres:16");
        assert_eq!(
            check(
                "shop",
                &target(None, Some(&format!("{name}-2"))),
                &sts,
                &services()
            ),
            Ok(())
        );
        for pod in ["other-0", "db.example.com", &format!("{name}-x")] {
            let problem =
                check("shop", &target(None, Some(pod)), &sts, &services()).expect_err(pod);
            assert_eq!(problem.reason, "PodNotOfStatefulSet");
        }
    }

    #[test]
    fn the_operator_qualifies_short_names_with_the_namespace() {
        let name = backup_spec("logical").target.stateful_set;
        let t = target(None, None);
        assert_eq!(qualified("pg-rw", "shop", &t), "pg-rw.shop.svc");
        assert_eq!(qualified("pg-rw.shop", "shop", &t), "pg-rw.shop.svc");
        assert_eq!(qualified("pg-rw.shop.svc", "shop", &t), "pg-rw.shop.svc");
        assert_eq!(
            qualified(&format!("{name}-0.hl"), "shop", &t),
            format!("{name}-0.hl.shop.svc")
        );
        assert_eq!(
            qualified(&format!("{name}-0.hl.shop.svc"), "shop", &t),
            format!("{name}-0.hl.shop.svc")
        );
        assert_eq!(
            service_to_read(&target(Some("pg-rw.shop"), None)),
            Some("pg-rw".into())
        );
        assert_eq!(
            service_to_read(&target(Some(&format!("{name}-0.hl")), None)),
            None
        );
    }
}
