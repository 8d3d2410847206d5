//! WAL archiving in tests: the archiver as a background process, what the repository's WAL
//! archive holds, and `pgbackup` commands run as the cluster's OS user (PostgreSQL, which
//! `restore --recover` starts, refuses to run as root).

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{
    agent::{TestRepo, pgbackup_program, run_ok},
    postgres::PgServer,
};

/// The server name the test commands use (`PGBACKUP_SERVER`).
pub const SERVER: &str = "test-pg";

/// A `pgbackup` command as the cluster's OS user (when the tests run as root).
pub fn pgbackup_as_cluster_user(pg: &PgServer, repo: &TestRepo<'_>, args: &[&str]) -> Command {
    let mut command = pgbackup_program(&binary_for_cluster_user(), pg, repo, args);
    if let Some((uid, gid)) = pg.os_user() {
        command.uid(uid).gid(gid).env("HOME", std::env::temp_dir());
    }
    command
}

/// The `pgbackup` binary where the cluster's OS user can run it: the build directory may
/// be in root's home, which other users cannot enter. A hard link (or copy) in the
/// temporary directory, named after the build so that runs share it.
pub fn binary_for_cluster_user() -> PathBuf {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pgbackup"));
    if super::postgres::postgres_user_if_root().is_none() {
        return built;
    }
    SHARED
        .get_or_init(|| {
            let meta = std::fs::metadata(&built).expect("pgbackup binary");
            let stamp = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let dir = std::env::temp_dir()
                .join("pgbackup-test-bin")
                .join(format!("{}-{stamp}", meta.len()));
            std::fs::create_dir_all(&dir).expect("binary dir");
            for d in [dir.parent().expect("parent"), dir.as_path()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            let shared = dir.join("pgbackup");
            if !shared.exists() {
                let staged = dir.join(format!("pgbackup.{}", std::process::id()));
                if std::fs::hard_link(&built, &staged).is_err() {
                    std::fs::copy(&built, &staged).expect("copy pgbackup");
                }
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
                let _ = std::fs::rename(&staged, &shared);
            }
            shared
        })
        .clone()
}

/// Restores into a new data directory with `restore --pgdata DIR --recover` and the
/// `target` arguments, as the cluster's OS user, and starts PostgreSQL of `server_bin` on
/// it; returns the server and the restore's summary line.
pub fn restore_and_start(
    pg: &PgServer,
    repo: &TestRepo<'_>,
    server_bin: &Path,
    target: &[&str],
) -> (PgServer, String) {
    let mut summary = String::new();
    let restored = PgServer::start_restored(pg.password(), server_bin, |dir| {
        let dir = dir.to_string_lossy().into_owned();
        let pg_bin = server_bin.to_string_lossy().into_owned();
        let mut args = vec![
            "restore",
            "--pgdata",
            &dir,
            "--recover",
            "--pg-bin",
            &pg_bin,
        ];
        args.extend_from_slice(target);
        summary = run_ok(pgbackup_as_cluster_user(pg, repo, &args));
    });
    (restored, summary)
}

/// A filesystem repository the cluster's OS user can write.
pub fn fs_repo_for(pg: &PgServer) -> TestRepo<'static> {
    let repo = TestRepo::fs();
    if let (Some((uid, gid)), Some(dir)) = (pg.os_user(), repo.dir()) {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown repository");
    }
    repo
}

/// A directory the cluster's OS user can write, for restored data directories.
pub fn scratch_dir_for(pg: &PgServer) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgbackup-test-restore-")
        .tempdir()
        .expect("temp dir");
    if let Some((uid, gid)) = pg.os_user() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    }
    dir
}

/// `pgbackup wal-archive` running in the background; stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct Archiver {
    child: Option<Child>,
    /// Its `/healthz`, `/readyz`, `/metrics` port.
    pub port: u16,
    spool: tempfile::TempDir,
    log: PathBuf,
}

impl Archiver {
    /// Starts the archiver with `extra` arguments and waits until it is streaming.
    pub fn start(pg: &PgServer, repo: &TestRepo<'_>, extra: &[&str]) -> Self {
        let spool = scratch_dir_for(pg);
        Self::start_in(pg, repo, extra, spool)
    }

    /// Starts the archiver on an existing spool directory.
    pub fn start_in(
        pg: &PgServer,
        repo: &TestRepo<'_>,
        extra: &[&str],
        spool: tempfile::TempDir,
    ) -> Self {
        let mut archiver = Self::spawn(pg, repo, extra, spool);
        archiver.wait_for("/readyz", Duration::from_secs(60));
        archiver
    }

    /// Starts the archiver and waits only until its health endpoint answers.
    pub fn start_unready(pg: &PgServer, repo: &TestRepo<'_>, extra: &[&str]) -> Self {
        let mut archiver = Self::spawn(pg, repo, extra, scratch_dir_for(pg));
        archiver.wait_for("/healthz", Duration::from_secs(60));
        archiver
    }

    fn spawn(pg: &PgServer, repo: &TestRepo<'_>, extra: &[&str], spool: tempfile::TempDir) -> Self {
        // Port 0: the archiver binds a free port itself and logs it (no race with other
        // processes for a port picked in advance).
        let listen = "127.0.0.1:0".to_string();
        let spool_text = spool.path().to_string_lossy().into_owned();
        let mut args = vec![
            "wal-archive",
            "--listen",
            &listen,
            "--spool-dir",
            &spool_text,
        ];
        args.extend_from_slice(extra);
        let log = spool.path().with_extension("log");
        let log_file = std::fs::File::create(&log).expect("archiver log");
        let mut command = pgbackup_as_cluster_user(pg, repo, &args);
        // Its own process group: a hard kill takes pg_receivewal with it, as when a
        // container dies.
        command
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().expect("start wal-archive");
        let mut archiver = Self {
            child: Some(child),
            port: 0,
            spool,
            log,
        };
        archiver.port = archiver.logged_port(Duration::from_secs(30));
        archiver
    }

    /// The port the archiver says it listens on.
    fn logged_port(&mut self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let port = self.log().lines().find_map(|line| {
                let rest = line.split("health and metrics on http://").nth(1)?;
                let address = rest.split('/').next()?;
                address.rsplit(':').next()?.parse().ok()
            });
            if let Some(port) = port {
                return port;
            }
            self.check_running();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wal-archive did not say where it listens:\n{}", self.log());
    }

    fn check_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("wal-archive exited ({status}):\n{}", self.log());
        }
    }

    fn wait_for(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http_get(self.port, path).is_some_and(|(status, _)| status == 200) {
                return;
            }
            self.check_running();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "wal-archive did not answer {path} with 200:\n{}",
            self.log()
        );
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its metrics text.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Stops it the way Kubernetes does (SIGTERM) and waits; returns its log.
    pub fn stop(mut self) -> String {
        self.signal("-TERM");
        let child = self.child.take();
        if let Some(mut child) = child {
            let status = child.wait().expect("wait for wal-archive");
            assert!(
                status.success(),
                "wal-archive failed ({status}):\n{}",
                self.log()
            );
        }
        self.log()
    }

    /// Kills it and its pg_receivewal at once (SIGKILL), leaving the spool as it is.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let spool = tempfile::Builder::new().tempdir().expect("placeholder");
        std::mem::replace(&mut self.spool, spool)
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args([signal, "--", &group]).status();
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-KILL");
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
    }
}

/// GET on 127.0.0.1:port; the status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The WAL file names (without hash and compression) the repository holds, sorted.
pub fn archived_wal(repo: &TestRepo<'_>, s3_root: Option<&Path>) -> Vec<String> {
    let root = match (repo.dir(), s3_root) {
        (Some(dir), _) => dir.join(SERVER).join("wal"),
        (None, Some(storage)) => storage.join(repo_s3_path(repo)).join(SERVER).join("wal"),
        (None, None) => panic!("an S3 repository needs the server's storage directory"),
    };
    let mut names = Vec::new();
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(wal) = wal_name(&name) {
                names.push(wal);
            }
        }
    }
    names.sort();
    names
}

/// `<wal name>` from `<wal name>[.c<millis>].<sha256>[.ext][.age]`.
fn wal_name(file: &str) -> Option<String> {
    let file = file.strip_suffix(".age").unwrap_or(file);
    let trimmed = [".zst", ".lz4", ".gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    let (name, hash) = trimmed.rsplit_once('.')?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // `.c<millis>`: the time the file covers.
    let name = match name.rsplit_once(".c") {
        Some((wal, millis)) if millis.bytes().all(|b| b.is_ascii_digit()) => wal,
        _ => name,
    };
    Some(name.to_string())
}

fn repo_s3_path(repo: &TestRepo<'_>) -> PathBuf {
    // s3://bucket/prefix → bucket/prefix under the server's storage directory.
    PathBuf::from(repo.url().trim_start_matches("s3://"))
}

/// Waits until the archive holds `name` (a WAL file name); panics with the archiver's log.
pub fn wait_for_archived(
    repo: &TestRepo<'_>,
    s3_root: Option<&Path>,
    name: &str,
    archiver: &Archiver,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if archived_wal(repo, s3_root).iter().any(|n| n == name) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{name} was not archived within {timeout:?}; archive: {:?}\n{}",
        archived_wal(repo, s3_root),
        archiver.log()
    );
}

/// Waits until the archive holds every transaction committed up to `time` (RFC 3339), as
/// `pgbackup list --json` reports the window: a time target is restorable only then.
pub fn wait_for_window(pg: &PgServer, repo: &TestRepo<'_>, time: &str, timeout: Duration) {
    let wanted: jiff::Timestamp = time.parse().expect("RFC 3339 time");
    let deadline = Instant::now() + timeout;
    let mut listing = String::new();
    while Instant::now() < deadline {
        listing = run_ok(pgbackup_as_cluster_user(pg, repo, &["list", "--json"]));
        let parsed: serde_json::Value = serde_json::from_str(&listing).expect("JSON listing");
        let covered = parsed["walArchive"]["timelines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["toTime"].as_str()?.parse::<jiff::Timestamp>().ok())
            .any(|to| to >= wanted);
        if covered {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the archive did not come to cover {time} within {timeout:?}:\n{listing}");
}

/// Switches to a new WAL segment and returns the name of the one just completed.
pub fn switch_wal(pg: &PgServer) -> String {
    // pg_switch_wal returns the end of the completed segment; pg_walfile_name names the
    // segment a boundary position ends.
    pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
}

/// A server archiving through `archive_command = pgbackup wal-push` into a new filesystem
/// repository (server `test-pg`), which its OS user can write.
pub fn server_archiving_with_wal_push() -> (PgServer, TestRepo<'static>) {
    server_archiving_with_wal_push_on(None)
}

/// [`server_archiving_with_wal_push`] with the server programs of `bin_dir`.
pub fn server_archiving_with_wal_push_on(bin_dir: Option<&Path>) -> (PgServer, TestRepo<'static>) {
    let repo = TestRepo::fs();
    let dir = repo.dir().expect("dir").to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let archive_command = format!(
        "archive_command = '\"{}\" wal-push --repository file://{} --server {SERVER} %p'",
        binary_for_cluster_user().display(),
        dir.display()
    );
    let pg = PgServer::start_with(super::postgres::PgConfig {
        settings: vec!["archive_mode = on".into(), archive_command],
        bin_dir: bin_dir.map(Path::to_path_buf),
    });
    (pg, repo)
}

/// Switches WAL and waits until `archive_command` stored the segment just completed.
pub fn switch_and_wait_archived(pg: &PgServer, repo: &TestRepo<'_>) {
    let last = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal() - 1)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !archived_wal(repo, None).contains(&last) {
        assert!(
            Instant::now() < deadline,
            "{last} not archived:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
