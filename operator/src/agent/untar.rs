//! Unpacking a stored tar stream into a directory, in process: the stream is read (and
//! checked, decrypted, decompressed) on the runtime while a thread of its own writes the
//! files, a megabyte at a time, instead of `tar -x` reading a pipe ten kilobytes at a time.
//!
//! It takes what `pg_basebackup`, `pg_combinebackup`'s inputs and pgbackup's own dump
//! archives hold: ustar headers (with the name prefix), GNU long names and pax paths,
//! base-256 sizes; regular files, directories and symbolic links, with their modes and
//! modification times (and, run as root, their owners, as `tar` does). It refuses absolute
//! names, `..`, entries beneath a link of the archive, and every other kind of entry.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, BufRead, Read, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
};

use super::AgentError;

const BLOCK: usize = 512;

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

/// One header's entry.
struct Entry {
    path: PathBuf,
    kind: u8,
    size: u64,
    mode: u32,
    mtime: u64,
    uid: u32,
    gid: u32,
    link: String,
}

/// Writes the entries of a tar stream under its target.
struct Unpacker<'a> {
    target: &'a Path,
    /// Symbolic links the archive made: nothing is written beneath them.
    links: HashSet<PathBuf>,
    /// Owners are restored only when running as root, as `tar` does.
    as_root: bool,
}

impl<'a> Unpacker<'a> {
    fn new(target: &'a Path) -> Self {
        Self {
            target,
            links: HashSet::new(),
            as_root: rustix::process::geteuid().is_root(),
        }
    }

    fn unpack(&mut self, stream: &mut Chunks) -> Result<(), Refused> {
        let archive = |what: &str| Refused::Archive(what.to_string());
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        loop {
            let mut block = [0u8; BLOCK];
            match read_block(stream, &mut block) {
                Ok(true) => {}
                Ok(false) => return Err(archive("ends without its end-of-archive blocks")),
                Err(e) => return Err(Refused::Io(self.target.to_path_buf(), e)),
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(());
            }
            let header = Header(&block);
            if !header.checksum_ok() {
                return Err(archive("has a header with a bad checksum"));
            }
            let size = header
                .size()
                .ok_or_else(|| archive("has an unreadable size"))?;
            match header.kind() {
                b'L' | b'K' | b'x' | b'g' => {
                    let text = self.read_small(stream, size)?;
                    match header.kind() {
                        b'L' => long_name = Some(c_string(&text)),
                        b'K' => long_link = Some(c_string(&text)),
                        b'x' => {
                            let pax = parse_pax(&text);
                            long_name = pax.path.or(long_name);
                            long_link = pax.link.or(long_link);
                        }
                        _ => {} // global pax headers carry nothing kept here
                    }
                    continue;
                }
                _ => {}
            }
            let name = long_name.take().unwrap_or_else(|| header.name());
            let entry = Entry {
                path: self.place(&name)?,
                kind: header.kind(),
                size,
                mode: header.octal(100, 8).unwrap_or(0o600) as u32 & 0o7777,
                mtime: header.octal(136, 12).unwrap_or(0),
                uid: header.octal(108, 8).unwrap_or(0) as u32,
                gid: header.octal(116, 8).unwrap_or(0) as u32,
                link: long_link.take().unwrap_or_else(|| header.text(157, 100)),
            };
            self.write(stream, &entry, &name)?;
        }
    }

    /// Where an entry named `name` goes: refused when absolute, with `..`, or beneath a
    /// link the archive made.
    fn place(&self, name: &str) -> Result<PathBuf, Refused> {
        let refused = |why: &str| Refused::Archive(format!("holds {name:?}, {why}: refusing it"));
        let mut relative = PathBuf::new();
        for component in Path::new(name).components() {
            match component {
                Component::Normal(part) => {
                    if self.links.contains(&relative) && !relative.as_os_str().is_empty() {
                        return Err(refused("beneath a symbolic link of the archive"));
                    }
                    relative.push(part);
                }
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refused("an absolute name"));
                }
                Component::ParentDir => return Err(refused("a name with `..`")),
            }
        }
        Ok(relative)
    }

    fn write(&mut self, stream: &mut Chunks, entry: &Entry, name: &str) -> Result<(), Refused> {
        let path = self.target.join(&entry.path);
        let io_err = |e| Refused::Io(path.clone(), e);
        if entry.path.as_os_str().is_empty() {
            // `./` itself: the target, made already.
            return skip(stream, padded(entry.size)).map_err(io_err);
        }
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err)?;
        }
        match entry.kind {
            b'0' | 0 | b'7' => {
                // An entry named twice: the later one wins, as with `tar`.
                if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&path).map_err(io_err)?;
                }
                let mut file = File::create(&path).map_err(io_err)?;
                copy_exact(stream, &mut file, entry.size).map_err(io_err)?;
                skip(stream, padded(entry.size) - entry.size).map_err(io_err)?;
                file.set_permissions(fs::Permissions::from_mode(entry.mode))
                    .map_err(io_err)?;
                let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.mtime);
                file.set_modified(mtime).map_err(io_err)?;
                if self.as_root {
                    std::os::unix::fs::fchown(&file, Some(entry.uid), Some(entry.gid))
                        .map_err(io_err)?;
                }
            }
            b'5' => {
                if self.links.contains(&entry.path) {
                    return Err(Refused::Archive(format!(
                        "holds {name:?} as a directory and as a symbolic link: refusing it"
                    )));
                }
                match fs::DirBuilder::new().mode(entry.mode).create(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                    other => other.map_err(io_err)?,
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))
                    .map_err(io_err)?;
                if self.as_root {
                    std::os::unix::fs::chown(&path, Some(entry.uid), Some(entry.gid))
                        .map_err(io_err)?;
                }
                skip(stream, padded(entry.size)).map_err(io_err)?;
            }
            b'2' => {
                std::os::unix::fs::symlink(&entry.link, &path).map_err(io_err)?;
                if self.as_root {
                    std::os::unix::fs::lchown(&path, Some(entry.uid), Some(entry.gid))
                        .map_err(io_err)?;
                }
                self.links.insert(entry.path.clone());
                skip(stream, padded(entry.size)).map_err(io_err)?;
            }
            other => {
                return Err(Refused::Archive(format!(
                    "holds {name:?} of type {:?}, which a backup never holds: refusing it",
                    char::from(other)
                )));
            }
        }
        Ok(())
    }

    /// The data of a long-name or pax header (small: refused over 1 MiB).
    fn read_small(&self, stream: &mut Chunks, size: u64) -> Result<Vec<u8>, Refused> {
        if size > 1 << 20 {
            return Err(Refused::Archive("has an extended header over 1 MiB".into()));
        }
        let mut data = vec![0u8; padded(size) as usize];
        stream
            .read_exact(&mut data)
            .map_err(|e| Refused::Io(self.target.to_path_buf(), e))?;
        data.truncate(size as usize);
        Ok(data)
    }
}

/// One 512-byte block; `false` at the end of the stream before any byte of it.
fn read_block(stream: &mut Chunks, block: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < BLOCK {
        let n = stream.read(&mut block[filled..])?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += n;
    }
    Ok(true)
}

/// Copies exactly `size` bytes of the stream into `out`, a chunk at a time.
fn copy_exact(stream: &mut Chunks, out: &mut File, mut size: u64) -> io::Result<()> {
    while size > 0 {
        let available = stream.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a file",
            ));
        }
        let n = available
            .len()
            .min(usize::try_from(size).unwrap_or(usize::MAX));
        out.write_all(&available[..n])?;
        stream.consume(n);
        size -= n as u64;
    }
    Ok(())
}

fn skip(stream: &mut Chunks, size: u64) -> io::Result<()> {
    let skipped = io::copy(&mut stream.take(size), &mut io::sink())?;
    if skipped < size {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A header block.
struct Header<'a>(&'a [u8; BLOCK]);

impl Header<'_> {
    fn kind(&self) -> u8 {
        self.0[156]
    }

    /// The name, with the ustar prefix when there is one.
    fn name(&self) -> String {
        let name = self.text(0, 100);
        let ustar = &self.0[257..262] == b"ustar";
        let prefix = if ustar {
            self.text(345, 155)
        } else {
            String::new()
        };
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    }

    fn text(&self, at: usize, len: usize) -> String {
        c_string(&self.0[at..at + len])
    }

    /// An octal number field (NUL- or space-terminated).
    fn octal(&self, at: usize, len: usize) -> Option<u64> {
        let field = &self.0[at..at + len];
        let digits: String = field
            .iter()
            .skip_while(|&&b| b == b' ')
            .take_while(|&&b| (b'0'..=b'7').contains(&b))
            .map(|&b| char::from(b))
            .collect();
        if digits.is_empty() {
            return field.iter().all(|&b| b == 0 || b == b' ').then_some(0);
        }
        u64::from_str_radix(&digits, 8).ok()
    }

    /// The size: octal, or base-256 (the high bit of its first byte set) from 8 GiB.
    fn size(&self) -> Option<u64> {
        let field = &self.0[124..136];
        if field[0] & 0x80 != 0 {
            let mut value: u64 = u64::from(field[0] & 0x7f);
            for &b in &field[1..] {
                value = value.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(value);
        }
        self.octal(124, 12)
    }

    /// The sum of the header's bytes with its checksum field taken as spaces.
    fn checksum_ok(&self) -> bool {
        let Some(recorded) = self.octal(148, 8) else {
            return false;
        };
        let sum: u64 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        sum == recorded
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The fields of a pax extended header kept here.
#[derive(Default)]
struct Pax {
    path: Option<String>,
    link: Option<String>,
}

/// `<length> <key>=<value>\n` records.
fn parse_pax(mut text: &[u8]) -> Pax {
    let mut pax = Pax::default();
    while let Some(space) = text.iter().position(|&b| b == b' ') {
        let Some(length) = std::str::from_utf8(&text[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > space && l <= text.len())
        else {
            break;
        };
        let record = &text[space + 1..length];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => pax.path = Some(value),
                b"linkpath" => pax.link = Some(value),
                _ => {}
            }
        }
        text = &text[length..];
    }
    pax
}

#[cfg(test)]
#[path = "untar_tests.rs"]
mod tests;
