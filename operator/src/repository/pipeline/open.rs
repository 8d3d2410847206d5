//! Reading an object back: its chunks in order, each checked against the manifest's size
//! and sha256 while it is read, decrypted, decompressed, with errors that name the object.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use super::{StoredFormat, decompress, hex};
use crate::repository::{
    ChunkEntry, Keys, ObjectEntry, ObjectReader, ObjectStore, StoreError, layout::BackupDir,
};

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
