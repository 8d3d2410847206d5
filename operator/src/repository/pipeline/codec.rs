//! The compression codecs: compressing with a bounded buffer (zstd on several threads),
//! and decompressing so that the stored stream is read to its end.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use async_compression::{
    Level,
    tokio::bufread::{GzipDecoder, GzipEncoder, Lz4Decoder, Lz4Encoder, ZstdDecoder, ZstdEncoder},
    zstd::CParameter,
};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use super::StreamOptions;
use crate::{api::CompressionAlgorithm, repository::ObjectReader};

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
