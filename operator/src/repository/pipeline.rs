//! The data path: `source → count → compress → (encrypt) → sha256 → store` for backups, and
//! `store → verify sha256 → (decrypt) → decompress` for restores. Everything streams: memory does not
//! depend on the size of the database.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use async_compression::{
    Level,
    tokio::bufread::{GzipDecoder, GzipEncoder, Lz4Decoder, Lz4Encoder, ZstdDecoder, ZstdEncoder},
    zstd::CParameter,
};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use super::{
    ChunkEntry, Keys, Manifest, ObjectEntry, ObjectReader, ObjectRole, ObjectStore, StoreError,
    layout::BackupDir,
};
use crate::api::CompressionAlgorithm;

/// How objects are written.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Compression algorithm.
    pub compression: CompressionAlgorithm,
    /// Compression level.
    pub level: i32,
    /// Largest stored chunk; a longer stream continues in `<file>.1`, `<file>.2`, … so that
    /// no single object needs more than S3's 10,000 parts.
    pub max_chunk_size: u64,
    /// Client-side encryption of what is stored; `None` stores the compressed bytes.
    pub encryption: Option<Keys>,
    /// Threads zstd compresses with (1: on the calling thread).
    pub threads: u32,
}

impl StreamOptions {
    /// The algorithm's fast default level when none is given.
    pub fn default_level(algorithm: CompressionAlgorithm) -> i32 {
        match algorithm {
            CompressionAlgorithm::Zstd => 3,
            CompressionAlgorithm::Lz4 => 1,
            CompressionAlgorithm::Gzip => 6,
            CompressionAlgorithm::None => 0,
        }
    }

    /// The level WAL is compressed at when none is given: the fastest, since every
    /// segment waits for it (`archive_command`) or adds to the archive's lag.
    pub fn default_wal_level(algorithm: CompressionAlgorithm) -> i32 {
        match algorithm {
            CompressionAlgorithm::None => 0,
            CompressionAlgorithm::Zstd | CompressionAlgorithm::Lz4 | CompressionAlgorithm::Gzip => {
                1
            }
        }
    }

    /// One compression thread per CPU the process may use (its cgroup's quota included).
    pub fn default_threads() -> u32 {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1)
    }

    /// File name extension of the algorithm.
    pub fn extension(algorithm: CompressionAlgorithm) -> &'static str {
        match algorithm {
            CompressionAlgorithm::Zstd => ".zst",
            CompressionAlgorithm::Lz4 => ".lz4",
            CompressionAlgorithm::Gzip => ".gz",
            CompressionAlgorithm::None => "",
        }
    }
}

/// Bytes read from the database and bytes stored, shared with a progress reporter.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the source (uncompressed).
    pub read: AtomicU64,
    /// Bytes stored (compressed).
    pub stored: AtomicU64,
}

/// What an object to store is.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// Logical name, e.g. `data.tar` (the compression's extension is added).
    pub name: String,
    /// What it holds.
    pub role: ObjectRole,
    /// The database of a dump.
    pub database: Option<String>,
}

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

/// How a backup's objects are stored, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFormat {
    /// Compression of the stored bytes.
    pub compression: CompressionAlgorithm,
    /// Whether they are encrypted.
    pub encrypted: bool,
}

impl From<&Manifest> for StoredFormat {
    fn from(manifest: &Manifest) -> Self {
        Self {
            compression: manifest.compression,
            encrypted: manifest.encrypted,
        }
    }
}

/// Opens an object of a backup for reading: its chunks in order, each checked against the
/// manifest's size and sha256 (a mismatch fails the read and names the chunk), decrypted
/// with `keys` when it is stored encrypted, decompressed.
pub async fn open_object<S: ObjectStore>(
    store: &S,
    dir: &BackupDir,
    object: &ObjectEntry,
    format: impl Into<StoredFormat>,
    keys: Option<&Keys>,
) -> Result<ObjectReader, StoreError> {
    let format = format.into();
    let mut readers = Vec::with_capacity(object.chunks.len());
    // Open every chunk first, so a missing chunk fails before any byte is handed out.
    for chunk in &object.chunks {
        let key = dir.key(&chunk.file);
        let reader = store.get(&key).await?;
        readers.push(ReaderStream::with_capacity(
            Verifying {
                inner: reader,
                hasher: Sha256::new(),
                seen: 0,
                chunk: chunk.clone(),
                key,
                done: false,
            },
            256 * 1024,
        ));
    }
    let joined = StreamReader::new(
        futures::stream::iter(readers)
            .flatten()
            .into_stream()
            .map_err(io::Error::other),
    );
    let name = object
        .chunks
        .first()
        .map(|c| dir.key(&c.file))
        .unwrap_or_else(|| dir.key(&object.name));
    let stored: ObjectReader = Box::pin(joined);
    let plain = match (format.encrypted, keys) {
        (false, Some(keys)) if !keys.accepts_plaintext() => {
            return Err(StoreError::NotEncrypted { key: name });
        }
        (false, _) => stored,
        (true, None) => return Err(StoreError::KeyNeeded { key: name }),
        (true, Some(keys)) => keys
            .decrypt(stored)
            .await
            .map_err(|source| StoreError::Decrypt {
                key: name.clone(),
                source,
            })?,
    };
    Ok(Box::pin(NamedErrors {
        inner: decompress(plain, format.compression),
        name,
    }))
}

/// Compresses a stream with a bounded buffer; zstd on `options.threads` threads (its
/// multi-threaded mode writes the same format, in jobs of a few MiB).
pub(crate) fn compress(
    source: impl AsyncRead + Send + Unpin + 'static,
    options: &StreamOptions,
) -> ObjectReader {
    let buffered = BufReader::with_capacity(256 * 1024, source);
    let level = Level::Precise(options.level);
    match options.compression {
        CompressionAlgorithm::Zstd if options.threads > 1 => {
            let workers = [CParameter::nb_workers(options.threads)];
            Box::pin(ZstdEncoder::with_quality_and_params(
                buffered, level, &workers,
            ))
        }
        CompressionAlgorithm::Zstd => Box::pin(ZstdEncoder::with_quality(buffered, level)),
        CompressionAlgorithm::Lz4 => Box::pin(Lz4Encoder::with_quality(buffered, level)),
        CompressionAlgorithm::Gzip => Box::pin(GzipEncoder::with_quality(buffered, level)),
        CompressionAlgorithm::None => Box::pin(buffered),
    }
}

/// Decompresses a stream; the stored stream is read to its end.
pub(crate) fn decompress(
    source: impl AsyncRead + Send + 'static,
    algorithm: CompressionAlgorithm,
) -> ObjectReader {
    let buffered: Source = BufReader::with_capacity(256 * 1024, Box::pin(source));
    let decoder = match algorithm {
        CompressionAlgorithm::Zstd => Decoder::Zstd(ZstdDecoder::new(buffered)),
        CompressionAlgorithm::Lz4 => Decoder::Lz4(Lz4Decoder::new(buffered)),
        CompressionAlgorithm::Gzip => Decoder::Gzip(GzipDecoder::new(buffered)),
        CompressionAlgorithm::None => Decoder::None(buffered),
    };
    Box::pin(DrainAfter {
        decoder,
        draining: false,
    })
}

type Source = BufReader<ObjectReader>;

enum Decoder {
    Zstd(ZstdDecoder<Source>),
    Lz4(Lz4Decoder<Source>),
    Gzip(GzipDecoder<Source>),
    None(Source),
}

/// A decoder stops at the end of its compressed frame and may never read the stored stream
/// to its end, where the size and checksum are checked. This reads the rest after the
/// decoder is done, so that every byte stored is checked before the reader reports its end.
struct DrainAfter {
    decoder: Decoder,
    draining: bool,
}

impl AsyncRead for DrainAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.draining {
            let before = buf.filled().len();
            let polled = match &mut this.decoder {
                Decoder::Zstd(d) => Pin::new(d).poll_read(cx, buf),
                Decoder::Lz4(d) => Pin::new(d).poll_read(cx, buf),
                Decoder::Gzip(d) => Pin::new(d).poll_read(cx, buf),
                Decoder::None(d) => Pin::new(d).poll_read(cx, buf),
            };
            match polled {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    this.draining = true
                }
                other => return other,
            }
        }
        let source = match &mut this.decoder {
            Decoder::Zstd(d) => d.get_mut(),
            Decoder::Lz4(d) => d.get_mut(),
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::None(d) => d,
        };
        let mut scratch = [0u8; 8192];
        let mut rest = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *source).poll_read(cx, &mut rest) {
            // The end of the stored stream: its size and checksum have been checked.
            Poll::Ready(Ok(())) if rest.filled().is_empty() => Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stored object has data after the end of its compressed stream",
            ))),
            other => other,
        }
    }
}

/// Says which object a read error comes from (a decoder only says "corrupt data").
struct NamedErrors {
    inner: ObjectReader,
    name: String,
}

impl AsyncRead for NamedErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Err(e)) if !e.to_string().starts_with("object ") => {
                Poll::Ready(Err(corrupt(&self.name, format!("cannot decompress: {e}"))))
            }
            other => other,
        }
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// Checks a stored chunk against its manifest entry while it is read.
struct Verifying {
    inner: ObjectReader,
    hasher: Sha256,
    seen: u64,
    chunk: ChunkEntry,
    key: String,
    done: bool,
}

impl AsyncRead for Verifying {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let new_len = buf.filled().len() - before;
        if new_len > 0 {
            let this = &mut *self;
            this.hasher.update(&buf.filled()[before..]);
            this.seen += new_len as u64;
            if self.seen > self.chunk.size {
                return Poll::Ready(Err(corrupt(
                    &self.key,
                    format!("longer than the {} bytes recorded", self.chunk.size),
                )));
            }
            return Poll::Ready(Ok(()));
        }
        if !self.done {
            self.done = true;
            if self.seen != self.chunk.size {
                let msg = format!("truncated: {} of {} bytes", self.seen, self.chunk.size);
                return Poll::Ready(Err(corrupt(&self.key, msg)));
            }
            let actual = hex(&std::mem::take(&mut self.hasher).finalize());
            if actual != self.chunk.sha256 {
                let msg = format!(
                    "sha256 {actual} does not match the manifest's {}",
                    self.chunk.sha256
                );
                return Poll::Ready(Err(corrupt(&self.key, msg)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn corrupt(key: &str, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("object {key} is corrupt: {what}"),
    )
}
