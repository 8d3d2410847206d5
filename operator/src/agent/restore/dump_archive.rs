//! A database's dump as pg_restore reads it: a custom-format archive piped from the
//! repository, or a local copy — the custom archive fetched whole for a parallel
//! restore, a directory-format dump unpacked — which is read whole, and so checked against
//! its manifest, before pg_restore starts.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    agent::{
        AgentError,
        process::{PgBin, Tool, pipe_into},
        untar::unpack_tar,
    },
    repository::{
        BackupDir, Keys, Manifest, ObjectEntry, ObjectReader, ObjectRole, Store, open_object,
    },
};

/// Where a dump is read from.
pub(super) struct DumpArchive<'a> {
    source: Source<'a>,
    pg_bin: PgBin,
}

enum Source<'a> {
    /// Piped from the repository, each time it is read.
    Stream {
        store: &'a Store,
        dir: &'a BackupDir,
        manifest: &'a Manifest,
        object: &'a ObjectEntry,
        keys: Option<&'a Keys>,
    },
    /// Fetched into the scratch directory (removed when dropped).
    Local {
        path: PathBuf,
        _scratch: tempfile::TempDir,
    },
}

impl<'a> DumpArchive<'a> {
    /// The dump `object`: a directory dump is unpacked, a custom one fetched when
    /// `local` (for parallel jobs, which pg_restore cannot run on a stream).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        store: &'a Store,
        dir: &'a BackupDir,
        manifest: &'a Manifest,
        object: &'a ObjectEntry,
        keys: Option<&'a Keys>,
        pg_bin: &PgBin,
        local: bool,
        scratch_dir: Option<&Path>,
    ) -> Result<Self, AgentError> {
        let pg_bin = pg_bin.clone();
        if object.role != ObjectRole::DatabaseDirectory && !local {
            let source = Source::Stream {
                store,
                dir,
                manifest,
                object,
                keys,
            };
            return Ok(Self { source, pg_bin });
        }
        let parent = scratch_dir
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| AgentError::Io { path, source }
        };
        let scratch = tempfile::Builder::new()
            .prefix("pgbackup-restore-")
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?;
        let mut reader = open_object(store, dir, object, manifest, keys).await?;
        let path = if object.role == ObjectRole::DatabaseDirectory {
            let path = scratch.path().join("dump");
            unpack_tar(reader, &path).await?;
            path
        } else {
            let path = scratch.path().join("archive.dump");
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(io_err(&path))?;
            tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|e| AgentError::Corrupt(e.to_string()))?;
            file.flush().await.map_err(io_err(&path))?;
            path
        };
        tracing::info!(object = %object.name, "fetched {} into {}", object.name, path.display());
        let source = Source::Local {
            path,
            _scratch: scratch,
        };
        Ok(Self { source, pg_bin })
    }

    /// Whether the dump has been read whole (so checked) already.
    pub(super) fn is_local(&self) -> bool {
        matches!(self.source, Source::Local { .. })
    }

    /// `pg_restore --list` with `args`: its output. On a stream only the archive's head is
    /// read (pg_restore stops after its table of contents).
    pub(super) async fn list(&self, args: &[String]) -> Result<String, AgentError> {
        let mut list_args = vec!["--list".to_string()];
        list_args.extend(args.iter().cloned());
        let (mut tool, stream) = self.spawn_with(&list_args, &[])?;
        let mut stdout = tool
            .take_stdout()
            .ok_or_else(|| AgentError::Invalid("pg_restore has no stdout".into()))?;
        let reading = async {
            let mut text = String::new();
            stdout
                .read_to_string(&mut text)
                .await
                .map(|_| text)
                .map_err(|e| AgentError::Corrupt(format!("pg_restore --list: {e}")))
        };
        let feeding = async {
            if let Some(reader) = stream {
                let mut stdin = tool
                    .take_stdin()
                    .ok_or_else(|| AgentError::Invalid("pg_restore has no stdin".into()))?;
                let mut reader = reader.await?;
                // pg_restore closes its input once it has the table of contents.
                let _ = tokio::io::copy(&mut reader, &mut stdin).await;
            }
            Ok::<_, AgentError>(tool)
        };
        let (text, tool) = tokio::join!(reading, feeding);
        tool?.finish().await?;
        text
    }

    /// pg_restore with `args` (connection and choice), reading the whole dump.
    pub(super) async fn restore(
        &self,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<(), AgentError> {
        let (tool, stream) = self.spawn_with(args, env)?;
        match stream {
            Some(reader) => {
                pipe_into(reader.await?, tool).await?;
            }
            None => {
                tool.finish().await?;
            }
        }
        Ok(())
    }

    /// Starts pg_restore on the dump: the local path as its last argument, or the object
    /// (to be opened) for its stdin.
    #[allow(clippy::type_complexity)]
    fn spawn_with(
        &self,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<
        (
            Tool,
            Option<impl Future<Output = Result<ObjectReader, AgentError>> + '_>,
        ),
        AgentError,
    > {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        let program = self.pg_bin.program("pg_restore");
        match &self.source {
            Source::Local { path, .. } => {
                let path = path.to_str().ok_or_else(|| {
                    AgentError::Invalid(format!("{} is not UTF-8", path.display()))
                })?;
                args.push(path);
                Ok((Tool::spawn(&program, &args, env, false)?, None))
            }
            Source::Stream {
                store,
                dir,
                manifest,
                object,
                keys,
            } => {
                let tool = Tool::spawn(&program, &args, env, true)?;
                let open =
                    async move { Ok(open_object(*store, dir, object, *manifest, *keys).await?) };
                Ok((tool, Some(open)))
            }
        }
    }
}
