//! A throwaway PostgreSQL cluster: `initdb` + `pg_ctl` on a free port, run as the `postgres`
//! OS user when the tests run as root (PostgreSQL refuses to run as root). `wal_level=replica`,
//! replication connections allowed, password authentication over TCP. Stopped and deleted
//! on drop.

use std::{
    fs,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tempfile::TempDir;

use super::{find_program, free_port, unique_suffix};

/// The superuser of every test cluster.
pub const SUPERUSER: &str = "postgres";

/// The address test clusters listen on.
const LOOPBACK: &str = "127.0.0.1";

/// How to set up a test cluster.
#[derive(Debug, Clone, Default)]
pub struct PgConfig {
    /// Directory of `initdb`, `pg_ctl`, `postgres`. Default: `PGBACKUP_TEST_PG_BIN`, else
    /// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<PathBuf>,
    /// Extra `postgresql.conf` lines, e.g. `archive_mode = on`.
    pub settings: Vec<String>,
}

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    root: TempDir,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
    /// The loopback address it listens on.
    address: String,
}

impl PgServer {
    /// Starts a cluster with the default configuration.
    pub fn start() -> Self {
        Self::start_with(PgConfig::default())
    }

    /// Starts a cluster. Panics with the server log when it does not come up.
    pub fn start_with(config: PgConfig) -> Self {
        let bin_dir = config.bin_dir.clone().unwrap_or_else(default_bin_dir);
        let run_as = postgres_user_if_root();
        let root = tempfile::Builder::new()
            .prefix("pgbackup-test-pg-")
            .tempdir()
            .expect("temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))
                .expect("chown test dir to postgres");
        }
        let password = format!("pw-{}", unique_suffix());
        let mut server = PgServer {
            root,
            bin_dir,
            port: 0,
            password,
            run_as,
            address: LOOPBACK.into(),
        };
        server.init(&config);
        // Another process may take the port between our probe and the server's bind: retry.
        for _ in 0..5 {
            server.port = free_port();
            server.write_port();
            if server
                .pg_ctl(&[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    &server.log_path().to_string_lossy(),
                ])
                .status
                .success()
            {
                return server;
            }
        }
        panic!("PostgreSQL did not start; log:\n{}", server.log());
    }

    fn init(&self, config: &PgConfig) {
        let pwfile = self.root.path().join("pwfile");
        fs::write(&pwfile, &self.password).expect("write pwfile");
        self.chown(&pwfile);
        let data = self.data_dir();
        let out = self.run(Command::new(self.bin_dir.join("initdb")).args([
            "-D",
            &data.to_string_lossy(),
            "-U",
            SUPERUSER,
            "--pwfile",
            &pwfile.to_string_lossy(),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", self.root.path().display()),
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            // Test clusters are thrown away: durability is not needed, speed is.
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "shared_buffers = 32MB".into(),
        ];
        conf.extend(config.settings.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"));
        // `host replication` is what physical backups and WAL streaming need.
        append(
            &data.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 scram-sha-256",
        );
    }

    fn write_port(&self) {
        append(
            &self.data_dir().join("postgresql.conf"),
            &format!("port = {}", self.port),
        );
    }

    /// Runs `pg_ctl` on this cluster with the given arguments.
    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        self.run(
            Command::new(self.bin_dir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(args),
        )
    }

    /// Runs a program of the server's own directory on the data directory (`-D`) as the
    /// cluster's OS user, e.g. `pg_resetwal` on the stopped cluster.
    pub fn on_data_dir(&self, program: &str, args: &[&str]) -> Output {
        let data = self.data_dir();
        self.run(
            Command::new(self.bin_dir.join(program))
                .arg("-D")
                .arg(&data)
                .args(args),
        )
    }

    /// Runs a command as the cluster's OS user.
    fn run(&self, command: &mut Command) -> Output {
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }

    /// Stops the server (fast shutdown), as scaling its StatefulSet to 0 would.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again on its data directory (whatever is in it now).
    pub fn start_again(&self) {
        let log = self.log_path();
        let out = self.pg_ctl(&["start", "-w", "-t", "120", "-l", &log.to_string_lossy()]);
        assert!(
            out.status.success(),
            "start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Whether the server runs.
    pub fn is_running(&self) -> bool {
        self.pg_ctl(&["status"]).status.success()
    }

    /// Restarts the server (fast shutdown), as a database pod restart would.
    pub fn restart(&self) {
        let log = self.log_path();
        let out = self.pg_ctl(&[
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-l",
            &log.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "restart failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// A PostgreSQL program: the server's own, else (for server-only builds of other
    /// versions) the default installation's client tools.
    pub fn program(&self, name: &str) -> PathBuf {
        let own = self.bin_dir.join(name);
        if own.exists() {
            own
        } else {
            default_bin_dir().join(name)
        }
    }

    /// The OS user (uid, gid) the cluster runs as, when the tests run as root.
    pub fn os_user(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on (127.0.0.1, unless another loopback address was asked).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Password of the superuser `postgres`.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Directory of the server's programs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A tokio-postgres connection string for the superuser on `database`.
    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} password={} dbname={database} sslmode=disable",
            self.address, self.port, self.password
        )
    }

    /// libpq environment variables for PostgreSQL's own tools.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.address.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", SUPERUSER.into()),
            ("PGPASSWORD", self.password.clone()),
            ("PGDATABASE", "postgres".into()),
            ("PGSSLMODE", "disable".into()),
        ]
    }

    /// Connects as the superuser; the connection task runs on the current tokio runtime.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string(database), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("cannot connect to test PostgreSQL: {e}\n{}", self.log())
                });
        tokio::spawn(async move {
            // The connection ends when the client is dropped or the server stops.
            let _ = connection.await;
        });
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let stopped = self
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"])
            .status
            .success();
        if !stopped && self.data_dir().join("postmaster.pid").exists() {
            eprintln!("test PostgreSQL did not stop cleanly; log:\n{}", self.log());
        }
    }
}

/// The `postgres` OS user's uid and gid when we are root, else `None` (run as ourselves).
pub fn postgres_user_if_root() -> Option<(u32, u32)> {
    let we_are_root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !we_are_root {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
        .expect("running as root needs a `postgres` OS user to run PostgreSQL as");
    Some((
        entry[2].parse().expect("uid"),
        entry[3].parse().expect("gid"),
    ))
}

pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBACKUP_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Some(pg_config) = find_program("pg_config", "PGBACKUP_TEST_PG_CONFIG", &[])
        && let Ok(out) = Command::new(pg_config).arg("--bindir").output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.retain(|dir| dir.join("initdb").exists());
    candidates.sort_by_key(|dir| {
        dir.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
    });
    candidates
        .pop()
        .expect("no PostgreSQL server found: install it or set PGBACKUP_TEST_PG_BIN")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open config file");
    writeln!(file, "\n{text}").expect("append to config file");
}

impl PgServer {
    /// Runs SQL through psql as the superuser on `database`; panics with psql's error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.program("psql"))
            .envs(self.libpq_env())
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a PostgreSQL program of this server's version with its libpq environment.
    pub fn tool(&self, program: &str, args: &[&str]) -> Output {
        Command::new(self.program(program))
            .envs(self.libpq_env())
            .args(args)
            .output()
            .expect("run tool")
    }
}

impl PgServer {
    /// Starts a server on a data directory that `restore` writes (e.g. by restoring a
    /// backup into the path it is given), on a new port, owned by the right OS user. The
    /// restored cluster keeps its roles: `password` is its superuser's.
    pub fn start_restored(password: &str, bin_dir: &Path, restore: impl FnOnce(&Path)) -> Self {
        let run_as = postgres_user_if_root();
        let root = tempfile::Builder::new()
            .prefix("pgbackup-test-pg-")
            .tempdir()
            .expect("temp dir");
        let mut server = PgServer {
            root,
            bin_dir: bin_dir.to_path_buf(),
            port: 0,
            password: password.to_string(),
            run_as,
            address: LOOPBACK.into(),
        };
        if let Some((uid, gid)) = run_as {
            // A restore that runs as the cluster's user writes here too.
            std::os::unix::fs::chown(server.root.path(), Some(uid), Some(gid)).expect("chown");
        }
        restore(&server.data_dir());
        if let Some((uid, gid)) = run_as {
            chown_tree(server.root.path(), uid, gid);
        }
        // The restored configuration names the original's address, port and socket
        // directory.
        append(
            &server.data_dir().join("postgresql.conf"),
            &format!(
                "listen_addresses = '{}'\nunix_socket_directories = '{}'",
                server.address,
                server.root.path().display()
            ),
        );
        for _ in 0..5 {
            server.port = free_port();
            server.write_port();
            let log = server.log_path();
            if server
                .pg_ctl(&["start", "-w", "-t", "120", "-l", &log.to_string_lossy()])
                .status
                .success()
            {
                return server;
            }
        }
        panic!("restored PostgreSQL did not start; log:\n{}", server.log());
    }
}

impl PgServer {
    /// A streaming standby of `primary` (cloned with `pg_basebackup -R`), listening on
    /// `address` — another loopback address, e.g. `127.0.0.2` — at the primary's port, as
    /// the pods of a StatefulSet share one port.
    pub fn streaming_standby(primary: &PgServer, address: &str) -> Self {
        let run_as = postgres_user_if_root();
        let root = tempfile::Builder::new()
            .prefix("pgbackup-test-pg-")
            .tempdir()
            .expect("temp dir");
        let server = PgServer {
            root,
            bin_dir: primary.bin_dir.clone(),
            port: primary.port,
            password: primary.password.clone(),
            run_as,
            address: address.into(),
        };
        server.chown(server.root.path());
        let data = server.data_dir();
        let out = server.run(
            Command::new(primary.program("pg_basebackup"))
                .envs(primary.libpq_env())
                .args(["-D", &data.to_string_lossy(), "-R", "-X", "stream"]),
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        append(
            &data.join("postgresql.conf"),
            &format!(
                "listen_addresses = '{address}'\nunix_socket_directories = '{}'\nport = {}",
                server.root.path().display(),
                server.port
            ),
        );
        append(
            &data.join("pg_hba.conf"),
            "host all all 127.0.0.0/8 scram-sha-256\nhost replication all 127.0.0.0/8 scram-sha-256",
        );
        server.start_again();
        server
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        let out = self.pg_ctl(&["promote", "-w", "-t", "60"]);
        assert!(
            out.status.success(),
            "promote: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Peak resident memory of a running process in KiB (the kernel's high-water mark), while it
/// runs.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The PostgreSQL versions to test against, from the file `.ci/fetch-postgres` writes
/// (`PGBACKUP_TEST_PG_MATRIX`): `(major, server bin dir, client tools bin dir if complete)`.
/// The major versions this run covers: every supported one (13–18), unless
/// `PGBACKUP_TEST_PG_VERSIONS` names some (e.g. `15,16`) because the others are not
/// installed. A version covered and missing from the matrix fails the test that needs it.
pub fn versions_covered() -> Vec<u32> {
    match std::env::var("PGBACKUP_TEST_PG_VERSIONS") {
        Ok(text) => text
            .split(',')
            .map(|v| {
                v.trim().parse().unwrap_or_else(|_| {
                    panic!("PGBACKUP_TEST_PG_VERSIONS={text:?}: not a list of major versions")
                })
            })
            .collect(),
        Err(_) => (13..=18).collect(),
    }
}

/// The server and client tool directories of `major`, `None` when the run does not cover
/// it. Fails when a covered version is not installed, or has no client tools and
/// `needs_client` says the test needs them.
pub fn covered_version(major: u32, needs_client: bool) -> Option<(PathBuf, Option<PathBuf>)> {
    if !versions_covered().contains(&major) {
        return None;
    }
    let (_, server, client) = version_matrix()
        .into_iter()
        .find(|(m, _, _)| *m == major)
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL {major} is not in the version matrix: run `bash .ci/fetch-postgres`, or say which versions this run covers with PGBACKUP_TEST_PG_VERSIONS"
            )
        });
    assert!(
        !needs_client || client.is_some(),
        "PostgreSQL {major} has no client tools in the version matrix: run `bash .ci/fetch-postgres`, or leave {major} out of PGBACKUP_TEST_PG_VERSIONS"
    );
    Some((server, client))
}

pub fn version_matrix() -> Vec<(u32, PathBuf, Option<PathBuf>)> {
    let file = std::env::var_os("PGBACKUP_TEST_PG_MATRIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgbackup-test-postgres/matrix"));
    let text = fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `bash .ci/fetch-postgres` (part of .ci/setup) to fetch the other PostgreSQL versions",
            file.display()
        )
    });
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let major = fields.next()?.parse().ok()?;
            let server = PathBuf::from(fields.next()?);
            let client = fields.next().filter(|c| *c != "-").map(PathBuf::from);
            Some((major, server, client))
        })
        .collect()
}
