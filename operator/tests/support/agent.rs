//! Running the `pgbackup` binary against the test servers, as a user would.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::{postgres::PgServer, s3::S3Server};

/// A repository for a test: a directory or a prefix in the test S3 bucket.
#[derive(Debug)]
pub enum TestRepo<'a> {
    /// `file://` in a temporary directory.
    Fs(tempfile::TempDir),
    /// `s3://test-bucket/<prefix>`.
    S3(&'a S3Server, String),
}

impl TestRepo<'_> {
    /// A new filesystem repository.
    pub fn fs() -> TestRepo<'static> {
        TestRepo::Fs(
            tempfile::Builder::new()
                .prefix("pgbackup-test-repo-")
                .tempdir()
                .expect("temp dir"),
        )
    }

    /// The `--repository` URL.
    pub fn url(&self) -> String {
        match self {
            TestRepo::Fs(dir) => format!("file://{}", dir.path().display()),
            TestRepo::S3(s3, prefix) => format!("s3://{}/{prefix}", s3.bucket()),
        }
    }

    /// Environment the agent needs for this repository.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            TestRepo::Fs(_) => Vec::new(),
            TestRepo::S3(s3, _) => {
                let mut env = s3.aws_env();
                env.push(("PGBACKUP_S3_FORCE_PATH_STYLE", "true".into()));
                env
            }
        }
    }

    /// Directory of a filesystem repository.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            TestRepo::Fs(dir) => Some(dir.path()),
            TestRepo::S3(..) => None,
        }
    }
}

/// A `pgbackup` command with the repository, the server's libpq environment and its tools.
pub fn pgbackup(pg: &PgServer, repo: &TestRepo<'_>, args: &[&str]) -> Command {
    pgbackup_program(Path::new(env!("CARGO_BIN_EXE_pgbackup")), pg, repo, args)
}

/// Like [`pgbackup`], with the binary at `program`.
pub fn pgbackup_program(
    program: &Path,
    pg: &PgServer,
    repo: &TestRepo<'_>,
    args: &[&str],
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PGBACKUP_REPOSITORY", repo.url())
        .env("PGBACKUP_SERVER", "test-pg")
        .env("PGBACKUP_PG_BIN", pg.bin_dir())
        .envs(pg.libpq_env())
        .envs(repo.env());
    command
}

/// Runs a command and returns its output.
pub fn run(mut command: Command) -> Output {
    command.output().expect("run pgbackup")
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: Command) -> String {
    let description = format!("{command:?}");
    let out = run(command);
    assert!(
        out.status.success(),
        "{description} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
pub fn run_err(command: Command) -> String {
    let description = format!("{command:?}");
    let out = run(command);
    assert!(
        !out.status.success(),
        "{description} succeeded but should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lines of stderr that are not log lines: the error a user reads.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("pgbackup "))
        .collect()
}

/// The path of a file under a directory, for corrupting stored objects.
pub fn find_file(root: &Path, suffix: &str) -> PathBuf {
    find_file_where(root, suffix, |path| path.ends_with(suffix))
}

/// The path of a file under a directory whose name starts with `prefix`.
pub fn find_file_starting(root: &Path, prefix: &str) -> PathBuf {
    find_file_where(root, prefix, |path| {
        path.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(prefix))
    })
}

fn find_file_where(root: &Path, what: &str, matches: impl Fn(&str) -> bool) -> PathBuf {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if matches(&path.to_string_lossy()) {
                return path;
            }
        }
    }
    panic!("no file like {what} under {}", root.display());
}
