//! The encrypting stream: plaintext read from the source, age ciphertext handed out as it
//! is produced.

use std::{
    io,
    io::Write,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
};

use age::x25519;
use tokio::io::{AsyncRead, ReadBuf};

use super::READ_SIZE;
use crate::repository::ObjectReader;

/// Encrypts a stream to `recipient`: the age file is produced as the source is read.
pub(super) fn encrypt_to(
    recipient: &x25519::Recipient,
    source: ObjectReader,
) -> io::Result<ObjectReader> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(io::Error::other)?;
    let out = Output::default();
    let writer = encryptor.wrap_output(out.clone())?;
    Ok(Box::pin(Encrypting {
        source,
        writer: Some(writer),
        out,
        pending: Vec::new(),
        sent: 0,
        scratch: vec![0; READ_SIZE],
    }))
}

/// Where the age writer puts ciphertext until the reader hands it on.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads plaintext from the source, hands out ciphertext; memory stays at one read plus
/// one age chunk.
struct Encrypting {
    source: ObjectReader,
    writer: Option<age::stream::StreamWriter<Output>>,
    out: Output,
    /// Ciphertext taken from `out`, being handed out.
    pending: Vec<u8>,
    sent: usize,
    scratch: Vec<u8>,
}

impl AsyncRead for Encrypting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.sent < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.sent);
                buf.put_slice(&this.pending[this.sent..this.sent + n]);
                this.sent += n;
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.sent = 0;
            std::mem::swap(
                &mut this.pending,
                &mut this.out.0.lock().unwrap_or_else(PoisonError::into_inner),
            );
            if !this.pending.is_empty() {
                continue;
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(this.source.as_mut().poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if let Some(writer) = this.writer.take() {
                    writer.finish()?;
                }
            } else {
                writer.write_all(read.filled())?;
            }
        }
    }
}
