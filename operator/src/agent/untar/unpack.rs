//! The writing thread: each entry of the tar stream checked (no absolute names, no `..`,
//! nothing beneath a link of the archive) and written under the target, with its mode,
//! modification time and (as root) owner.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, BufRead, Read, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{
    Chunks, Refused,
    header::{BLOCK, Header, c_string, padded, parse_pax},
};

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
pub(super) struct Unpacker<'a> {
    target: &'a Path,
    /// Symbolic links the archive made: nothing is written beneath them.
    links: HashSet<PathBuf>,
    /// Owners are restored only when running as root, as `tar` does.
    as_root: bool,
}

impl<'a> Unpacker<'a> {
    pub(super) fn new(target: &'a Path) -> Self {
        Self {
            target,
            links: HashSet::new(),
            as_root: rustix::process::geteuid().is_root(),
        }
    }

    pub(super) fn unpack(&mut self, stream: &mut Chunks) -> Result<(), Refused> {
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
