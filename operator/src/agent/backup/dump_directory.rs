//! A parallel dump of one database (`pg_dump --format=directory --jobs=N`), stored as one
//! tar stream. Each file goes into the stream as soon as pg_dump has closed it and leaves
//! the local disk at once; when pg_dump writes faster than the repository takes it, pg_dump
//! is paused, so the scratch directory holds about `--scratch-limit-mib` plus the files
//! being written, never the whole dump.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use tokio::io::DuplexStream;

use super::{
    BackupContext,
    dump_watch::{Closes, Watch, on_disk},
    tar_stream::TarStream,
};
use crate::{
    agent::{AgentError, process::Tool},
    repository::{NewObject, ObjectEntry, store_object},
};

/// Dumps one database with `args` added to pg_dump's and stores it as `object`.
pub(super) async fn dump(
    ctx: &BackupContext<'_>,
    args: &[&str],
    env: &[(&str, String)],
    object: NewObject,
) -> Result<ObjectEntry, AgentError> {
    let scratch = super::scratch_dir(ctx.args, "pgbackup-dump-")?;
    // pg_dump writes into a directory that exists when it is empty.
    let out = scratch.path().join("dump");
    std::fs::create_dir(&out).map_err(io_error(&out))?;
    let watch = Watch::new(&out);
    let jobs = format!("--jobs={}", ctx.args.jobs);
    let file = format!("--file={}", out.display());
    // No fsync: every file leaves the disk for the repository as soon as it is closed.
    let mut dump_args = vec![
        "--format=directory",
        "--compress=0",
        "--no-sync",
        &jobs,
        &file,
    ];
    dump_args.extend(args);
    let tool = Tool::spawn(&ctx.pg_bin.program("pg_dump"), &dump_args, env, false)?;
    let closes = watch.map(|w| w.start(tool.id(), ctx.args.scratch_limit_mib << 20));
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let storing = store_object(
        ctx.store,
        &ctx.dir,
        object,
        reader,
        &ctx.options,
        &ctx.progress,
    );
    let (stored, fed) = tokio::join!(storing, feed(tool, &out, closes, writer));
    // A failed store breaks the stream, so its error is the cause; a failed dump or read
    // ends the stream early, which the store cannot tell from its end.
    let object = stored?;
    fed?;
    Ok(object)
}

/// Moves each file of the dump into the tar stream as pg_dump closes it, and what is left
/// once pg_dump has exited successfully.
async fn feed(
    tool: Tool,
    out: &Path,
    closes: Option<Closes>,
    writer: DuplexStream,
) -> Result<(), AgentError> {
    let mut tar = TarStream::new(writer);
    let finished = tool.finish();
    tokio::pin!(finished);
    let Some(mut closes) = closes else {
        finished.await?;
        return finish(tar, out).await;
    };
    loop {
        tokio::select! {
            result = &mut finished => {
                result?;
                tracing::debug!(pauses = closes.pauses(), "pg_dump finished");
                return finish(tar, out).await;
            }
            closed = closes.next() => {
                append(&mut tar, out, closed?.iter()).await?;
                closes.caught_up();
            }
        }
    }
}

/// Stores what is left in the dump directory and ends the stream.
async fn finish(mut tar: TarStream<DuplexStream>, out: &Path) -> Result<(), AgentError> {
    let left = on_disk(out)?;
    append(&mut tar, out, left.keys()).await?;
    tar.finish().await.map_err(stream_error)?;
    Ok(())
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + use<> {
    let path = path.display().to_string();
    move |source| AgentError::Io { path, source }
}

/// Appends the files `names` of `dir` to the stream, each removed once in it; a name no
/// longer there was stored already.
async fn append<'n>(
    tar: &mut TarStream<DuplexStream>,
    dir: &Path,
    names: impl Iterator<Item = &'n OsString>,
) -> Result<(), AgentError> {
    for name in names {
        let path: PathBuf = dir.join(name);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error(&path)(err)),
        };
        let metadata = file.metadata().await.map_err(io_error(&path))?;
        let mtime = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        tar.append(&name.to_string_lossy(), metadata.len(), mtime, file)
            .await
            .map_err(stream_error)?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(io_error(&path))?;
    }
    Ok(())
}

fn stream_error(err: std::io::Error) -> AgentError {
    AgentError::Corrupt(format!("storing the dump directory: {err}"))
}
