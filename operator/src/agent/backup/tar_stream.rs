//! Writing a tar stream file by file (POSIX ustar headers; sizes of 8 GiB and more in the
//! base-256 form GNU tar and every common reader take), so a dump directory can be stored
//! as one object and unpacked with any `tar`.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const BLOCK: usize = 512;

/// A tar stream being written.
pub(crate) struct TarStream<W> {
    out: W,
}

impl<W: AsyncWrite + Unpin> TarStream<W> {
    pub(crate) fn new(out: W) -> Self {
        Self { out }
    }

    /// Appends a regular file of exactly `size` bytes read from `content`.
    pub(crate) async fn append(
        &mut self,
        name: &str,
        size: u64,
        mtime: u64,
        content: impl AsyncRead + Unpin,
    ) -> std::io::Result<()> {
        self.out.write_all(&header(name, size, mtime)?).await?;
        let copied = tokio::io::copy(
            &mut tokio::io::AsyncReadExt::take(content, size),
            &mut self.out,
        )
        .await?;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name} ended after {copied} of {size} bytes"),
            ));
        }
        let padding = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..padding]).await
    }

    /// Ends the stream (two empty blocks) and flushes it.
    pub(crate) async fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK]).await?;
        self.out.flush().await?;
        Ok(self.out)
    }
}

/// The header block of a regular file, mode 0600.
fn header(name: &str, size: u64, mtime: u64) -> std::io::Result<[u8; BLOCK]> {
    if name.is_empty() || name.len() > 100 || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} cannot be a tar member name (1 to 100 bytes)"),
        ));
    }
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut block[100..108], 0o600);
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    if size <= 0o77777777777 {
        octal(&mut block[124..136], size);
    } else {
        // Base-256: the high bit of the first byte set, the size big-endian after it.
        block[124] = 0x80;
        block[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut block[136..148], mtime.min(0o77777777777));
    block[156] = b'0';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    // The checksum is summed with its own field as spaces.
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    octal(&mut block[148..155], u64::from(sum));
    block[155] = b' ';
    Ok(block)
}

/// Writes `value` as zero-padded octal digits followed by a NUL into `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_unpacks_with_tar_to_the_same_files() {
        let mut tar = TarStream::new(Vec::new());
        let files: [(&str, Vec<u8>); 3] = [
            ("toc.dat", b"toc".to_vec()),
            ("3001.dat", vec![7u8; 512]),
            ("3002.dat", (0..2000u32).map(|i| (i % 251) as u8).collect()),
        ];
        for (name, content) in &files {
            tar.append(name, content.len() as u64, 1_700_000_000, &content[..])
                .await
                .expect("append");
        }
        let bytes = tar.finish().await.expect("finish");
        assert_eq!(bytes.len() % BLOCK, 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("tar")
            .args(["-x", "-f", "-", "-C"])
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &bytes).expect("write");
        drop(child.stdin.take());
        assert!(child.wait().expect("wait").success());
        for (name, content) in &files {
            assert_eq!(
                &std::fs::read(dir.path().join(name)).expect("read"),
                content
            );
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_size_fails_the_stream() {
        let mut tar = TarStream::new(Vec::new());
        let err = tar
            .append("1.dat", 10, 0, &b"short"[..])
            .await
            .expect_err("short");
        assert!(err.to_string().contains("after 5 of 10 bytes"), "{err}");
    }

    #[test]
    fn sizes_past_the_octal_field_are_written_in_base_256() {
        let block = header("big.dat", 20 << 30, 0).expect("header");
        assert_eq!(block[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(block[128..136].try_into().expect("8")),
            20 << 30
        );
        let small = header("small.dat", 0o17, 0).expect("header");
        assert_eq!(&small[124..136], b"00000000017\0");
        assert!(header(&"x".repeat(101), 1, 0).is_err());
    }
}
