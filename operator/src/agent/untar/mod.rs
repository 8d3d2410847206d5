//! Unpacking a stored tar stream into a directory, in process: the stream is read (and
//! checked, decrypted, decompressed) on the runtime while a thread of its own writes the
//! files, a megabyte at a time, instead of `tar -x` reading a pipe ten kilobytes at a time.
//!
//! It takes what `pg_basebackup`, `pg_combinebackup`'s inputs and pgbackup's own dump
//! archives hold: ustar headers (with the name prefix), GNU long names and pax paths,
//! base-256 sizes; regular files, directories and symbolic links, with their modes and
//! modification times (and, run as root, their owners, as `tar` does). It refuses absolute
//! names, `..`, entries beneath a link of the archive, and every other kind of entry.
//!
//! Here: reading the stream and handing it to the writing thread; the writing thread's
//! unpacking in `unpack`, the tar headers in `header`.

mod header;
mod unpack;

use std::{
    fs,
    io::{self, BufRead, Read},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
};

use super::AgentError;
use unpack::Unpacker;

/// Bytes handed to the writing thread at a time.
const CHUNK: usize = 1 << 20;

/// Chunks in flight between the reader and the writer (memory: `CHUNK` times this).
const IN_FLIGHT: usize = 8;

/// Unpacks a tar stream into `target`, created with mode 0700 (as PostgreSQL requires)
/// when missing. A read error of the stream (a chunk whose checksum does not match) fails
/// the unpacking and is returned as it is.
pub async fn unpack_tar(
    mut reader: impl AsyncRead + Unpin,
    target: &Path,
) -> Result<(), AgentError> {
    let io_err = |source| AgentError::Io {
        path: target.display().to_string(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target)
        .map_err(io_err)?;
    fs::set_permissions(target, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    let (tx, rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking({
        let target = target.to_path_buf();
        move || Unpacker::new(&target).unpack(&mut Chunks::new(rx))
    });
    let read = async {
        loop {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            while chunk.len() < CHUNK {
                if reader.read_buf(&mut chunk).await? == 0 {
                    break;
                }
            }
            let end = chunk.len() < CHUNK;
            // The writer stopped early (an error, or the end of the archive): it says why.
            if !chunk.is_empty() && tx.send(chunk.freeze()).await.is_err() {
                return Ok(());
            }
            if end {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let read = read.await;
    drop(tx);
    let written = writer.await.map_err(|e| io_err(io::Error::other(e)))?;
    // A damaged stream is the cause whatever the writer made of its cut-off end.
    read.map_err(|e| AgentError::Corrupt(e.to_string()))?;
    written.map_err(|e| match e {
        Refused::Io(path, source) => AgentError::Io {
            path: path.display().to_string(),
            source,
        },
        Refused::Archive(what) => AgentError::Corrupt(format!("the tar stream {what}")),
    })
}

/// Why unpacking stopped.
#[derive(Debug)]
enum Refused {
    Io(PathBuf, io::Error),
    Archive(String),
}

/// The chunks the reader sends, read as one stream on the writing thread.
struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Chunks {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.current.split_to(n);
    }
}

#[cfg(test)]
mod tests;
