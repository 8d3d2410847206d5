//! Writing an object: the source counted, compressed (unless the server did), encrypted
//! when there is a key, and stored in chunks of at most `max_chunk_size`, each hashed on
//! the way.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use super::{NewObject, Progress, StreamOptions, compress, hex};
use crate::repository::{
    ChunkEntry, ObjectEntry, ObjectReader, ObjectStore, StoreError, layout::BackupDir,
};

/// Streams `source` into the backup directory as one object (in one or more chunks).
pub async fn store_object<S: ObjectStore>(
    store: &S,
    dir: &BackupDir,
    object: NewObject,
    source: impl AsyncRead + Send + Unpin + 'static,
    options: &StreamOptions,
    progress: &Arc<Progress>,
) -> Result<ObjectEntry, StoreError> {
    store_stream(store, dir, object, source, options, progress, false).await
}

/// Streams `source`, compressed already with `options.compression` (by the server), into
/// the backup directory as one object, as [`store_object`] stores a stream it compresses.
/// The entry's size is what was read: the compressed size.
pub async fn store_precompressed<S: ObjectStore>(
    store: &S,
    dir: &BackupDir,
    object: NewObject,
    source: impl AsyncRead + Send + Unpin + 'static,
    options: &StreamOptions,
    progress: &Arc<Progress>,
) -> Result<ObjectEntry, StoreError> {
    store_stream(store, dir, object, source, options, progress, true).await
}

async fn store_stream<S: ObjectStore>(
    store: &S,
    dir: &BackupDir,
    object: NewObject,
    source: impl AsyncRead + Send + Unpin + 'static,
    options: &StreamOptions,
    progress: &Arc<Progress>,
    compressed: bool,
) -> Result<ObjectEntry, StoreError> {
    let read_counter = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: source,
        counter: read_counter.clone(),
        progress: progress.clone(),
    };
    let NewObject {
        name,
        role,
        database,
    } = object;
    let file = format!("{name}{}", StreamOptions::extension(options.compression));
    let compressed: ObjectReader = if compressed {
        Box::pin(BufReader::with_capacity(256 * 1024, counted))
    } else {
        compress(counted, options)
    };
    let mut compressed = match &options.encryption {
        Some(keys) => keys
            .encrypt(compressed)
            .map_err(|source| StoreError::Source {
                key: dir.key(&file),
                source,
            })?,
        None => compressed,
    };
    let mut chunks = Vec::new();
    loop {
        let chunk_file = if chunks.is_empty() {
            file.clone()
        } else {
            format!("{file}.{}", chunks.len())
        };
        let limited = (&mut compressed).take(options.max_chunk_size);
        let mut hashing = Hashing {
            inner: limited,
            hasher: Sha256::new(),
            progress: Some(progress.clone()),
        };
        let stored = store.put(&dir.key(&chunk_file), &mut hashing).await?;
        let sha256 = hex(&hashing.hasher.finalize());
        chunks.push(ChunkEntry {
            file: chunk_file,
            size: stored,
            sha256,
        });
        if stored < options.max_chunk_size {
            break;
        }
    }
    Ok(ObjectEntry {
        name: name.to_string(),
        role,
        database,
        path: None,
        size: read_counter.load(Ordering::Relaxed),
        chunks,
    })
}

/// Counts the bytes passing through.
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counter.fetch_add(n, Ordering::Relaxed);
        self.progress.read.fetch_add(n, Ordering::Relaxed);
        result
    }
}

/// Hashes the bytes passing through (and counts them into a progress, when given).
pub(crate) struct Hashing<R> {
    /// The stream.
    pub inner: R,
    /// The hash of what has passed.
    pub hasher: Sha256,
    /// Where stored bytes are counted.
    pub progress: Option<Arc<Progress>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        self.hasher.update(new);
        if let Some(progress) = &self.progress {
            progress
                .stored
                .fetch_add(new.len() as u64, Ordering::Relaxed);
        }
        result
    }
}
