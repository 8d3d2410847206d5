//! Writing objects: small ones in one PUT, larger ones as multipart uploads whose parts
//! go up a few at once, aborted on failure (or later, when the write was given up).

use std::sync::Arc;

use aws_sdk_s3::{
    error::DisplayErrorContext,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass},
};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::Semaphore,
    task::JoinSet,
};

use super::{MAX_PARTS, S3Store};
use crate::repository::StoreError;

impl S3Store {
    /// Aborts the multipart uploads of writes given up half-way, so no parts stay stored
    /// (and billed) without an object.
    pub async fn abort_unfinished(&self) {
        let unfinished = std::mem::take(&mut *self.unfinished.lock().expect("uploads"));
        for (full_key, upload_id) in unfinished {
            self.abort(&full_key, &upload_id).await;
        }
    }

    pub(super) async fn upload_whole(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
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

    pub(super) async fn upload_multipart(
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
}

fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::S3Setup(format!("upload task failed: {e}")))
}

/// Reads up to `size` bytes (fewer only at the end of the stream).
pub(super) async fn read_part(
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
