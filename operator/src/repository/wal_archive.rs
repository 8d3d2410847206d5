//! Storing and fetching WAL files: each verified against the SHA-256 in its key, never
//! replacing a different file of the same name, and only ever from the cluster the archive
//! belongs to.

use std::{io, path::Path};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{api::CompressionAlgorithm, postgres::read_wal_header};

use super::{
    Keys, ObjectReader, ObjectStore, StoreError, StreamOptions,
    pipeline::{Hashing, compress, decompress, hex},
    timeline::{HistoryEntry, WalIndex, parse_history},
    wal::{
        ArchiveCoverage, ArchiveIdentity, WalFile, WalFileKind, WalObject, coverage_key,
        identity_key, slots_key, wal_key, wal_name_prefix, wal_prefix,
    },
    wal_owner::{history_mismatch, segment_mismatch},
};

/// A WAL archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not in the archive.
    #[error("{name} is not in the WAL archive of server {server}")]
    NotFound {
        /// The WAL file.
        name: String,
        /// The server.
        server: String,
    },
    /// A different file of the same name is archived already.
    #[error(
        "a different {name} is already archived ({key}); WAL objects are never replaced. Is another cluster archiving as server {server}?"
    )]
    Conflict {
        /// The WAL file.
        name: String,
        /// The object already there.
        key: String,
        /// The server.
        server: String,
    },
    /// The WAL comes from a different cluster than the archive's.
    #[error(
        "the WAL archive of server {server} belongs to cluster {archive} (segment size {archive_segment_size}, PostgreSQL {archive_major}), not to cluster {found} (segment size {found_segment_size}, PostgreSQL {found_major}); use another --server for this cluster"
    )]
    OtherCluster {
        /// The server.
        server: String,
        /// The archive's system identifier.
        archive: String,
        /// Its segment size.
        archive_segment_size: u64,
        /// Its major version.
        archive_major: u32,
        /// The cluster's system identifier.
        found: String,
        /// Its segment size.
        found_segment_size: u64,
        /// Its major version.
        found_major: u32,
    },
    /// The file is not WAL of the archive's cluster, or not at the place its name says.
    #[error(
        "{path} was not stored: it is not WAL of cluster {cluster} (server {server}) as its name says: {reason}"
    )]
    Foreign {
        /// The file.
        path: String,
        /// The cluster it was to be stored for.
        cluster: String,
        /// The server.
        server: String,
        /// What does not fit.
        reason: String,
    },
    /// The first segment of a timeline, whose history file is not stored yet: it cannot be
    /// told apart from a stray until it is. Retried, never set aside.
    #[error(
        "{path}: its first page is of timeline {found}, and timeline {timeline}'s history file, which would say that timeline {found} leads to it, is not stored yet (it is stored before its segments; retried)"
    )]
    HistoryNotStored {
        /// The file.
        path: String,
        /// The timeline of its first page.
        found: u32,
        /// The timeline of its name.
        timeline: u32,
    },
    /// A stored WAL object does not match its key.
    #[error("WAL object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The object is encrypted and no key was given.
    #[error(
        "WAL object {key} is encrypted: give the repository's encryption key (PGBACKUP_ENCRYPTION_KEY, from the Secret of repository.encryption)"
    )]
    KeyNeeded {
        /// The object.
        key: String,
    },
    /// The object is stored unencrypted though the repository's key is given.
    #[error(
        "WAL object {key} is not encrypted, but the repository's encryption key is given: refused, as anyone who can write to the repository could have put it there (WAL stored before encryption was turned on is read with --allow-unencrypted, spec.repository.encryption.allowUnencrypted)"
    )]
    NotEncrypted {
        /// The object.
        key: String,
    },
    /// The object could not be decrypted.
    #[error("cannot decrypt WAL object {key}: {source}")]
    Decrypt {
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: super::DecryptError,
    },
    /// The name is not a WAL file name.
    #[error("{0:?} is not the name of a WAL segment, partial segment or history file")]
    NotWal(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What storing a WAL file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored as a new object.
    Stored {
        /// Its key.
        key: String,
        /// Bytes before compression.
        size: u64,
        /// Bytes stored.
        stored: u64,
    },
    /// The same content was stored already; nothing was written.
    AlreadyArchived {
        /// The key of the stored copy.
        key: String,
    },
}

/// The WAL archive of one server in a store.
#[derive(Debug)]
pub struct WalArchive<'a, S> {
    store: &'a S,
    server: String,
    keys: Option<Keys>,
}

impl<'a, S: ObjectStore> WalArchive<'a, S> {
    /// The archive of `server`.
    pub fn new(store: &'a S, server: &str) -> Self {
        Self {
            store,
            server: server.to_string(),
            keys: None,
        }
    }

    /// The archive, reading encrypted objects with `keys`. (Writing encrypts with the
    /// keys of the [`StreamOptions`] given to [`Self::push`].)
    pub fn with_keys(mut self, keys: Option<Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// Which cluster the archive belongs to; `None` before anything was archived.
    pub async fn identity(&self) -> Result<Option<ArchiveIdentity>, WalError> {
        self.read_json(&identity_key(&self.server)).await
    }

    /// Up to when the archive is complete, as the archiver last wrote it.
    pub async fn coverage(&self) -> Result<Option<ArchiveCoverage>, WalError> {
        self.read_json(&coverage_key(&self.server)).await
    }

    /// Records up to when the archive is complete.
    pub async fn set_coverage(&self, coverage: &ArchiveCoverage) -> Result<(), WalError> {
        let key = coverage_key(&self.server);
        let text = serde_json::to_vec_pretty(coverage).map_err(|e| corrupt(&key, e.to_string()))?;
        Ok(self.store.put_bytes(&key, text).await?)
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, WalError> {
        let mut reader = match self.store.get(key).await {
            Ok(reader) => reader,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let mut text = Vec::new();
        reader
            .read_to_end(&mut text)
            .await
            .map_err(|e| corrupt(key, e.to_string()))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| corrupt(key, e.to_string()))
    }

    /// The replication slots the archiver created on the archive's cluster (it manages
    /// only those: an existing slot of another name is another application's).
    pub async fn created_slots(&self) -> Result<Vec<String>, WalError> {
        Ok(self.created_slots_record().await?.unwrap_or_default())
    }

    /// [`Self::created_slots`], `None` when the archive has no record at all (archived by
    /// an archiver from before the record).
    pub async fn created_slots_record(&self) -> Result<Option<Vec<String>>, WalError> {
        self.read_json(&slots_key(&self.server)).await
    }

    /// Records that the archiver created slot `slot` (`true`) or dropped it (`false`).
    pub async fn record_slot(&self, slot: &str, created: bool) -> Result<(), WalError> {
        let mut slots = self.created_slots().await?;
        slots.retain(|s| s != slot);
        if created {
            slots.push(slot.to_string());
        }
        let key = slots_key(&self.server);
        let text = serde_json::to_vec_pretty(&slots).map_err(|e| corrupt(&key, e.to_string()))?;
        Ok(self.store.put_bytes(&key, text).await?)
    }

    /// Makes sure the archive is `cluster`'s: claims an empty archive, refuses another
    /// cluster's.
    pub async fn claim(&self, cluster: &ArchiveIdentity) -> Result<(), WalError> {
        match self.identity().await? {
            Some(archive) if archive == *cluster => Ok(()),
            Some(archive) => Err(WalError::OtherCluster {
                server: self.server.clone(),
                archive: archive.system_identifier,
                archive_segment_size: archive.wal_segment_size,
                archive_major: archive.server_major,
                found: cluster.system_identifier.clone(),
                found_segment_size: cluster.wal_segment_size,
                found_major: cluster.server_major,
            }),
            None => {
                let text = serde_json::to_vec_pretty(cluster)
                    .map_err(|e| corrupt(&identity_key(&self.server), e.to_string()))?;
                self.store
                    .put_bytes(&identity_key(&self.server), text)
                    .await?;
                Ok(())
            }
        }
    }

    /// Every WAL object of the archive.
    pub async fn objects(&self, segment_size: u64) -> Result<Vec<WalObject>, WalError> {
        Ok(self
            .store
            .list(&wal_prefix(&self.server))
            .await?
            .iter()
            .filter_map(|info| WalObject::from_listing(info, segment_size))
            .collect())
    }

    /// What the archive holds.
    pub async fn index(&self, segment_size: u64) -> Result<WalIndex, WalError> {
        Ok(WalIndex::new(
            &self.objects(segment_size).await?,
            segment_size,
        ))
    }

    /// The stored copies of one file name (a segment's listing includes its partials).
    async fn copies(&self, file: &WalFile, segment_size: u64) -> Result<Vec<WalObject>, WalError> {
        let name = file.name(segment_size);
        Ok(self
            .store
            .list(&wal_name_prefix(&self.server, file, &name))
            .await?
            .iter()
            .filter_map(|info| WalObject::from_listing(info, segment_size))
            .collect())
    }

    /// Stores the WAL file at `path` as `file` of `cluster`, which must not change
    /// meanwhile: it is checked to be `cluster`'s WAL at the place its name says
    /// ([`Self::check_owner`]), read once into memory (up to [`IN_MEMORY`]; larger files
    /// are read twice, hash then upload), hashed and compressed at the same time on two
    /// threads while the stored copies are listed. The archiver copies the segment being
    /// written aside first. `covers` is the time up to which every commit is in this file
    /// or before it, when known. Storing a complete segment removes the partial copies of
    /// it.
    pub async fn push(
        &self,
        path: &Path,
        file: &WalFile,
        cluster: &ArchiveIdentity,
        covers: Option<Timestamp>,
        options: &StreamOptions,
    ) -> Result<Pushed, WalError> {
        let segment_size = cluster.wal_segment_size;
        if let Some(reason) = self.check_owner(path, file, cluster).await? {
            return Err(WalError::Foreign {
                path: path.display().to_string(),
                cluster: cluster.system_identifier.clone(),
                server: self.server.clone(),
                reason,
            });
        }
        let name = file.name(segment_size);
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_error(path, e))?
            .len();
        let (content, copies) = if size <= IN_MEMORY {
            let (content, copies) = tokio::join!(
                prepare_in_memory(path, options),
                self.copies(file, segment_size)
            );
            (content?, copies?)
        } else {
            let (sha256, size) = hash_file(path).await?;
            let content = Prepared {
                sha256,
                size,
                body: None,
            };
            (content, self.copies(file, segment_size).await?)
        };
        let sha256 = &content.sha256;
        let same_name = |o: &&WalObject| o.file == *file;
        // The same content is stored already, unless this partial copy covers a later time.
        let already = copies.iter().filter(same_name).find(|o| {
            o.sha256 == *sha256 && (file.kind != WalFileKind::Partial || o.covers >= covers)
        });
        let pushed = if let Some(same) = already {
            Pushed::AlreadyArchived {
                key: same.key.clone(),
            }
        } else {
            if file.kind != WalFileKind::Partial
                && let Some(other) = copies.iter().find(same_name)
            {
                return Err(WalError::Conflict {
                    name,
                    key: other.key.clone(),
                    server: self.server.clone(),
                });
            }
            let key = wal_key(&self.server, file, &name, sha256, options, covers);
            let stored = match content.body {
                Some(body) => {
                    let stored = body.len() as u64;
                    self.store.put_bytes(&key, body).await?;
                    stored
                }
                None => {
                    let opened = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| io_error(path, e))?;
                    let mut body =
                        stored_form(Box::pin(opened), options).map_err(|e| io_error(path, e))?;
                    self.store.put(&key, &mut body).await?
                }
            };
            Pushed::Stored {
                key,
                size: content.size,
                stored,
            }
        };
        let kept = match &pushed {
            Pushed::Stored { key, .. } | Pushed::AlreadyArchived { key } => key.clone(),
        };
        // Partial copies this one supersedes.
        let superseded = copies.iter().filter(|o| {
            o.file.kind == WalFileKind::Partial
                && o.file.timeline == file.timeline
                && o.file.segno == file.segno
                && file.is_wal()
                && o.key != kept
        });
        for old in superseded {
            self.store.delete(&old.key).await?;
        }
        Ok(pushed)
    }

    /// Why the WAL file at `path` is not `cluster`'s `file`, `None` when it is: a segment's
    /// first page header must be the cluster's at the segment's place; a history file must
    /// agree with the stored history of its parent timeline.
    pub async fn check_owner(
        &self,
        path: &Path,
        file: &WalFile,
        cluster: &ArchiveIdentity,
    ) -> Result<Option<String>, WalError> {
        let segment_size = cluster.wal_segment_size;
        match file.kind {
            WalFileKind::Segment | WalFileKind::Partial => {
                let header = read_wal_header(path).await.map_err(|e| io_error(path, e))?;
                // Only the first segment of a timeline begins on another one.
                let history = match header {
                    Some(h)
                        if h.timeline != file.timeline
                            && h.system_identifier.to_string() == cluster.system_identifier =>
                    {
                        match self.history(file.timeline, segment_size).await? {
                            Some(history) => Some(history),
                            None if h.timeline < file.timeline => {
                                return Err(WalError::HistoryNotStored {
                                    path: path.display().to_string(),
                                    found: h.timeline,
                                    timeline: file.timeline,
                                });
                            }
                            None => None,
                        }
                    }
                    _ => None,
                };
                Ok(segment_mismatch(
                    header.as_ref(),
                    file,
                    cluster,
                    history.as_deref(),
                ))
            }
            WalFileKind::History => {
                let bytes = tokio::fs::read(path).await.map_err(|e| io_error(path, e))?;
                let text = String::from_utf8_lossy(&bytes);
                let parent = parse_history(&text)
                    .ok()
                    .and_then(|entries| entries.last().map(|e| e.parent));
                let parent_history = match parent {
                    Some(parent) => self.history(parent, segment_size).await?,
                    None => None,
                };
                Ok(history_mismatch(file, &text, parent_history.as_deref()))
            }
            WalFileKind::BackupHistory => Ok(None),
        }
    }

    /// The copy recovery should use: the complete segment, else the fullest partial copy
    /// (a partial copy holds the WAL received until it was stored).
    pub async fn find(&self, file: &WalFile, segment_size: u64) -> Result<WalObject, WalError> {
        let copies = self.copies(file, segment_size).await?;
        let complete = copies.iter().find(|o| o.file == *file);
        let partial = || {
            copies
                .iter()
                .filter(|o| {
                    file.kind == WalFileKind::Segment
                        && o.file.kind == WalFileKind::Partial
                        && o.file.timeline == file.timeline
                        && o.file.segno == file.segno
                })
                .max_by_key(|o| (o.covers, o.size, o.modified))
        };
        complete
            .or_else(partial)
            .cloned()
            .ok_or_else(|| WalError::NotFound {
                name: file.name(segment_size),
                server: self.server.clone(),
            })
    }

    /// Downloads a stored WAL object to `dest` (written aside, checked, then renamed into
    /// place, so `dest` never holds a partial or unverified file). Returns the bytes
    /// written.
    pub async fn download(&self, object: &WalObject, dest: &Path) -> Result<u64, WalError> {
        let stored = self.store.get(&object.key).await?;
        let reader = match (object.encrypted, &self.keys) {
            (false, Some(keys)) if !keys.accepts_plaintext() => {
                return Err(WalError::NotEncrypted {
                    key: object.key.clone(),
                });
            }
            (false, _) => stored,
            (true, None) => {
                return Err(WalError::KeyNeeded {
                    key: object.key.clone(),
                });
            }
            (true, Some(keys)) => {
                keys.decrypt(stored)
                    .await
                    .map_err(|source| WalError::Decrypt {
                        key: object.key.clone(),
                        source,
                    })?
            }
        };
        let mut content = Hashing {
            inner: decompress(reader, object.compression),
            hasher: Sha256::new(),
            progress: None,
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".pgbackup-fetch-")
            .tempfile_in(dir)
            .map_err(|e| io_error(dir, e))?;
        let mut out = tokio::fs::File::from_std(temp.reopen().map_err(|e| io_error(dir, e))?);
        let size = tokio::io::copy(&mut content, &mut out)
            .await
            .map_err(|e| corrupt(&object.key, e.to_string()))?;
        let actual = hex(&content.hasher.finalize());
        if actual != object.sha256 {
            return Err(corrupt(
                &object.key,
                format!(
                    "its content hashes to {actual}, not to the {} in its name",
                    object.sha256
                ),
            ));
        }
        out.flush().await.map_err(|e| io_error(dir, e))?;
        out.sync_all().await.map_err(|e| io_error(dir, e))?;
        temp.persist(dest).map_err(|e| io_error(dest, e.error))?;
        Ok(size)
    }

    /// The history of `timeline` from the archive; empty for timeline 1, `None` when its
    /// history file is not stored.
    pub async fn history(
        &self,
        timeline: u32,
        segment_size: u64,
    ) -> Result<Option<Vec<HistoryEntry>>, WalError> {
        if timeline <= 1 {
            return Ok(Some(Vec::new()));
        }
        let object = match self.find(&WalFile::history(timeline), segment_size).await {
            Ok(object) => object,
            Err(WalError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let dir = tempfile::tempdir().map_err(|e| io_error(Path::new("."), e))?;
        let path = dir.path().join(&object.name);
        self.download(&object, &path).await?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        parse_history(&text)
            .map(Some)
            .map_err(|reason| corrupt(&object.key, reason))
    }
}

/// WAL files up to this size are read into memory once; larger ones (segments of 128 MiB
/// and more) are streamed.
const IN_MEMORY: u64 = 64 * 1024 * 1024;

/// A WAL file's content hash and size, and its stored form when it was read into memory.
struct Prepared {
    sha256: String,
    size: u64,
    body: Option<Vec<u8>>,
}

/// Reads the file once and hashes it while it is compressed on another thread (zstd: read,
/// hashed and compressed a chunk at a time on two blocking threads; the other algorithms
/// through the stream pipeline), then encrypted when there is a key.
async fn prepare_in_memory(path: &Path, options: &StreamOptions) -> Result<Prepared, WalError> {
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
fn stored_form(source: ObjectReader, options: &StreamOptions) -> io::Result<ObjectReader> {
    let compressed = compress(source, options);
    match &options.encryption {
        Some(keys) => keys.encrypt(compressed),
        None => Ok(compressed),
    }
}

/// SHA-256 and size of a file.
async fn hash_file(path: &Path) -> Result<(String, u64), WalError> {
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

fn corrupt(key: &str, reason: String) -> WalError {
    WalError::Corrupt {
        key: key.to_string(),
        reason,
    }
}

fn io_error(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sha2::{Digest, Sha256};

    use super::{hash_and_compress, hex};

    #[test]
    fn a_file_is_hashed_and_compressed_whole_in_chunks() {
        // Chunks, a part of one and an empty file, on one thread and several.
        for (length, threads) in [(5 << 20 | 12345, 1), (3 << 20, 2), (100, 1), (0, 1)] {
            let mut file = tempfile::NamedTempFile::new().expect("temp");
            let data: Vec<u8> = (0..length)
                .map(|i: usize| (i % 251) as u8 ^ (i / 7919) as u8)
                .collect();
            file.write_all(&data).expect("write");
            let (sha256, size, compressed) =
                hash_and_compress(file.path(), 1, threads).expect("compress");
            assert_eq!(sha256, hex(&Sha256::digest(&data)));
            assert_eq!(size, length as u64);
            assert_eq!(zstd::decode_all(&compressed[..]).expect("decode"), data);
        }
    }
}
