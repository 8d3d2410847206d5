//! Running a pod's containers as local processes: each in its own mount namespace
//! (`unshare --mount`) with its volumes bind-mounted at their container paths, a private
//! `/tmp`, the node's `/etc/hosts`, an `/etc/passwd` that knows the container's user, and
//! its termination message file; as the pod's user (`setpriv`), with the container's
//! environment (values, Secret and ConfigMap keys, pod fields). Readiness probes run in the
//! container's namespace (`exec`) or against the pod's address (`httpGet`, `tcpSocket`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use kube::{Api, Client, ResourceExt};

use super::{images, volumes};

/// The most Kubernetes keeps of a termination message.
const MESSAGE_LIMIT: usize = 4096;

/// One container's life on the node.
#[derive(Debug)]
pub struct Run {
    pub name: String,
    pub image: String,
    pub child: Option<tokio::process::Child>,
    pub pid: Option<u32>,
    pub restarts: i32,
    pub started_at: Option<jiff::Timestamp>,
    pub finished: Option<Finished>,
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub next_probe: Instant,
    pub restart_at: Option<Instant>,
    pub log: PathBuf,
    pub message_file: PathBuf,
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub user: (u32, u32),
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: i32,
    pub message: String,
    pub at: jiff::Timestamp,
    pub started: jiff::Timestamp,
}

/// The value of a pod field (`fieldRef`).
pub fn field_value(pod: &Pod, path: &str, ip: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta = &pod.metadata;
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key.trim_matches(|c| c == '\'' || c == '"')))
            .cloned()
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        other => {
            if let Some(key) = other
                .strip_prefix("metadata.labels[")
                .and_then(|k| k.strip_suffix(']'))
            {
                label(&meta.labels, key)
            } else if let Some(key) = other
                .strip_prefix("metadata.annotations[")
                .and_then(|k| k.strip_suffix(']'))
            {
                label(&meta.annotations, key)
            } else {
                String::new()
            }
        }
    }
}

/// The container's environment as the kubelet gives it, or why it cannot start yet.
pub async fn environment(
    client: &Client,
    pod: &Pod,
    container: &Container,
    ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut env = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(secret) = &from.secret_ref {
            let data = secret_map(client, &namespace, &secret.name).await?;
            match data {
                Some(data) => {
                    env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if secret.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", secret.name)),
            }
        }
        if let Some(map) = &from.config_map_ref {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), &namespace);
            match api.get_opt(&map.name).await.map_err(|e| e.to_string())? {
                Some(found) => env.extend(
                    found
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), v)),
                ),
                None if map.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", map.name)),
            }
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (Some(value), _) => Some(expand(value, &env)),
            (None, Some(from)) => {
                if let Some(key) = &from.secret_key_ref {
                    let data = secret_map(client, &namespace, &key.name).await?;
                    match data.and_then(|d| d.get(&key.key).cloned()) {
                        Some(v) => Some(v),
                        None if key.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                        Api::namespaced(client.clone(), &namespace);
                    let found = api.get_opt(&key.name).await.map_err(|e| e.to_string())?;
                    match found
                        .and_then(|m| m.data)
                        .and_then(|d| d.get(&key.key).cloned())
                    {
                        Some(v) => Some(v),
                        None if key.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                    }
                } else if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path, ip))
                } else {
                    // resourceFieldRef: no limits are enforced on this node.
                    Some("0".into())
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), value));
        }
    }
    Ok(env)
}

async fn secret_map(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        }))
}

/// `$(NAME)` references to earlier variables, as Kubernetes expands them.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// `'text'` for a shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Everything needed to start one container.
#[derive(Debug)]
pub struct Launch<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub program: &'a images::Program,
    pub volumes: &'a BTreeMap<String, PathBuf>,
    pub pod_dir: &'a Path,
    pub hosts_file: &'a Path,
    pub env: Vec<(String, String)>,
}

/// The user and group a container runs as.
pub fn user_of(pod: &Pod, container: &Container, program: &images::Program) -> (u32, u32) {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.clone());
    let own = container.security_context.clone();
    let user = own
        .as_ref()
        .and_then(|c| c.run_as_user)
        .or(pod_context.as_ref().and_then(|c| c.run_as_user))
        .map_or(program.default_user, |u| u as u32);
    let group = own
        .as_ref()
        .and_then(|c| c.run_as_group)
        .or(pod_context.as_ref().and_then(|c| c.run_as_group))
        .map_or(user, |g| g as u32);
    (user, group)
}

/// Writes the container's launcher script and starts it.
pub fn start(launch: &Launch<'_>, run: &mut Run) -> std::io::Result<()> {
    let Launch {
        pod,
        container,
        program,
        volumes,
        pod_dir,
        hosts_file,
        env,
    } = launch;
    let dir = pod_dir.join("containers").join(&container.name);
    fs::create_dir_all(&dir)?;
    let (user, group) = run.user;
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.fs_group);

    // The container's own files.
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    let passwd = dir.join("passwd");
    let name = if user == 0 {
        "root".to_string()
    } else if program.entrypoint.is_some() {
        "postgres".into()
    } else {
        format!("user{user}")
    };
    let mut passwd_text = "root:x:0:0:root:/root:/bin/sh\n".to_string();
    if user != 0 {
        let _ = writeln!(passwd_text, "{name}:x:{user}:{group}:{name}:/tmp:/bin/sh");
    }
    fs::write(&passwd, passwd_text)?;
    let group_file = dir.join("group");
    let mut group_text = "root:x:0:\n".to_string();
    if group != 0 {
        let _ = writeln!(group_text, "{name}:x:{group}:");
    }
    if let Some(fs_group) = fs_group.filter(|g| *g as u32 != group && *g != 0) {
        let _ = writeln!(group_text, "fsgroup:x:{fs_group}:{name}");
    }
    fs::write(&group_file, group_text)?;
    fs::write(&run.message_file, "")?;
    fs::set_permissions(&run.message_file, fs::Permissions::from_mode(0o666))?;

    // (source, container path, read-only), parents before children.
    let mut mounts: Vec<(PathBuf, String, bool)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(source) = volumes.get(&mount.name) else {
            return Err(std::io::Error::other(format!("no volume {}", mount.name)));
        };
        let mut source = source.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(sub);
            if !source.exists() {
                fs::create_dir_all(&source)?;
            }
        }
        mounts.push((
            source,
            mount.mount_path.clone(),
            mount.read_only == Some(true),
        ));
    }
    if !mounts.iter().any(|(_, path, _)| path == "/tmp") {
        mounts.push((tmp, "/tmp".into(), false));
    }
    for private in &program.private_dirs {
        let private_dir = dir.join(private.trim_start_matches('/').replace('/', "_"));
        fs::create_dir_all(&private_dir)?;
        fs::set_permissions(&private_dir, fs::Permissions::from_mode(0o1777))?;
        mounts.push((private_dir, (*private).to_string(), false));
    }
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    mounts.push((run.message_file.clone(), message_path, false));
    mounts.push((hosts_file.to_path_buf(), "/etc/hosts".into(), true));
    mounts.push((passwd, "/etc/passwd".into(), true));
    mounts.push((group_file, "/etc/group".into(), true));
    mounts.sort_by_key(|(_, path, _)| path.matches('/').count());

    let mut script = String::from(
        "set -e\n\
         m() {\n\
         \x20 if [ -d \"$1\" ]; then mkdir -p \"$2\"; elif [ ! -e \"$2\" ]; then mkdir -p \"$(dirname \"$2\")\"; : >\"$2\"; fi\n\
         \x20 mount --bind \"$1\" \"$2\"\n\
         \x20 if [ \"$3\" = ro ]; then mount -o remount,bind,ro \"$2\"; fi\n\
         }\n",
    );
    for (source, path, read_only) in &mounts {
        let _ = writeln!(
            script,
            "m {} {} {}",
            quote(&source.display().to_string()),
            quote(path),
            if *read_only { "ro" } else { "rw" }
        );
    }
    let working_dir = container.working_dir.clone().unwrap_or_else(|| "/".into());
    let _ = writeln!(script, "cd {}", quote(&working_dir));
    let command = run.command.clone().unwrap_or_default();
    let groups = match fs_group {
        Some(g) if g as u32 != group => format!("--groups={g}"),
        _ => "--clear-groups".into(),
    };
    let _ = write!(
        script,
        "exec setsid setpriv --reuid={user} --regid={group} {groups} --pdeathsig=KILL --"
    );
    for word in &command {
        let _ = write!(script, " {}", quote(word));
    }
    script.push('\n');
    let script_file = dir.join("launch.sh");
    fs::write(&script_file, script)?;

    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.log)?;
    let child = tokio::process::Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
        ])
        .arg(&script_file)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    run.pid = child.id();
    run.child = Some(child);
    run.started_at = Some(jiff::Timestamp::now());
    run.finished = None;
    run.waiting = None;
    run.ready = false;
    run.next_probe = Instant::now();
    Ok(())
}

/// The command line of a container: its command and args, or the image's entry point.
pub fn command_line(container: &Container, program: &images::Program) -> Vec<String> {
    let mut words = match &program.entrypoint {
        Some(entry) => {
            let mut words = entry.clone();
            // The image's own command (`postgres`) and the container's args follow the
            // entry point, as Docker's ENTRYPOINT + CMD do.
            words.extend(
                container
                    .command
                    .clone()
                    .unwrap_or_else(|| vec!["postgres".into()]),
            );
            words
        }
        None => container.command.clone().unwrap_or_default(),
    };
    words.extend(container.args.clone().unwrap_or_default());
    words
}

/// How a finished container ended: its exit code and termination message (the file, or
/// with `FallbackToLogsOnError` the end of its log when it failed and wrote none).
pub fn finished(run: &Run, container: &Container, exit_code: i32) -> Finished {
    let mut message = fs::read(&run.message_file).unwrap_or_default();
    if message.is_empty()
        && exit_code != 0
        && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
    {
        let log = fs::read(&run.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        message = lines[lines.len().saturating_sub(80)..]
            .join("\n")
            .into_bytes();
        if message.len() > 2048 {
            message = message[message.len() - 2048..].to_vec();
        }
    }
    message.truncate(MESSAGE_LIMIT);
    Finished {
        exit_code,
        message: String::from_utf8_lossy(&message).into_owned(),
        at: jiff::Timestamp::now(),
        started: run.started_at.unwrap_or_else(jiff::Timestamp::now),
    }
}

/// Sends `signal` to the container's process group.
pub fn signal(run: &Run, signal: &str) {
    if let Some(pid) = run.pid {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a probe once: `exec` in the container's mount namespace as its user, `httpGet`
/// and `tcpSocket` against the pod's address.
pub async fn probe(probe: &Probe, run: &Run, container: &Container, pod_ip: &str) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(5) as u64);
    let port_of = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => Some(*p as u16),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u16),
    };
    if let Some(exec) = &probe.exec {
        let Some(pid) = run.pid else { return false };
        let (user, group) = run.user;
        let mut command = tokio::process::Command::new("nsenter");
        command
            .args(["--target", &pid.to_string(), "--mount", "--", "setpriv"])
            .args([
                format!("--reuid={user}"),
                format!("--regid={group}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .args(exec.command.iter().flatten())
            .env_clear()
            .envs(run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        return matches!(
            tokio::time::timeout(timeout, command.status()).await,
            Ok(Ok(status)) if status.success()
        );
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_of(&tcp.port) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((pod_ip, port))).await,
            Ok(Ok(_))
        );
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = port_of(&http.port) else {
            return false;
        };
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let get = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect((pod_ip, port)).await.ok()?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: {pod_ip}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = vec![0u8; 64];
            let n = stream.read(&mut head).await.ok()?;
            let line = String::from_utf8_lossy(&head[..n]).into_owned();
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        };
        return matches!(tokio::time::timeout(timeout, get).await, Ok(Some(true)));
    }
    true
}

/// The pods API of `pod`'s namespace.
pub fn pods_api(client: &Client, pod: &Pod) -> Api<Pod> {
    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default())
}

/// Prepares the pod's volumes (see [`volumes::prepare`]).
pub async fn prepare_volumes(
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    volumes::prepare(client, pod, dir).await
}
