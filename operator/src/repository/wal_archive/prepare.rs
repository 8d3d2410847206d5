//! A WAL file as it is stored: hashed and compressed (at the same time, on two threads,
//! when it is read into memory), then encrypted when there is a key.

use std::{io, path::Path};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{WalError, io_error};
use crate::{
    api::CompressionAlgorithm,
    repository::{
        ObjectReader, StreamOptions,
        pipeline::{compress, hex},
    },
};

/// WAL files up to this size are read into memory once; larger ones (segments of 128 MiB
/// and more) are streamed.
pub(super) const IN_MEMORY: u64 = 64 * 1024 * 1024;

/// A WAL file's content hash and size, and its stored form when it was read into memory.
pub(super) struct Prepared {
    pub(super) sha256: String,
    pub(super) size: u64,
    pub(super) body: Option<Vec<u8>>,
}

/// Reads the file once and hashes it while it is compressed on another thread (zstd: read,
/// hashed and compressed a chunk at a time on two blocking threads; the other algorithms
/// through the stream pipeline), then encrypted when there is a key.
pub(super) async fn prepare_in_memory(
    path: &Path,
    options: &StreamOptions,
) -> Result<Prepared, WalError> {
    let joined = |e: tokio::task::JoinError| io_error(path, io::Error::other(e));
    if options.compression == CompressionAlgorithm::Zstd {
        let (owned, level, threads) = (path.to_path_buf(), options.level, options.threads);
        let (sha256, size, compressed) =
            tokio::task::spawn_blocking(move || hash_and_compress(&owned, level, threads))
                .await
                .map_err(joined)?
                .map_err(|e| io_error(path, e))?;
        let body = match options.encryption {
            None => compressed,
            Some(_) => {
                let rest = StreamOptions {
                    compression: CompressionAlgorithm::None,
                    ..options.clone()
                };
                stored_bytes(bytes::Bytes::from(compressed), &rest)
                    .await
                    .map_err(|e| io_error(path, e))?
            }
        };
        return Ok(Prepared {
            sha256,
            size,
            body: Some(body),
        });
    }
    let bytes = bytes::Bytes::from(tokio::fs::read(path).await.map_err(|e| io_error(path, e))?);
    let size = bytes.len() as u64;
    let hashing = tokio::task::spawn_blocking({
        let bytes = bytes.clone();
        move || hex(&Sha256::digest(&bytes))
    });
    let (sha256, body) = tokio::join!(hashing, stored_bytes(bytes, options));
    Ok(Prepared {
        sha256: sha256.map_err(joined)?,
        size,
        body: Some(body.map_err(|e| io_error(path, e))?),
    })
}

/// `source` as it is stored, through the stream pipeline.
async fn stored_bytes(source: bytes::Bytes, options: &StreamOptions) -> io::Result<Vec<u8>> {
    let mut body = stored_form(Box::pin(std::io::Cursor::new(source)), options)?;
    let mut out = Vec::new();
    body.read_to_end(&mut out).await?;
    Ok(out)
}

/// What a WAL file is read in, and how many such chunks are passed around.
const WAL_CHUNK: usize = 1 << 20;
const WAL_CHUNKS: usize = 4;

/// SHA-256, size and zstd frame of the file at `path`, a blocking call: this thread reads
/// and hashes a chunk at a time while another compresses the chunks read before (with
/// `threads` workers of zstd's own when more than one); the few chunks are passed back
/// and forth, so the file is never whole in memory.
fn hash_and_compress(path: &Path, level: i32, threads: u32) -> io::Result<(String, u64, Vec<u8>)> {
    use std::sync::mpsc;
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(WAL_CHUNKS);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    // The chunks that go round between this reader and the compressor.
    for _ in 0..WAL_CHUNKS {
        let _ = empty_tx.send(vec![0u8; WAL_CHUNK]);
    }
    let compressing = std::thread::spawn(move || -> io::Result<Vec<u8>> {
        let out = Vec::with_capacity(usize::try_from(length / 4).unwrap_or(0));
        let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
        encoder.set_pledged_src_size(Some(length))?;
        if threads > 1 {
            encoder.multithread(threads)?;
        }
        for (chunk, n) in full_rx {
            std::io::Write::write_all(&mut encoder, &chunk[..n])?;
            let _ = empty_tx.send(chunk); // the reader may have stopped
        }
        encoder.finish()
    });
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let read = loop {
        let Ok(mut chunk) = empty_rx.recv() else {
            break Ok(()); // the compressor stopped: it says why
        };
        let n = match read_full(&mut file, &mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        hasher.update(&chunk[..n]);
        size += n as u64;
        if full_tx.send((chunk, n)).is_err() {
            break Ok(());
        }
    };
    drop(full_tx);
    let compressed = compressing
        .join()
        .map_err(|_| io::Error::other("the compressing thread panicked"))?;
    read?;
    // Said before the compressor's own complaint about the size it was promised.
    if size != length {
        return Err(io::Error::other(format!(
            "the file changed while it was read ({length} bytes, then {size})"
        )));
    }
    Ok((hex(&hasher.finalize()), size, compressed?))
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The bytes as they are stored: compressed, then encrypted when there is a key.
pub(super) fn stored_form(
    source: ObjectReader,
    options: &StreamOptions,
) -> io::Result<ObjectReader> {
    let compressed = compress(source, options);
    match &options.encryption {
        Some(keys) => keys.encrypt(compressed),
        None => Ok(compressed),
    }
}

/// SHA-256 and size of a file.
pub(super) async fn hash_file(path: &Path) -> Result<(String, u64), WalError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

#[cfg(test)]
#[path = "prepare_tests.rs"]
mod tests;
