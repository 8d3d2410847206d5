//! What S3 answered, as a [`StoreError`] in words a user can act on.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::S3Store;
use crate::repository::StoreError;

impl S3Store {
    pub(super) fn error<E, R>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, R>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        StoreError::S3 {
            operation,
            target: self.target(key),
            reason: explain(&self.bucket, &err),
        }
    }
}

pub(super) fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    matches!(err.code(), Some("NoSuchKey" | "NotFound"))
        || err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 404)
}

/// What went wrong, in words a user can act on.
fn explain<E, R>(bucket: &str, err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.code() {
        Some("NoSuchBucket") => format!("bucket {bucket} does not exist"),
        Some("InvalidAccessKeyId") => {
            "the access key id is not known to the S3 service (check the credentials)".into()
        }
        Some("SignatureDoesNotMatch") => {
            "the secret access key is wrong (signature mismatch)".into()
        }
        Some("AccessDenied") => "access denied: the credentials may not do this".into(),
        Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
        None => match err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                format!(
                    "cannot reach the S3 endpoint ({})",
                    DisplayErrorContext(err)
                )
            }
            _ => DisplayErrorContext(err).to_string(),
        },
    }
}
