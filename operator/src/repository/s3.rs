//! The S3 store (AWS S3 or any S3-compatible service). Uploads stream as multipart uploads
//! with memory bounded by part size × concurrency and are aborted on failure, so no
//! orphaned parts are left; downloads of large objects run as parallel ranged GETs.

use std::sync::{Arc, Mutex};

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Region, retry::RetryConfig},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass},
};
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::io::StreamReader;

use super::{ObjectInfo, ObjectReader, ObjectStore, StoreError};

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

    /// Aborts the multipart uploads of writes given up half-way, so no parts stay stored
    /// (and billed) without an object.
    pub async fn abort_unfinished(&self) {
        let unfinished = std::mem::take(&mut *self.unfinished.lock().expect("uploads"));
        for (full_key, upload_id) in unfinished {
            self.abort(&full_key, &upload_id).await;
        }
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

    fn error<E, R>(&self, operation: &'static str, key: &str, err: SdkError<E, R>) -> StoreError
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

    async fn upload_whole(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(body));
        if let Some(sse) = &self.options.server_side_encryption {
            request = request.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
            request = request.set_ssekms_key_id(self.options.kms_key_id.clone());
        }
        if let Some(class) = &self.options.storage_class {
            request = request.storage_class(StorageClass::from(class.as_str()));
        }
        request
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }

    async fn upload_multipart(
        &self,
        key: &str,
        first: Bytes,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, StoreError> {
        let full = self.full_key(key);
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full);
        if let Some(sse) = &self.options.server_side_encryption {
            create = create.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
            create = create.set_ssekms_key_id(self.options.kms_key_id.clone());
        }
        if let Some(class) = &self.options.storage_class {
            create = create.storage_class(StorageClass::from(class.as_str()));
        }
        let created = create
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let pending = (full.clone(), upload_id.clone());
        self.unfinished
            .lock()
            .expect("uploads")
            .push(pending.clone());
        let result = self
            .finish_multipart(key, &full, &upload_id, first, body)
            .await;
        self.unfinished
            .lock()
            .expect("uploads")
            .retain(|u| *u != pending);
        result
    }

    /// Uploads the parts and completes the upload, or aborts it on failure.
    async fn finish_multipart(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        first: Bytes,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, StoreError> {
        let result = self.upload_parts(key, upload_id, first, body).await;
        match result {
            Ok((parts, total)) => {
                let completed = CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build();
                let done = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .multipart_upload(completed)
                    .send()
                    .await
                    .map_err(|e| self.error("CompleteMultipartUpload", key, e));
                if let Err(err) = done {
                    self.abort(full, upload_id).await;
                    return Err(err);
                }
                Ok(total)
            }
            Err(err) => {
                self.abort(full, upload_id).await;
                Err(err)
            }
        }
    }

    /// Reads parts and uploads them, at most `concurrency` at once: memory stays within
    /// `part_size × (concurrency + 1)` whatever the object's size.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(Vec<CompletedPart>, u64), StoreError> {
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut uploads: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut total = first.len() as u64;
        let mut next = Some(first);
        let mut number = 0i32;
        while let Some(part) = next.take() {
            number += 1;
            if number as usize > MAX_PARTS {
                return Err(StoreError::S3 {
                    operation: "UploadPart",
                    target: self.target(key),
                    reason: format!(
                        "object exceeds {MAX_PARTS} parts of {} bytes",
                        self.options.part_size
                    ),
                });
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| StoreError::S3Setup("upload pool closed".into()))?;
            let store = self.clone();
            let (key_owned, upload_id) = (key.to_string(), upload_id.to_string());
            uploads.spawn(async move {
                let _permit = permit;
                let out = store
                    .client
                    .upload_part()
                    .bucket(&store.bucket)
                    .key(store.full_key(&key_owned))
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(part))
                    .send()
                    .await
                    .map_err(|e| store.error("UploadPart", &key_owned, e))?;
                Ok(CompletedPart::builder()
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .part_number(number)
                    .build())
            });
            // Collect finished uploads as we go, failing fast.
            while let Some(done) = uploads.try_join_next() {
                parts.push(joined(done)??);
            }
            let buf = read_part(body, self.options.part_size, key).await?;
            if !buf.is_empty() {
                total += buf.len() as u64;
                next = Some(buf);
            }
        }
        while let Some(done) = uploads.join_next().await {
            parts.push(joined(done)??);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, total))
    }

    async fn abort(&self, full_key: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(err) = aborted {
            tracing::warn!(key = full_key, upload_id, error = %DisplayErrorContext(&err), "could not abort multipart upload");
        }
    }

    async fn object_size(&self, key: &str) -> Result<u64, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(head) => Ok(head.content_length().unwrap_or_default().max(0) as u64),
            Err(err) if is_not_found(&err) => Err(StoreError::NotFound {
                location: self.describe(),
                key: key.to_string(),
            }),
            Err(err) => Err(self.error("HeadObject", key, err)),
        }
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end_inclusive: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        // The SDK retries a request that fails; a body cut off on the way (a dropped
        // connection) is asked for again here, a few times.
        const BODY_ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .range(format!("bytes={start}-{end_inclusive}"))
                .send()
                .await
                .map_err(|e| self.error("GetObject", key, e))?;
            match out.body.collect().await {
                // The body as it arrived, without joining it into one buffer.
                Ok(bytes) => return Ok(bytes.into_segments().collect()),
                Err(e) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(key, attempt, error = %e, "reading an object's body failed; asking again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StoreError::S3 {
                        operation: "GetObject",
                        target: self.target(key),
                        reason: format!("reading the body failed ({attempt} attempts): {e}"),
                    });
                }
            }
        }
    }
}

fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::S3Setup(format!("upload task failed: {e}")))
}

/// Reads up to `size` bytes (fewer only at the end of the stream).
async fn read_part(
    body: &mut (dyn AsyncRead + Send + Unpin),
    size: usize,
    key: &str,
) -> Result<Bytes, StoreError> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = body
            .read_buf(&mut buf)
            .await
            .map_err(|source| StoreError::Source {
                key: key.to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
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
        let size = self.object_size(key).await?;
        let chunk = self.options.part_size as u64;
        let ranges: Vec<(u64, u64)> = (0..size.div_ceil(chunk))
            .map(|i| (i * chunk, ((i + 1) * chunk).min(size) - 1))
            .collect();
        let store = self.clone();
        let key = key.to_string();
        let stream = futures::stream::iter(ranges)
            .map(move |(start, end)| {
                let (store, key) = (store.clone(), key.clone());
                async move {
                    store
                        .get_range(&key, start, end)
                        .await
                        .map_err(std::io::Error::other)
                }
            })
            .buffered(self.options.concurrency.max(1))
            .map_ok(|segments| {
                futures::stream::iter(segments.into_iter().map(Ok::<_, std::io::Error>))
            })
            .try_flatten()
            .into_stream();
        Ok(Box::pin(StreamReader::new(stream)))
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
