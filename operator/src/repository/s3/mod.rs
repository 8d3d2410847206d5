//! The S3 store (AWS S3 or any S3-compatible service): its settings, the client, and the
//! [`ObjectStore`] operations. Uploads (`upload`) stream as multipart uploads with memory
//! bounded by part size × concurrency and are aborted on failure, so no orphaned parts are
//! left; downloads (`download`) of large objects run as parallel ranged GETs; `errors` puts
//! what S3 answered in words a user can act on.

mod download;
mod errors;
mod upload;

use std::sync::{Arc, Mutex};

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Region, retry::RetryConfig},
};
use aws_smithy_http_client::tls;
use tokio::io::AsyncRead;

use super::{ObjectInfo, ObjectReader, ObjectStore, StoreError};
use upload::read_part;

/// S3 settings that do not come from the repository URL.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Endpoint of an S3-compatible service; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` for the AWS chain's (or `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`).
    pub force_path_style: bool,
    /// Size of each multipart part, and of each ranged GET.
    pub part_size: usize,
    /// Parts uploaded (or ranges fetched) at once.
    pub concurrency: usize,
    /// Server-side encryption to request: `AES256` or `aws:kms`.
    pub server_side_encryption: Option<String>,
    /// KMS key for `aws:kms`.
    pub kms_key_id: Option<String>,
    /// Storage class of new objects.
    pub storage_class: Option<String>,
    /// Access keys to use instead of the AWS chain's (a second repository of another
    /// account).
    pub credentials: Option<Box<StaticCredentials>>,
}

/// An S3 access key pair; its `Debug` shows the key id only.
#[derive(Clone)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary keys.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Smallest part S3 accepts (but for the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Most parts of one multipart upload.
pub const MAX_PARTS: usize = 10_000;

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            force_path_style: false,
            part_size: 16 * 1024 * 1024,
            concurrency: 4,
            server_side_encryption: None,
            kms_key_id: None,
            storage_class: None,
            credentials: None,
        }
    }
}

/// A repository in an S3 bucket under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    options: S3Options,
    /// Multipart uploads started and neither completed nor aborted: those of a write given
    /// up half-way (its future dropped), which [`S3Store::abort_unfinished`] aborts.
    unfinished: Arc<Mutex<Vec<(String, String)>>>,
}

impl S3Store {
    /// Sets up a client from the standard AWS chain (environment, profile, web identity,
    /// container and instance credentials) and the options.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StoreError> {
        if options.part_size < MIN_PART_SIZE {
            return Err(StoreError::S3Setup(format!(
                "part size must be at least {MIN_PART_SIZE} bytes"
            )));
        }
        // Plain HTTP to an `http://` endpoint (a store on the cluster network) skips loading
        // the system's root certificates, which costs a short-lived `wal-push` ~10 ms.
        let plain = options
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let builder = aws_smithy_http_client::Builder::new();
        let http = if plain {
            builder.build_http()
        } else {
            builder
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https()
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(5));
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.force_path_style);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        // The options decide (the agent's flags read `AWS_ENDPOINT_URL` themselves): the
        // environment's endpoint is the first repository's, not a copy's.
        builder.set_endpoint_url(options.endpoint.clone());
        if let Some(keys) = &options.credentials {
            builder = builder.credentials_provider(aws_sdk_s3::config::Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                keys.session_token.clone(),
                None,
                "pgbackup-copy",
            ));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            options: options.clone(),
            unfinished: Arc::default(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }
}

impl ObjectStore for S3Store {
    async fn put(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, StoreError> {
        let first = read_part(body, self.options.part_size, key).await?;
        if first.len() < self.options.part_size {
            let size = first.len() as u64;
            self.upload_whole(key, first).await?;
            return Ok(size);
        }
        self.upload_multipart(key, first, body).await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        self.open_ranged(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(ObjectInfo {
                        key: key.get(strip..).unwrap_or_default().to_string(),
                        size: object.size().unwrap_or_default().max(0) as u64,
                        modified: object.last_modified().and_then(|t| {
                            jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
                        }),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
