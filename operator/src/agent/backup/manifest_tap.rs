//! Picks PostgreSQL's `backup_manifest` out of the tar stream `pg_basebackup` writes, as the
//! stream passes on its way into the repository. An incremental backup later hands it to
//! `pg_basebackup --incremental` as its parent's; reading it back out of the stored stream
//! would mean reading the whole backup.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, ReadBuf};

/// The member the tap keeps.
const MANIFEST_MEMBER: &str = "backup_manifest";

/// Largest manifest kept in memory (about 150 bytes per file of the cluster: millions of
/// files). A larger one is not kept, and an incremental backup cannot build on that backup.
const MAX_MANIFEST: u64 = 512 * 1024 * 1024;

const BLOCK: usize = 512;

/// Where the tap leaves the manifest once the stream has passed.
pub(crate) type Captured = Arc<Mutex<Option<Vec<u8>>>>;

/// A reader passing `inner` through unchanged while it scans the tar members.
pub(crate) struct ManifestTap<R> {
    inner: R,
    scan: TarScan,
    captured: Captured,
}

impl<R> ManifestTap<R> {
    pub(crate) fn new(inner: R, captured: Captured) -> Self {
        Self {
            inner,
            scan: TarScan::default(),
            captured,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ManifestTap<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && let Some(manifest) = this.scan.feed(&buf.filled()[before..])
            && let Ok(mut slot) = this.captured.lock()
        {
            *slot = Some(manifest);
        }
        polled
    }
}

/// Where the scan is in the tar stream: in a header block, or in a member's data.
#[derive(Debug, Default)]
struct TarScan {
    header: Vec<u8>,
    /// Bytes of data and padding left in the current member.
    remaining: u64,
    /// The member's data bytes (without padding) when it is the one kept.
    keeping: Option<(u64, Vec<u8>)>,
}

impl TarScan {
    /// Scans the next bytes of the stream; the manifest when it has just been read whole.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<Vec<u8>> {
        let mut found = None;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                if let Some((size, kept)) = &mut self.keeping {
                    let wanted = usize::try_from(*size).unwrap_or(usize::MAX) - kept.len();
                    kept.extend_from_slice(&bytes[..n.min(wanted)]);
                }
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                if self.remaining == 0
                    && let Some((_, kept)) = self.keeping.take()
                {
                    found = Some(kept);
                }
                continue;
            }
            let n = (BLOCK - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < BLOCK {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            // A zero block ends the archive (or pads it): nothing follows it.
            if let Some((name, kind, size)) = parse_header(&header) {
                self.remaining = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                let is_file = kind == b'0' || kind == 0;
                if is_file && name == MANIFEST_MEMBER && size <= MAX_MANIFEST {
                    if size == 0 {
                        found = Some(Vec::new());
                    } else {
                        self.keeping = Some((size, Vec::with_capacity(size as usize)));
                    }
                }
            }
        }
        found
    }
}

/// A member's name, type flag and size, from a ustar header block; `None` for a zero block
/// or one that does not parse.
fn parse_header(block: &[u8]) -> Option<(String, u8, u64)> {
    if block.iter().all(|b| *b == 0) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| {
        let bytes = &block[range];
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let mut name = field(0..100);
    if &block[257..262] == b"ustar" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    let size_field = &block[124..136];
    let size = if size_field[0] & 0x80 != 0 {
        // Base-256, for members of 8 GiB or more.
        size_field[1..].iter().fold(0u64, |n, b| {
            n.saturating_mul(256).saturating_add(u64::from(*b))
        })
    } else {
        let text = String::from_utf8_lossy(size_field);
        let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
        u64::from_str_radix(text, 8).ok()?
    };
    Some((name, block[156], size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        block[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{size:011o}");
        block[124..135].copy_from_slice(size.as_bytes());
        block[156] = kind;
        block[257..263].copy_from_slice(b"ustar\0");
        block
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, data.len() as u64, b'0');
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    fn archive() -> Vec<u8> {
        let mut tar = member("base/1/1259", &vec![7u8; 9000]);
        tar.extend(header("pg_wal", 0, b'5'));
        // A file of the cluster that only carries the manifest's name in its path.
        tar.extend(member("base/backup_manifest", b"not it"));
        tar.extend(member(
            "backup_manifest",
            b"{\"PostgreSQL-Backup-Manifest-Version\": 2}",
        ));
        tar.extend(vec![0u8; 2 * BLOCK]);
        tar
    }

    #[test]
    fn finds_the_manifest_however_the_stream_is_cut() {
        let tar = archive();
        for piece in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let mut scan = TarScan::default();
            let found: Vec<Vec<u8>> = tar.chunks(piece).filter_map(|c| scan.feed(c)).collect();
            assert_eq!(
                found,
                vec![b"{\"PostgreSQL-Backup-Manifest-Version\": 2}".to_vec()],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_stream_without_a_manifest_yields_none() {
        let mut tar = member("PG_VERSION", b"17\n");
        tar.extend(vec![0u8; 2 * BLOCK]);
        assert_eq!(TarScan::default().feed(&tar), None);
    }

    #[test]
    fn reads_base_256_sizes() {
        let mut block = header("big", 0, b'0');
        block[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(parse_header(&block), Some(("big".into(), b'0', 1 << 33)));
    }

    #[tokio::test]
    async fn the_tap_passes_the_stream_unchanged() {
        let tar = archive();
        let captured = Captured::default();
        let mut tap = ManifestTap::new(std::io::Cursor::new(tar.clone()), captured.clone());
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tap, &mut out)
            .await
            .expect("read");
        assert_eq!(out, tar);
        assert!(captured.lock().expect("lock").is_some());
    }
}
