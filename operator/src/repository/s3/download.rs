//! Reading objects: the size first, then ranges of one part's size fetched a few at once
//! and read in order, each asked for again when its body is cut off on the way.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_util::io::StreamReader;

use super::{S3Store, errors::is_not_found};
use crate::repository::{ObjectReader, ObjectStore, StoreError};

impl S3Store {
    /// Opens an object as parallel ranged GETs of `part_size`, at most `concurrency` at
    /// once, read in order.
    pub(super) async fn open_ranged(&self, key: &str) -> Result<ObjectReader, StoreError> {
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
