//! Keeping a data directory's old contents until a restore over it is proven: they move
//! into `<pgdata>/.pgbackup-aside-<name>` (renames on one filesystem: instant, no copy, and
//! the same whether PGDATA is a volume's root or a directory in it), the restore lays its
//! data down beside them, and afterwards they are either discarded or put back.
//! `lost+found` (a filesystem's own) is never moved or removed.

use std::path::{Path, PathBuf};

use crate::agent::AgentError;

/// The prefix of aside directories inside a data directory.
pub const ASIDE_PREFIX: &str = ".pgbackup-aside-";
const LOST_AND_FOUND: &str = "lost+found";

/// The aside directory of `name` in `pgdata`.
pub fn aside_dir(pgdata: &Path, name: &str) -> PathBuf {
    pgdata.join(format!("{ASIDE_PREFIX}{name}"))
}

/// Whether an entry of a data directory is not PostgreSQL's: an aside directory or
/// `lost+found`. A restore treats a directory holding only these as empty.
pub fn is_foreign(name: &str) -> bool {
    name == LOST_AND_FOUND || name.starts_with(ASIDE_PREFIX)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// PostgreSQL's entries in `pgdata` (everything but [`is_foreign`] ones).
fn own_entries(pgdata: &Path) -> Result<Vec<PathBuf>, AgentError> {
    if !pgdata.exists() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(pgdata).map_err(io(pgdata))? {
        let entry = entry.map_err(io(pgdata))?;
        if !is_foreign(&entry.file_name().to_string_lossy()) {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

fn remove(path: &Path) -> Result<(), AgentError> {
    let result = if path.is_dir() && !path.is_symlink() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.map_err(io(path))
}

/// Removes PostgreSQL's entries from `pgdata`, leaving aside directories and `lost+found`.
pub fn empty(pgdata: &Path) -> Result<usize, AgentError> {
    let entries = own_entries(pgdata)?;
    for path in &entries {
        remove(path)?;
    }
    Ok(entries.len())
}

/// Moves `pgdata`'s contents aside under `name`. If that aside already exists, an earlier
/// attempt set the old data aside and stopped part-way: what is in `pgdata` now is that
/// attempt's partial restore, and is removed instead. Refused while another restore's old
/// data is kept aside here (discard it or put it back first). Returns how many entries
/// moved.
pub fn set_aside(pgdata: &Path, name: &str) -> Result<usize, AgentError> {
    let aside = aside_dir(pgdata, name);
    // A put-back that was interrupted is finished first: what is in PGDATA is old data.
    if pgdata
        .join(format!("{ASIDE_PREFIX}{name}.putting-back"))
        .exists()
    {
        put_back(pgdata, name)?;
    }
    if pgdata.exists() {
        for entry in std::fs::read_dir(pgdata).map_err(io(pgdata))? {
            let entry_name = entry
                .map_err(io(pgdata))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let ours = entry_name == format!("{ASIDE_PREFIX}{name}")
                || entry_name.starts_with(&format!("{ASIDE_PREFIX}{name}."));
            if entry_name.starts_with(ASIDE_PREFIX) && !ours {
                return Err(AgentError::Invalid(format!(
                    "{} keeps another restore's old data in {entry_name}: put it back or discard it (`pgbackup data-dir`) before restoring again",
                    pgdata.display()
                )));
            }
        }
    }
    if aside.exists() {
        empty(pgdata)?;
        return Ok(0);
    }
    let entries = own_entries(pgdata)?;
    // Created under a temporary name and renamed last: an aside directory that exists is
    // always complete.
    let filling = pgdata.join(format!("{ASIDE_PREFIX}{name}.filling"));
    if filling.exists() {
        // A crash while filling: put what moved back first.
        for entry in std::fs::read_dir(&filling).map_err(io(&filling))? {
            let entry = entry.map_err(io(&filling))?;
            let back = pgdata.join(entry.file_name());
            std::fs::rename(entry.path(), &back).map_err(io(&back))?;
        }
        std::fs::remove_dir(&filling).map_err(io(&filling))?;
        return set_aside(pgdata, name);
    }
    std::fs::create_dir(&filling).map_err(io(&filling))?;
    for path in &entries {
        let to = filling.join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &to).map_err(io(path))?;
    }
    std::fs::rename(&filling, &aside).map_err(io(&aside))?;
    Ok(entries.len())
}

/// Puts the contents set aside under `name` back into `pgdata`, removing what a restore
/// wrote there. A no-op when there is nothing aside (already put back, or never moved).
/// Safe to repeat after an interruption: a marker says the restore's files are gone, so
/// a second run never removes old entries already moved back.
pub fn put_back(pgdata: &Path, name: &str) -> Result<usize, AgentError> {
    let aside = aside_dir(pgdata, name);
    let marker = pgdata.join(format!("{ASIDE_PREFIX}{name}.putting-back"));
    let filling = pgdata.join(format!("{ASIDE_PREFIX}{name}.filling"));
    if !aside.exists() {
        // A set-aside interrupted while filling: its entries go back where they were.
        let mut moved = 0;
        if filling.exists() {
            for entry in std::fs::read_dir(&filling).map_err(io(&filling))? {
                let entry = entry.map_err(io(&filling))?;
                let back = pgdata.join(entry.file_name());
                std::fs::rename(entry.path(), &back).map_err(io(&back))?;
                moved += 1;
            }
            std::fs::remove_dir(&filling).map_err(io(&filling))?;
        }
        // A put-back that finished but for removing its marker.
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(io(&marker))?;
        }
        return Ok(moved);
    }
    if !marker.exists() {
        empty(pgdata)?;
        std::fs::write(&marker, b"").map_err(io(&marker))?;
    }
    let mut moved = 0;
    for entry in std::fs::read_dir(&aside).map_err(io(&aside))? {
        let entry = entry.map_err(io(&aside))?;
        let back = pgdata.join(entry.file_name());
        std::fs::rename(entry.path(), &back).map_err(io(&back))?;
        moved += 1;
    }
    std::fs::remove_dir(&aside).map_err(io(&aside))?;
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    Ok(moved)
}

/// Deletes the contents set aside under `name`, once the restore is proven.
pub fn discard(pgdata: &Path, name: &str) -> Result<bool, AgentError> {
    let aside = aside_dir(pgdata, name);
    if !aside.exists() {
        return Ok(false);
    }
    remove(&aside)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, files: &[&str]) {
        for file in files {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, file.as_bytes()).expect("file");
        }
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(
                        path.strip_prefix(root)
                            .expect("under root")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn set_aside_then_put_back_restores_exactly_the_old_contents() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION", "base/1/1259", "lost+found/x"]);
        let before = listing(pgdata);
        assert_eq!(set_aside(pgdata, "r1").expect("aside"), 2);
        assert_eq!(
            listing(pgdata),
            [
                ".pgbackup-aside-r1/PG_VERSION",
                ".pgbackup-aside-r1/base/1/1259",
                "lost+found/x"
            ]
        );
        // A restore writes new data beside it, then fails.
        tree(pgdata, &["PG_VERSION", "global/pg_control"]);
        assert_eq!(put_back(pgdata, "r1").expect("back"), 2);
        assert_eq!(listing(pgdata), before);
        assert_eq!(put_back(pgdata, "r1").expect("again"), 0, "idempotent");
    }

    #[test]
    fn a_retried_set_aside_removes_the_partial_restore_not_the_old_data() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION", "base/old"]);
        set_aside(pgdata, "r1").expect("aside");
        tree(pgdata, &["base/partial"]);
        set_aside(pgdata, "r1").expect("retry");
        assert_eq!(
            listing(pgdata),
            [
                ".pgbackup-aside-r1/PG_VERSION",
                ".pgbackup-aside-r1/base/old"
            ]
        );
    }

    #[test]
    fn an_interrupted_set_aside_is_completed_from_where_it_stopped() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(
            pgdata,
            &["PG_VERSION", ".pgbackup-aside-r1.filling/base/old"],
        );
        set_aside(pgdata, "r1").expect("aside");
        assert_eq!(
            listing(pgdata),
            [
                ".pgbackup-aside-r1/PG_VERSION",
                ".pgbackup-aside-r1/base/old"
            ]
        );
    }

    #[test]
    fn an_interrupted_put_back_never_removes_what_it_already_moved_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION", "base/old"]);
        set_aside(pgdata, "r1").expect("aside");
        tree(pgdata, &["base/new"]);
        // Interrupted after emptying and moving one entry back.
        empty(pgdata).expect("empty");
        std::fs::write(pgdata.join(".pgbackup-aside-r1.putting-back"), b"").expect("marker");
        std::fs::rename(
            pgdata.join(".pgbackup-aside-r1/PG_VERSION"),
            pgdata.join("PG_VERSION"),
        )
        .expect("move");
        put_back(pgdata, "r1").expect("again");
        assert_eq!(listing(pgdata), ["PG_VERSION", "base/old"]);
    }

    #[test]
    fn a_retried_restore_after_an_interrupted_put_back_keeps_the_old_data() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION", "base/old"]);
        set_aside(pgdata, "r1").expect("aside");
        tree(pgdata, &["base/new"]);
        empty(pgdata).expect("empty");
        std::fs::write(pgdata.join(".pgbackup-aside-r1.putting-back"), b"").expect("marker");
        std::fs::rename(
            pgdata.join(".pgbackup-aside-r1/PG_VERSION"),
            pgdata.join("PG_VERSION"),
        )
        .expect("move");
        // The restore Job's pod retried: the put-back is finished, then the old data set
        // aside again — none of it lost.
        set_aside(pgdata, "r1").expect("retry");
        assert_eq!(
            listing(pgdata),
            [
                ".pgbackup-aside-r1/PG_VERSION",
                ".pgbackup-aside-r1/base/old"
            ]
        );
        // A put-back after a set-aside that stopped while filling.
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(
            pgdata,
            &["PG_VERSION", ".pgbackup-aside-r2.filling/base/old"],
        );
        assert_eq!(put_back(pgdata, "r2").expect("back"), 1);
        assert_eq!(listing(pgdata), ["PG_VERSION", "base/old"]);
    }

    #[test]
    fn another_restores_aside_blocks_a_new_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION"]);
        set_aside(pgdata, "r1").expect("aside");
        tree(pgdata, &["PG_VERSION"]);
        assert!(set_aside(pgdata, "r2").is_err());
        assert_eq!(
            listing(pgdata),
            [".pgbackup-aside-r1/PG_VERSION", "PG_VERSION"]
        );
    }

    #[test]
    fn discard_and_empty_keep_what_is_not_postgres() {
        let dir = tempfile::tempdir().expect("tmp");
        let pgdata = dir.path();
        tree(pgdata, &["PG_VERSION", "lost+found/x"]);
        set_aside(pgdata, "r1").expect("aside");
        tree(pgdata, &["PG_VERSION", "base/new"]);
        assert!(discard(pgdata, "r1").expect("discard"));
        assert_eq!(listing(pgdata), ["PG_VERSION", "base/new", "lost+found/x"]);
        assert_eq!(empty(pgdata).expect("empty"), 2);
        assert_eq!(listing(pgdata), ["lost+found/x"]);
    }
}
