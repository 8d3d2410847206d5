//! The filesystem store: a directory on a mounted volume or the local disk. Writes go to a
//! temporary file that is fsynced and renamed into place, so an object is either whole or
//! absent.

use std::path::{Path, PathBuf};

use tokio::{
    fs,
    io::{AsyncRead, AsyncWriteExt, BufWriter},
};

use super::{ObjectInfo, ObjectReader, ObjectStore, StoreError};

/// Marks temporary files of unfinished writes; listings skip them.
const TEMP_MARKER: &str = ".pgbackup-tmp-";

/// The temporary file of a write not renamed into place: removed when dropped, whether
/// the write failed or was given up half-way (a backup stopped by a signal).
struct Unfinished(Option<PathBuf>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A repository in a directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The file of `key`, which must stay inside the repository: a key from a repository
    /// someone else can write to (a manifest's file names) never reaches `..`, an absolute
    /// path or an empty component.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let inside = !key.is_empty()
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !inside {
            return Err(StoreError::BadKey { key: key.into() });
        }
        Ok(self.root.join(key))
    }
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

impl ObjectStore for FsStore {
    async fn put(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)
            .await
            .map_err(io_err("cannot create directory", &dir))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(
            "{file_name}{TEMP_MARKER}{}-{}",
            std::process::id(),
            next_temp_id()
        ));
        let mut unfinished = Unfinished(Some(temp.clone()));
        let result = async {
            let file = match fs::File::create(&temp).await {
                // A delete of the directory's last object removed it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)
                        .await
                        .map_err(io_err("cannot create directory", &dir))?;
                    fs::File::create(&temp).await
                }
                other => other,
            }
            .map_err(io_err("cannot create file", &temp))?;
            let mut writer = BufWriter::with_capacity(1 << 20, file);
            let written = copy(body, &mut writer, key, &temp).await?;
            writer
                .flush()
                .await
                .map_err(io_err("cannot write", &temp))?;
            writer
                .get_ref()
                .sync_all()
                .await
                .map_err(io_err("cannot fsync", &temp))?;
            fs::rename(&temp, &path)
                .await
                .map_err(io_err("cannot rename into place", &path))?;
            unfinished.0 = None;
            // Make the rename itself durable.
            let dir_handle = fs::File::open(&dir)
                .await
                .map_err(io_err("cannot open", &dir))?;
            dir_handle
                .sync_all()
                .await
                .map_err(io_err("cannot fsync", &dir))?;
            Ok(written)
        }
        .await;
        drop(unfinished);
        result
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let path = self.path(key)?;
        match fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound {
                location: self.describe(),
                key: key.to_string(),
            }),
            Err(e) => Err(io_err("cannot open", &path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // The walk starts in the deepest directory the prefix names whole: a WAL push
        // lists the copies of one segment, not every segment of its timeline.
        let start = prefix
            .rfind('/')
            .and_then(|end| self.path(&prefix[..end]).ok())
            .unwrap_or_else(|| self.root.clone());
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || list_under(&root, start, &prefix))
            .await
            .map_err(|e| io_err("cannot list", &self.root)(std::io::Error::other(e)))?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot delete", &path)(e)),
        }
        // Directories left empty go too, as keys of an object store leave nothing behind:
        // a deleted backup leaves no trace in the repository. A directory that is not
        // empty (or has just been filled again) stops the walk.
        let mut dir = path.parent();
        while let Some(current) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if fs::remove_dir(current).await.is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// The objects under `root` whose keys start with `prefix`, walking from `start`, in key
/// order. One blocking call: names are matched before anything is stat'ed.
fn list_under(root: &Path, start: PathBuf, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    let mut out = Vec::new();
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Nothing there, or an object where the prefix names a directory.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let path = entry.path();
            let key = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let kind = entry.file_type().map_err(io_err("cannot stat", &path))?;
            if kind.is_dir() {
                // Only descend where the prefix can still match.
                let dir_key = format!("{key}/");
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    pending.push(path);
                }
            } else if key.starts_with(prefix) && !key.contains(TEMP_MARKER) {
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("cannot stat", &path)(e)),
                };
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .ok()
                        .and_then(|t| jiff::Timestamp::try_from(t).ok()),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn next_temp_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Copies a stream into the file, telling apart a failing source from a failing disk.
async fn copy(
    body: &mut (dyn AsyncRead + Send + Unpin),
    writer: &mut BufWriter<fs::File>,
    key: &str,
    temp: &Path,
) -> Result<u64, StoreError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(|source| StoreError::Source {
                key: key.to_string(),
                source,
            })?;
        if n == 0 {
            return Ok(total);
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(io_err("cannot write", temp))?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_lead_outside_the_repository() {
        let store = FsStore::new(PathBuf::from("/repo"));
        assert_eq!(
            store.path("srv/logical/1/a.zst").expect("key"),
            PathBuf::from("/repo/srv/logical/1/a.zst")
        );
        for key in [
            "",
            "/etc/passwd",
            "srv/../../etc/passwd",
            "srv//a",
            "./a",
            "srv/..",
        ] {
            assert!(
                matches!(store.path(key), Err(StoreError::BadKey { .. })),
                "{key:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_listing_finds_what_the_prefix_names_and_nothing_outside() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(root.path().to_path_buf());
        for key in [
            "srv/wal/00000001/000000010000000000000001.a.zst",
            "srv/wal/00000001/000000010000000000000001.b.zst",
            "srv/wal/00000001/000000010000000000000002.c.zst",
            "srv/wal/archive.json",
            "srva/wal/00000001/000000010000000000000001.d.zst",
        ] {
            store.put_bytes(key, b"x".to_vec()).await.expect("put");
        }
        let keys = |prefix: &'static str| {
            let store = &store;
            async move {
                let listed = store.list(prefix).await.expect("list");
                listed.into_iter().map(|o| o.key).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            keys("srv/wal/00000001/000000010000000000000001.").await,
            [
                "srv/wal/00000001/000000010000000000000001.a.zst",
                "srv/wal/00000001/000000010000000000000001.b.zst"
            ]
        );
        assert_eq!(keys("srv/wal/").await.len(), 4);
        assert_eq!(keys("srv").await.len(), 5);
        assert_eq!(keys("").await.len(), 5);
        assert!(keys("srv/wal/00000002/").await.is_empty());
        assert!(keys("srv/wal/archive.json/").await.is_empty());
        assert!(
            keys("srv/../srva/").await.is_empty(),
            "no key leads outside its prefix"
        );
    }
}
