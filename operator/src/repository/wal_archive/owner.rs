//! Whether a WAL file is the archive's cluster's at the place its name says, before it is
//! stored.

use std::path::Path;

use super::{WalArchive, WalError, io_error};
use crate::{
    postgres::read_wal_header,
    repository::{
        ObjectStore,
        timeline::parse_history,
        wal::{ArchiveIdentity, WalFile, WalFileKind},
        wal_owner::{history_mismatch, segment_mismatch},
    },
};

impl<S: ObjectStore> WalArchive<'_, S> {
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
}
