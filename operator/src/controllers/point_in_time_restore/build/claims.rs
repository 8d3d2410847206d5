//! The claims a restore makes (a clone's, an in-place replacement, the old volume bound back) and a clone's Service and StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use crate::{
    api::PointInTimeRestore,
    k8s::{database_pod, label_value},
};

use super::jobs::without_archive_settings;
use super::{
    LABEL_RESTORE, LABEL_RESTORE_UID, SnapshotVolume, claim_name_of, restored_stateful_set,
};

/// The clone's claim of ordinal 0 of volumeClaimTemplate `template`, like the source's
/// template, made from `snapshot` when there is one.
pub fn clone_claim(
    restore: &PointInTimeRestore,
    source: &StatefulSet,
    template: &str,
    snapshot: Option<&SnapshotVolume>,
) -> Option<PersistentVolumeClaim> {
    let spec = database_pod::claim_spec(
        source,
        template,
        snapshot.map(|s| (s.snapshot.as_str(), s.restore_size.as_deref())),
    )?;
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name_of(restore, template, 0)),
            namespace: restore.namespace(),
            labels: Some(clone_labels(restore, source)),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// In place from a snapshot: the claim of ordinal 0 of `snapshot`'s template made from
/// it, carrying this restore's UID, of the replaced claim's class and at least its size.
pub fn replacement_claim(
    restore: &PointInTimeRestore,
    stateful_set: &StatefulSet,
    snapshot: &SnapshotVolume,
    replaced: Option<&crate::api::ReplacedVolume>,
) -> Option<PersistentVolumeClaim> {
    let mut claim = clone_claim(restore, stateful_set, &snapshot.template, Some(snapshot))?;
    let spec = claim.spec.get_or_insert_default();
    if let Some(replaced) = replaced {
        if replaced.storage_class_name.is_some() {
            spec.storage_class_name = replaced.storage_class_name.clone();
        }
        if let Some(size) = &replaced.storage {
            database_pod::ask_at_least(spec, size);
        }
    }
    let mut labels = template_labels(stateful_set, &snapshot.template);
    labels.insert(LABEL_RESTORE_UID.into(), restore.uid().unwrap_or_default());
    claim.metadata.labels = Some(labels);
    Some(claim)
}

/// On a rollback: a claim of the replaced claim's name, class and size that binds the
/// kept volume again.
pub fn claim_back(
    restore: &PointInTimeRestore,
    stateful_set: &StatefulSet,
    replaced: &crate::api::ReplacedVolume,
) -> Option<PersistentVolumeClaim> {
    let suffix = format!("-{}-0", restore.spec.target.stateful_set);
    let template = replaced.claim.strip_suffix(&suffix)?;
    let mut claim = clone_claim(restore, stateful_set, template, None)?;
    claim.metadata.name = Some(replaced.claim.clone());
    claim.metadata.labels = Some(template_labels(stateful_set, template));
    let spec = claim.spec.get_or_insert_default();
    spec.volume_name = Some(replaced.persistent_volume.clone());
    spec.storage_class_name = replaced.storage_class_name.clone();
    if let Some(size) = &replaced.storage {
        spec.resources
            .get_or_insert_default()
            .requests
            .get_or_insert_default()
            .insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.clone()),
            );
    }
    Some(claim)
}

/// The labels of the StatefulSet's volumeClaimTemplate `template`.
pub(super) fn template_labels(
    stateful_set: &StatefulSet,
    template: &str,
) -> BTreeMap<String, String> {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.iter().find(|t| t.name_any() == template))
        .and_then(|t| t.metadata.labels.clone())
        .unwrap_or_default()
}

/// The clone's pod labels: the source's selector keys with the clone's name as values,
/// and the restore's — nothing else of the source's, so that no Service, disruption
/// budget or policy of the source selects a clone pod.
pub(super) fn clone_labels(
    restore: &PointInTimeRestore,
    source: &StatefulSet,
) -> BTreeMap<String, String> {
    let clone = restored_stateful_set(restore);
    let mut labels: BTreeMap<String, String> = source
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| l.keys().map(|k| (k.clone(), label_value(&clone))).collect())
        .unwrap_or_default();
    labels.insert(LABEL_RESTORE.into(), label_value(&restore.name_any()));
    labels
}

/// The clone: a headless Service and a one-replica StatefulSet copied from the source,
/// with its own name, labels and claims (the claim of ordinal 0 already restored).
pub fn clone_objects(
    restore: &PointInTimeRestore,
    source: &StatefulSet,
) -> Option<(Service, StatefulSet)> {
    let clone = restored_stateful_set(restore);
    let labels = clone_labels(restore, source);
    let selector: BTreeMap<String, String> = source
        .spec
        .as_ref()?
        .selector
        .match_labels
        .as_ref()?
        .keys()
        .map(|k| (k.clone(), labels[k].clone()))
        .chain([(LABEL_RESTORE.to_string(), labels[LABEL_RESTORE].clone())])
        .collect();
    let service = Service {
        metadata: ObjectMeta {
            name: Some(clone.clone()),
            namespace: restore.namespace(),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                name: Some("postgresql".into()),
                port: restore.spec.target.port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let mut spec = source.spec.clone()?;
    spec.replicas = Some(1);
    // The clone archives nothing: archive settings given on the command line (which
    // would override the restored `postgresql.auto.conf`) are left out.
    if let Some(pod) = spec.template.spec.as_mut() {
        for container in &mut pod.containers {
            for list in [container.args.as_mut(), container.command.as_mut()]
                .into_iter()
                .flatten()
            {
                *list = without_archive_settings(list);
            }
        }
        // A copy of the database needs no rights on the cluster: it runs without the
        // ServiceAccount's token (the account still names its image pull Secrets).
        pod.automount_service_account_token = Some(false);
    }
    spec.service_name = Some(clone.clone());
    spec.selector.match_labels = Some(selector);
    spec.selector.match_expressions = None;
    let template_meta = spec.template.metadata.get_or_insert_default();
    template_meta.labels = Some(labels.clone());
    let mut object_labels = labels;
    object_labels.insert(LABEL_RESTORE_UID.into(), restore.uid().unwrap_or_default());
    let stateful_set = StatefulSet {
        metadata: ObjectMeta {
            name: Some(clone),
            namespace: restore.namespace(),
            labels: Some(object_labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Some((service, stateful_set))
}
