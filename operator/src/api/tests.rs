//! Tests of the API types: defaults, serde round trips, and every CEL rule evaluated the way
//! the API server would (against the generated CRD schema).

use kube::core::cel::{ValidationErrors, validate_cel, validate_cel_update};
use serde::{Serialize, de::DeserializeOwned};

use super::*;

/// A user's manifest, as they would write it.
fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
}

/// The messages of every failed rule.
fn messages(result: Result<(), ValidationErrors>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| e.message.clone())
            .collect(),
    }
}

fn assert_rejected_with(result: Result<(), ValidationErrors>, expected: &str) {
    let messages = messages(result);
    assert!(
        messages.iter().any(|m| m.contains(expected)),
        "expected a rule failure containing {expected:?}, got {messages:?}"
    );
}

fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(object: &T) {
    let json = serde_json::to_string(object).expect("serializes");
    let back: T = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(&back, object);
}

const TARGET: &str = "
  target:
    statefulSet: pg
    credentialsSecret: {name: pg-auth}";

const S3: &str = "
  repository:
    s3: {bucket: backups}";

fn backup(extra: &str) -> PostgresBackup {
    parse(&format!(
        "apiVersion: pgbackup.io/v1alpha1\nkind: PostgresBackup\nmetadata: {{name: b, namespace: ns}}\nspec:{TARGET}{S3}\n{extra}"
    ))
}

fn restore(extra: &str) -> PointInTimeRestore {
    parse(&format!(
        "apiVersion: pgbackup.io/v1alpha1\nkind: PointInTimeRestore\nmetadata: {{name: r, namespace: ns}}\nspec:{TARGET}\n{extra}"
    ))
}

fn schedule(extra: &str) -> BackupSchedule {
    parse(&format!(
        "apiVersion: pgbackup.io/v1alpha1\nkind: BackupSchedule\nmetadata: {{name: s, namespace: ns}}\nspec:\n  schedule: '0 3 * * *'\n{extra}"
    ))
}

#[test]
fn minimal_backup_gets_the_documented_defaults() {
    let b = backup("  method: logical");
    let t = &b.spec.target;
    assert_eq!(t.port, 5432);
    assert_eq!(t.database, "postgres");
    assert_eq!(t.ssl_mode, SslMode::Prefer);
    assert_eq!(t.data_volume_claim_template, "data");
    assert_eq!(t.data_sub_path, "");
    assert_eq!(t.credentials_secret.username_key, "username");
    assert_eq!(t.credentials_secret.password_key, "password");
    assert_eq!(
        b.spec.repository.compression.algorithm,
        CompressionAlgorithm::Zstd
    );
    assert_eq!(b.spec.repository.compression.level, None);
    assert_eq!(b.spec.deletion_policy, DeletionPolicy::Retain);
    let s3 = b.spec.repository.s3.as_ref().expect("s3 set");
    assert!(!s3.force_path_style);
    assert_eq!(s3.prefix, "");
    assert_round_trip(&b);
    assert!(validate_cel(&b).is_ok());
}

#[test]
fn schedule_and_snapshot_defaults() {
    let s = schedule(&format!(
        "  method: physical\n  template:{}{}\n  walArchiving: {{enabled: true}}",
        TARGET.replace("\n  ", "\n    "),
        S3.replace("\n  ", "\n    ")
    ));
    assert!(!s.spec.suspend);
    assert_eq!(s.spec.concurrency_policy, ConcurrencyPolicy::Forbid);
    assert_eq!(s.spec.successful_jobs_history_limit, 3);
    assert_eq!(s.spec.failed_jobs_history_limit, 1);
    let wal = s.spec.wal_archiving.as_ref().expect("walArchiving set");
    assert_eq!(wal.partial_upload_seconds, 60);
    assert_eq!(wal.slot_name, None);
    assert_round_trip(&s);
    assert!(validate_cel(&s).is_ok(), "{:?}", messages(validate_cel(&s)));

    let v: VolumeSnapshotBackup = parse(&format!(
        "apiVersion: pgbackup.io/v1alpha1\nkind: VolumeSnapshotBackup\nmetadata: {{name: v}}\nspec:{TARGET}"
    ));
    assert_eq!(v.spec.snapshot.mode, SnapshotMode::Online);
    assert_eq!(v.spec.snapshot.deadline, "10m");
    assert_eq!(v.spec.deletion_policy, DeletionPolicy::Retain);
    assert_round_trip(&v);
    assert!(validate_cel(&v).is_ok());
}

#[test]
fn restore_defaults_are_the_safe_ones() {
    let r =
        restore("  source: {postgresBackup: b}\n  recoveryTarget: {latest: true}\n  mode: clone");
    assert!(!r.spec.confirm);
    assert_eq!(r.spec.replicas, ReplicaPolicy::Reinitialize);
    assert_round_trip(&r);
    assert!(validate_cel(&r).is_ok());
}

#[test]
fn repository_needs_exactly_one_backend() {
    let mut b = backup("  method: logical");
    b.spec.repository.s3 = None;
    assert_rejected_with(
        validate_cel(&b),
        "exactly one of repository.s3 or repository.volume",
    );
    b.spec.repository.volume = Some(VolumeRepository {
        claim_name: "c".into(),
        path: String::new(),
    });
    assert!(validate_cel(&b).is_ok());
    b.spec.repository.s3 = backup("  method: logical").spec.repository.s3;
    assert_rejected_with(
        validate_cel(&b),
        "exactly one of repository.s3 or repository.volume",
    );
}

#[test]
fn backup_options_must_match_the_method() {
    let b = backup("  method: physical\n  logical: {globals: false}");
    assert_rejected_with(validate_cel(&b), "logical options need method: logical");
    let b = backup("  method: logical\n  physical: {checkpoint: spread}");
    assert_rejected_with(validate_cel(&b), "physical options need method: physical");
    let b = backup("  method: logical\n  logical: {jobs: 4}");
    assert_rejected_with(validate_cel(&b), "needs format: directory");
    let b = backup("  method: logical\n  logical: {jobs: 4, format: directory}");
    assert!(validate_cel(&b).is_ok());
}

#[test]
fn compression_level_must_fit_the_algorithm() {
    for (algorithm, level, ok) in [
        (CompressionAlgorithm::Zstd, 19, true),
        (CompressionAlgorithm::Lz4, 12, true),
        (CompressionAlgorithm::Lz4, 13, false),
        (CompressionAlgorithm::Gzip, 9, true),
        (CompressionAlgorithm::Gzip, 10, false),
        (CompressionAlgorithm::None, 1, false),
    ] {
        let mut b = backup("  method: logical");
        b.spec.repository.compression = Compression {
            algorithm,
            level: Some(level),
        };
        assert_eq!(validate_cel(&b).is_ok(), ok, "{algorithm:?} level {level}");
    }
}

#[test]
fn kms_key_needs_kms() {
    let mut b = backup("  method: logical");
    let s3 = b.spec.repository.s3.as_mut().expect("s3 set");
    s3.server_side_encryption = Some(ServerSideEncryption {
        algorithm: SseAlgorithm::Aes256,
        kms_key_id: Some("k".into()),
    });
    assert_rejected_with(validate_cel(&b), "kmsKeyId goes with algorithm aws:kms");
    let s3 = b.spec.repository.s3.as_mut().expect("s3 set");
    s3.server_side_encryption = Some(ServerSideEncryption {
        algorithm: SseAlgorithm::AwsKms,
        kms_key_id: Some("k".into()),
    });
    assert!(validate_cel(&b).is_ok());
    assert!(
        serde_json::to_string(&b)
            .expect("serializes")
            .contains(r#""algorithm":"aws:kms""#)
    );
}

#[test]
fn backup_specs_are_immutable() {
    let old = backup("  method: logical");
    let mut new = old.clone();
    assert!(
        validate_cel_update(&new, &old).is_ok(),
        "an unchanged spec is fine"
    );
    new.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    assert!(
        validate_cel_update(&new, &old).is_ok(),
        "metadata may change"
    );
    new.spec.deletion_policy = DeletionPolicy::Delete;
    assert_rejected_with(validate_cel_update(&new, &old), "cannot change");

    let old =
        restore("  source: {postgresBackup: b}\n  recoveryTarget: {latest: true}\n  mode: clone");
    let mut new = old.clone();
    new.spec.recovery_target = RecoveryTarget {
        immediate: Some(true),
        ..Default::default()
    };
    assert_rejected_with(validate_cel_update(&new, &old), "cannot change");

    let old: VolumeSnapshotBackup = parse(&format!(
        "apiVersion: pgbackup.io/v1alpha1\nkind: VolumeSnapshotBackup\nmetadata: {{name: v}}\nspec:{TARGET}"
    ));
    let mut new = old.clone();
    new.spec.snapshot.mode = SnapshotMode::Offline;
    assert_rejected_with(validate_cel_update(&new, &old), "cannot change");
}

#[test]
fn schedules_may_change() {
    let old = schedule(&format!(
        "  method: logical\n  template:{}{}",
        TARGET.replace("\n  ", "\n    "),
        S3.replace("\n  ", "\n    ")
    ));
    let mut new = old.clone();
    new.spec.suspend = true;
    new.spec.schedule = "@daily".into();
    assert!(validate_cel_update(&new, &old).is_ok());
}

#[test]
fn in_place_restore_needs_confirm() {
    let r =
        restore("  source: {postgresBackup: b}\n  recoveryTarget: {latest: true}\n  mode: inPlace");
    assert_rejected_with(validate_cel(&r), "set confirm: true");
    let r = restore(
        "  source: {postgresBackup: b}\n  recoveryTarget: {latest: true}\n  mode: inPlace\n  confirm: true",
    );
    assert!(validate_cel(&r).is_ok());
}

#[test]
fn restore_needs_exactly_one_recovery_target() {
    let one_of = "exactly one of recoveryTarget";
    for (target, ok) in [
        ("{}", false),
        ("{immediate: false}", false),
        ("{latest: false}", false),
        ("{time: '2026-11-20T12:00:00Z'}", true),
        ("{lsn: '0/3000028'}", true),
        ("{xid: 1234}", true),
        ("{name: before-release}", true),
        ("{immediate: true}", true),
        ("{latest: true}", true),
        ("{time: '2026-11-20T12:00:00Z', lsn: '0/3000028'}", false),
        ("{name: x, latest: true}", false),
        ("{latest: true, immediate: false}", true),
    ] {
        let r = restore(&format!(
            "  source: {{postgresBackup: b}}\n  recoveryTarget: {target}\n  mode: clone"
        ));
        let result = validate_cel(&r);
        if ok {
            assert!(result.is_ok(), "{target}: {:?}", messages(result));
        } else {
            assert_rejected_with(result, one_of);
        }
    }
    let r = restore(
        "  source: {postgresBackup: b}\n  recoveryTarget: {latest: true, inclusive: false}\n  mode: clone",
    );
    assert_rejected_with(validate_cel(&r), "inclusive goes with time, lsn or xid");
}

#[test]
fn restore_needs_exactly_one_source() {
    for (source, ok) in [
        ("{}", false),
        ("{postgresBackup: a}", true),
        ("{volumeSnapshotBackup: a}", true),
        ("{backupSchedule: a}", true),
        ("{postgresBackup: a, backupSchedule: b}", false),
    ] {
        let r = restore(&format!(
            "  source: {source}\n  recoveryTarget: {{latest: true}}\n  mode: clone"
        ));
        let result = validate_cel(&r);
        if ok {
            assert!(result.is_ok(), "{source}: {:?}", messages(result));
        } else {
            assert_rejected_with(result, "exactly one of source.");
        }
    }
}

#[test]
fn schedule_template_must_agree_with_method() {
    let target = TARGET.replace("\n  ", "\n    ");
    let s3 = S3.replace("\n  ", "\n    ");
    let s = schedule(&format!("  method: physical\n  template:{target}"));
    assert_rejected_with(validate_cel(&s), "need template.repository");
    let s = schedule(&format!("  method: volumeSnapshot\n  template:{target}"));
    assert!(validate_cel(&s).is_ok());
    let s = schedule(&format!(
        "  method: volumeSnapshot\n  template:{target}\n  walArchiving: {{enabled: true}}"
    ));
    assert_rejected_with(validate_cel(&s), "WAL archiving needs template.repository");
    let s = schedule(&format!(
        "  method: logical\n  template:{target}{s3}\n    physical: {{checkpoint: fast}}"
    ));
    assert_rejected_with(validate_cel(&s), "template.physical needs method: physical");
    let s = schedule(&format!(
        "  method: physical\n  template:{target}{s3}\n    logical: {{}}"
    ));
    assert_rejected_with(validate_cel(&s), "template.logical needs method: logical");
    let s = schedule(&format!(
        "  method: logical\n  template:{target}{s3}\n    volumeSnapshot: {{mode: offline}}"
    ));
    assert_rejected_with(
        validate_cel(&s),
        "template.volumeSnapshot needs method: volumeSnapshot",
    );
}

#[test]
fn status_field_names_match_the_design() {
    let status = PostgresBackupStatus {
        begin_lsn: Some("0/2000028".into()),
        end_lsn: Some("0/2000100".into()),
        begin_wal: Some("000000010000000000000002".into()),
        phase: Some(BackupPhase::Completed),
        ..Default::default()
    };
    let json = serde_json::to_value(&status).expect("serializes");
    assert_eq!(json["beginLSN"], "0/2000028");
    assert_eq!(json["endLSN"], "0/2000100");
    assert_eq!(json["beginWal"], "000000010000000000000002");
    assert_eq!(json["phase"], "Completed");
    assert!(json.get("conditions").is_none(), "empty lists are left out");
    let restore = PointInTimeRestoreStatus {
        reached_lsn: Some("0/5000000".into()),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&restore).expect("serializes")["reachedLSN"],
        "0/5000000"
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
        let conditions =
            &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "{name} has a status subresource"
        );
        assert_eq!(
            crd.spec.names.categories,
            Some(vec![CATEGORY.to_string()]),
            "{name}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(version.name, VERSION);
    }
}

#[test]
fn certificate_checking_modes_need_a_ca_certificate() {
    let mut b = backup("  method: logical");
    b.spec.target.ssl_mode = SslMode::VerifyFull;
    assert_rejected_with(validate_cel(&b), "need sslRootCert");
    b.spec.target.ssl_root_cert = Some(parse("{name: pg-tls}"));
    assert!(validate_cel(&b).is_ok());
    assert_eq!(
        b.spec.target.ssl_root_cert.as_ref().map(|c| c.key.as_str()),
        Some("ca.crt")
    );
}
