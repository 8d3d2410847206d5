//! Whether pgbackup's connections make sure of the other end, said in status. The
//! defaults work with a typical chart — which serves PostgreSQL without a certificate a
//! client could check, and often S3 over plain HTTP inside the cluster — so they do not
//! authenticate the server; the condition `TransportVerified` says so on every object,
//! with what to add, instead of leaving it to be found in a review.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    Condition, DatabaseTarget, Repository, STATUS_FALSE, STATUS_TRUE, SslMode, set_condition,
};

/// The condition type.
pub const CONDITION_TRANSPORT: &str = "TransportVerified";

/// What is not authenticated in reaching `target` (when pgbackup connects to it) and
/// `repository`, each with what to change.
pub fn unverified(target: Option<&DatabaseTarget>, repository: Option<&Repository>) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(target) = target {
        match target.ssl_mode {
            SslMode::VerifyFull => {}
            SslMode::VerifyCa => found.push(
                "the database's certificate is checked against sslRootCert but not its host name (sslMode verify-ca; verify-full checks both)".to_string(),
            ),
            mode => found.push(format!(
                "the database's identity is not checked (sslMode {}): serve PostgreSQL with a certificate and set sslMode verify-full with sslRootCert",
                mode.as_libpq()
            )),
        }
    }
    if let Some(endpoint) = repository
        .and_then(|r| r.s3.as_ref())
        .and_then(|s3| s3.endpoint.as_deref())
        .filter(|e| e.to_ascii_lowercase().starts_with("http://"))
    {
        found.push(format!(
            "the S3 endpoint {endpoint} is plain HTTP: the store is not authenticated and what is sent is readable on the way (use https://)"
        ));
    }
    found
}

/// Sets `TransportVerified` in `conditions` from [`unverified`].
pub fn set(
    conditions: &mut Vec<Condition>,
    target: Option<&DatabaseTarget>,
    repository: Option<&Repository>,
    generation: Option<i64>,
    now: Time,
) {
    let found = unverified(target, repository);
    let (status, reason, message) = if found.is_empty() {
        (
            STATUS_TRUE,
            "Verified",
            "every connection checks whom it reaches".to_string(),
        )
    } else {
        (STATUS_FALSE, "Unverified", found.join("; "))
    };
    set_condition(
        conditions,
        CONDITION_TRANSPORT,
        status,
        reason,
        &message,
        generation,
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::backup_spec;

    #[test]
    fn defaults_are_said_to_be_unverified_with_what_to_change() {
        let spec = backup_spec("logical");
        let mut repository = spec.repository.clone();
        if let Some(s3) = repository.s3.as_mut() {
            s3.endpoint = Some("http://minio.storage:9000".into());
        }
        let found = unverified(Some(&spec.target), Some(&repository));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("sslMode prefer") && found[0].contains("verify-full"));
        assert!(found[1].contains("plain HTTP") && found[1].contains("https://"));

        let mut target = spec.target.clone();
        target.ssl_mode = SslMode::VerifyFull;
        if let Some(s3) = repository.s3.as_mut() {
            s3.endpoint = Some("https://minio.storage:9000".into());
        }
        assert!(unverified(Some(&target), Some(&repository)).is_empty());
        let mut conditions = Vec::new();
        let now = Time("2026-12-04T12:00:00Z".parse().expect("time"));
        set(
            &mut conditions,
            Some(&target),
            Some(&repository),
            Some(1),
            now,
        );
        assert_eq!(conditions[0].status, STATUS_TRUE);
        // Offline snapshots do not connect: only the repository counts.
        assert!(unverified(None, None).is_empty());
    }
}
