//! A local node for the test control plane: there is no container runtime here, so this
//! node runs each container as a local process ([`pods`]) with what a kubelet would give
//! it, and provides the storage a cluster has ([`storage`]).
//!
//! It registers a Ready Node and renews its Lease; binds pending pods to itself (there is
//! no scheduler); starts their containers once their volumes can be made; reports
//! container states, exit codes, termination messages, pod phase, readiness and the pod's
//! address (a loopback address of its own, 127.x.y.z, stable for a pod's name, which the
//! node's hosts files give the pod DNS names); honours deletion with its grace period;
//! restarts containers by the pod's restart policy.
//!
//! It runs on a thread of its own with its own runtime for as long as the test binary.

pub mod images;
pub mod pods;
pub mod storage;
pub mod volumes;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
};

use super::controlplane::apply;

/// The node's name.
pub const NODE_NAME: &str = "local-node";

/// PostgreSQL major version assumed for images whose tag does not say.
const DEFAULT_MAJOR: u32 = 16;

/// The node's directory: its copy of `pgbackup`, the hosts file, pod and volume
/// directories. Not under `/tmp`: pods mount a private `/tmp` of their own.
pub fn node_dir() -> PathBuf {
    PathBuf::from(format!("/var/tmp/pgbackup-node-{}", std::process::id()))
}

/// Starts the node on a thread of its own; returns once the Node is registered.
pub fn start(admin_kubeconfig: PathBuf, api_port: u16) {
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("local-node".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("node runtime");
            runtime.block_on(async move {
                let mut node = Node::new(&admin_kubeconfig, api_port).await;
                node.register().await;
                let _ = ready.send(());
                node.run().await;
            });
        })
        .expect("node thread");
    registered
        .recv_timeout(Duration::from_secs(60))
        .expect("the local node registers");
}

/// A pod the node runs.
#[derive(Debug)]
struct PodRun {
    name: String,
    ip: String,
    volumes: BTreeMap<String, PathBuf>,
    init: Vec<pods::Run>,
    containers: Vec<pods::Run>,
    /// When a deletion asked the containers to stop, and how long they may take.
    stopping: Option<Instant>,
    started: jiff::Timestamp,
    reported: serde_json::Value,
}

struct Node {
    client: Client,
    root: PathBuf,
    bin: PathBuf,
    hosts: PathBuf,
    api_port: u16,
    runs: BTreeMap<String, PodRun>,
    /// Pod IPs by `namespace/name`.
    addresses: BTreeMap<String, String>,
    lease_renewed: Option<Instant>,
    log: fs::File,
}

impl Node {
    async fn new(admin_kubeconfig: &Path, api_port: u16) -> Self {
        let root = node_dir();
        super::controlplane::remove_stale_dirs("pgbackup-node-");
        let bin = root.join("bin");
        fs::create_dir_all(&bin).expect("node dir");
        for dir in [&root, &bin] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("mode");
        }
        // A copy every pod user can run (the build's own lies under root's home).
        fs::copy(env!("CARGO_BIN_EXE_pgbackup"), bin.join("pgbackup")).expect("copy pgbackup");
        fs::write(
            bin.join("postgres-entrypoint.sh"),
            images::POSTGRES_ENTRYPOINT,
        )
        .expect("entrypoint");
        for file in ["pgbackup", "postgres-entrypoint.sh"] {
            fs::set_permissions(bin.join(file), fs::Permissions::from_mode(0o755)).expect("mode");
        }
        let hosts = root.join("hosts");
        fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts");
        let kubeconfig = kube::config::Kubeconfig::read_from(admin_kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        let log = fs::File::create(root.join("node.log")).expect("node log");
        Node {
            client: Client::try_from(config).expect("client"),
            root,
            bin,
            hosts,
            api_port,
            runs: BTreeMap::new(),
            addresses: BTreeMap::new(),
            lease_renewed: None,
            log,
        }
    }

    fn note(&mut self, line: &str) {
        let _ = writeln!(self.log, "{} {line}", jiff::Timestamp::now());
    }

    async fn register(&mut self) {
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"}},
        });
        apply::apply(&self.client, &node, apply::Mode::Apply)
            .await
            .expect("register the node");
        let now = jiff::Timestamp::now().to_string();
        let condition = |type_: &str, status: &str, reason: &str| {
            serde_json::json!({"type": type_, "status": status, "reason": reason, "message": reason,
                               "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let capacity = serde_json::json!({"cpu": "2", "memory": "24Gi", "pods": "250",
                                          "ephemeral-storage": "100Gi"});
        let status = serde_json::json!({"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [condition("Ready", "True", "KubeletReady"),
                           condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                           condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                           condition("PIDPressure", "False", "KubeletHasSufficientPID")],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "nodeInfo": {"machineID": "local", "systemUUID": "local", "bootID": "local",
                         "kernelVersion": "local", "osImage": "local processes",
                         "containerRuntimeVersion": "local://processes", "kubeletVersion": "v1.37.2",
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        }});
        Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone())
            .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
        for class in storage::classes() {
            apply::apply(&self.client, &class, apply::Mode::Apply)
                .await
                .expect("storage classes");
        }
    }

    async fn run(&mut self) {
        loop {
            if let Err(err) = self.tick().await {
                self.note(&format!("tick: {err}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn tick(&mut self) -> Result<(), kube::Error> {
        if self
            .lease_renewed
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.renew_lease().await?;
            self.lease_renewed = Some(Instant::now());
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let all = pods.list(&ListParams::default()).await?.items;
        self.write_hosts(&all).await?;
        let mut seen = BTreeSet::new();
        for pod in &all {
            let uid = pod.uid().unwrap_or_default();
            seen.insert(uid.clone());
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            match node.as_deref() {
                None if pod.metadata.deletion_timestamp.is_none() => self.bind(pod).await?,
                Some(NODE_NAME) => self.tend(pod).await?,
                _ => {}
            }
        }
        // Pods removed without us (forced deletion): their processes go.
        let gone: Vec<String> = self
            .runs
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut run) = self.runs.remove(&uid) {
                kill_all(&mut run).await;
            }
        }
        storage::provision(&self.client, &self.root).await?;
        let runs = &self.runs;
        let mut freeze = |volume: &Path, stop: bool| {
            for run in runs
                .values()
                .filter(|r| r.volumes.values().any(|v| v == volume))
            {
                for container in run.containers.iter().filter(|c| c.finished.is_none()) {
                    pods::signal(container, if stop { "STOP" } else { "CONT" });
                }
            }
        };
        storage::snapshot(&self.client, &self.root, &mut freeze).await?;
        Ok(())
    }

    async fn renew_lease(&self) -> Result<(), kube::Error> {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40,
                     "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
        });
        apply::apply(&self.client, &lease, apply::Mode::Apply)
            .await
            .map(|_| ())
    }

    async fn bind(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name_any(), "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        let request = http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{}/binding",
            pod.name_any()
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).expect("binding"))
        .expect("request");
        if let Err(err) = self.client.request_text(request).await {
            self.note(&format!("binding {namespace}/{}: {err}", pod.name_any()));
        }
        Ok(())
    }

    /// A stable loopback address for a pod name, unique among the node's pods.
    fn address_of(&mut self, pod: &Pod) -> String {
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        if let Some(ip) = self.addresses.get(&key) {
            return ip.clone();
        }
        let mut hash: u32 = 2_166_136_261;
        for byte in key.bytes() {
            hash = (hash ^ u32::from(byte)).wrapping_mul(16_777_619);
        }
        let taken: BTreeSet<&String> = self.addresses.values().collect();
        let ip = (0..)
            .map(|n: u32| {
                let h = hash.wrapping_add(n);
                format!(
                    "127.{}.{}.{}",
                    1 + h % 250,
                    (h >> 8) % 256,
                    1 + (h >> 16) % 254
                )
            })
            .find(|ip| !taken.contains(ip))
            .expect("an address");
        self.addresses.insert(key, ip.clone());
        ip
    }

    /// The hosts files: `hosts` holds every qualified name (`<hostname>.<subdomain>.
    /// <namespace>.svc…`, `<service>.<namespace>.svc…`); `hosts.d/<namespace>` adds the
    /// short names a pod of that namespace resolves through its DNS search path
    /// (`<hostname>.<subdomain>`, `<service>`), which other namespaces must not see. Each
    /// is rewritten in place, so running pods see new entries.
    async fn write_hosts(&mut self, pods: &[Pod]) -> Result<(), kube::Error> {
        let mut qualified = String::from(
            "127.0.0.1 localhost kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local\n",
        );
        let mut short: BTreeMap<String, String> = BTreeMap::new();
        let mut ready_ips: Vec<(&Pod, String)> = Vec::new();
        for pod in pods {
            let namespace = pod.namespace().unwrap_or_default();
            short.entry(namespace.clone()).or_default();
            let Some(ip) = self
                .addresses
                .get(&format!("{namespace}/{}", pod.name_any()))
            else {
                continue;
            };
            let spec = pod.spec.clone().unwrap_or_default();
            let host = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
            let local = short.entry(namespace.clone()).or_default();
            let _ = write!(local, "{ip} {}", pod.name_any());
            if let Some(sub) = &spec.subdomain {
                let _ = write!(local, " {host}.{sub}");
                let _ = writeln!(
                    qualified,
                    "{ip} {host}.{sub}.{namespace} {host}.{sub}.{namespace}.svc {host}.{sub}.{namespace}.svc.cluster.local"
                );
            }
            local.push('\n');
            ready_ips.push((pod, ip.clone()));
        }
        let services: Api<Service> = Api::all(self.client.clone());
        for service in services.list(&ListParams::default()).await?.items {
            let namespace = service.namespace().unwrap_or_default();
            let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()) else {
                continue;
            };
            let chosen = ready_ips.iter().find(|(pod, _)| {
                pod.namespace().as_deref() == Some(namespace.as_str())
                    && selector.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
            });
            if let Some((_, ip)) = chosen {
                let name = service.name_any();
                let _ = writeln!(
                    qualified,
                    "{ip} {name}.{namespace} {name}.{namespace}.svc {name}.{namespace}.svc.cluster.local"
                );
                let _ = writeln!(short.entry(namespace).or_default(), "{ip} {name}");
            }
        }
        write_in_place(&self.hosts, &qualified);
        for (namespace, local) in short {
            write_in_place(
                &self.namespace_hosts(&namespace),
                &format!("{local}{qualified}"),
            );
        }
        Ok(())
    }

    /// The hosts file of the pods of `namespace`.
    fn namespace_hosts(&self, namespace: &str) -> PathBuf {
        self.root.join("hosts.d").join(namespace)
    }

    /// Everything for one pod bound to this node.
    async fn tend(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let uid = pod.uid().unwrap_or_default();
        let api = pods::pods_api(&self.client, pod);
        if pod.metadata.deletion_timestamp.is_some() {
            let done = match self.runs.get_mut(&uid) {
                None => true,
                Some(run) => {
                    let grace = pod
                        .metadata
                        .deletion_grace_period_seconds
                        .unwrap_or(30)
                        .max(0);
                    stop(run, Duration::from_secs(grace as u64)).await
                }
            };
            if done {
                if let Some(run) = self.runs.remove(&uid) {
                    self.report(pod, &run).await;
                }
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let _ = api.delete(&pod.name_any(), &params).await;
            }
            return Ok(());
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if !self.runs.contains_key(&uid) {
            if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                return Ok(());
            }
            let ip = self.address_of(pod);
            let pod_dir = self.root.join("pods").join(&uid);
            let volumes = match pods::prepare_volumes(&self.client, pod, &pod_dir).await {
                Ok(volumes) => volumes,
                Err(why) => {
                    self.pending(pod, &why).await;
                    return Ok(());
                }
            };
            let spec = pod.spec.clone().unwrap_or_default();
            let make = |c: &Container| new_run(c, &pod_dir);
            let run = PodRun {
                name: pod.name_any(),
                ip,
                volumes,
                init: spec.init_containers.iter().flatten().map(make).collect(),
                containers: spec.containers.iter().map(make).collect(),
                stopping: None,
                started: jiff::Timestamp::now(),
                reported: serde_json::Value::Null,
            };
            self.note(&format!(
                "starting {}/{} at {}",
                pod.namespace().unwrap_or_default(),
                run.name,
                run.ip
            ));
            self.runs.insert(uid.clone(), run);
        }
        self.supervise(pod).await;
        if let Some(run) = self.runs.get(&uid) {
            let status = status_of(pod, run);
            if status != run.reported {
                let patch = serde_json::json!({"status": status});
                match api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        if let Some(run) = self.runs.get_mut(&uid) {
                            run.reported = status;
                        }
                    }
                    Err(err) => self.note(&format!("status of {}: {err}", pod.name_any())),
                }
            }
        }
        Ok(())
    }

    async fn report(&self, pod: &Pod, run: &PodRun) {
        let patch = serde_json::json!({"status": status_of(pod, run)});
        let _ = pods::pods_api(&self.client, pod)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
    }

    /// A pod whose volumes or environment cannot be made yet: Pending, saying why.
    async fn pending(&mut self, pod: &Pod, why: &str) {
        let containers: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                serde_json::json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                 "restartCount": 0, "started": false,
                 "state": {"waiting": {"reason": "ContainerCreating", "message": why}}})
            })
            .collect();
        let status = serde_json::json!({"status": {"phase": "Pending", "hostIP": "127.0.0.1",
            "containerStatuses": containers}});
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone());
        let same = serde_json::to_value(current).ok()
            == Some(status["status"]["containerStatuses"].clone());
        if !same {
            self.note(&format!("{} waits: {why}", pod.name_any()));
            let _ = pods::pods_api(&self.client, pod)
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await;
        }
    }

    /// Starts, reaps, restarts and probes the pod's containers.
    async fn supervise(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let Some(mut run) = self.runs.remove(&uid) else {
            return;
        };
        let pod_dir = self.root.join("pods").join(&uid);

        // Init containers, one after the other, each to success.
        let mut init_done = true;
        for (index, container) in spec.init_containers.iter().flatten().enumerate() {
            let state = &mut run.init[index];
            reap(state, container).await;
            match &state.finished {
                Some(f) if f.exit_code == 0 => continue,
                Some(_) if restart_policy == "Never" => {
                    init_done = false;
                    break;
                }
                Some(_) | None => {
                    if state.child.is_none() && state.restart_at.is_none_or(|t| Instant::now() >= t)
                    {
                        if state.finished.is_some() {
                            state.restarts += 1;
                        }
                        self.launch(pod, container, &pod_dir, RunRef::Init(index), &mut run)
                            .await;
                    }
                    init_done = false;
                    break;
                }
            }
        }
        if init_done {
            for (index, container) in spec.containers.iter().enumerate() {
                reap(&mut run.containers[index], container).await;
                let state = &run.containers[index];
                let restart = match &state.finished {
                    None => state.child.is_none(),
                    Some(f) => match restart_policy.as_str() {
                        "Always" => true,
                        "OnFailure" => f.exit_code != 0,
                        _ => false,
                    },
                };
                if restart && run.stopping.is_none() {
                    let state = &mut run.containers[index];
                    let backoff = Duration::from_secs(1u64 << state.restarts.min(4))
                        .min(Duration::from_secs(10));
                    match state.restart_at {
                        None if state.finished.is_some() => {
                            state.restart_at = Some(Instant::now() + backoff)
                        }
                        Some(t) if Instant::now() < t => {}
                        _ => {
                            if state.finished.is_some() {
                                state.restarts += 1;
                            }
                            state.restart_at = None;
                            self.launch(pod, container, &pod_dir, RunRef::Main(index), &mut run)
                                .await;
                        }
                    }
                }
                // Readiness.
                let state = &mut run.containers[index];
                if state.child.is_some() && Instant::now() >= state.next_probe {
                    match &container.readiness_probe {
                        None => state.ready = true,
                        Some(probe) => {
                            let period = probe.period_seconds.unwrap_or(10).clamp(1, 2) as u64;
                            state.next_probe = Instant::now() + Duration::from_secs(period);
                            state.ready = pods::probe(probe, state, container, &run.ip).await;
                        }
                    }
                } else if state.child.is_none() {
                    state.ready = false;
                }
            }
        }
        self.runs.insert(uid, run);
    }

    async fn launch(
        &mut self,
        pod: &Pod,
        container: &Container,
        pod_dir: &Path,
        which: RunRef,
        run: &mut PodRun,
    ) {
        let (ip, volumes) = (run.ip.clone(), run.volumes.clone());
        let ip = ip.as_str();
        let volumes = &volumes;
        let image = container.image.clone().unwrap_or_default();
        let state = match which {
            RunRef::Init(i) => &mut run.init[i],
            RunRef::Main(i) => &mut run.containers[i],
        };
        let Some(program) = images::program_for(&image, &self.bin, DEFAULT_MAJOR) else {
            state.waiting = Some((
                "ErrImagePull".into(),
                format!("the local node has no program for image {image}"),
            ));
            return;
        };
        let mut env = match pods::environment(&self.client, pod, container, ip).await {
            Ok(env) => env,
            Err(why) => {
                state.waiting = Some(("CreateContainerConfigError".into(), why));
                return;
            }
        };
        let defaults = [
            ("PATH", program.path.clone()),
            (
                "HOSTNAME",
                pod.spec
                    .as_ref()
                    .and_then(|s| s.hostname.clone())
                    .unwrap_or_else(|| pod.name_any()),
            ),
            ("HOME", "/tmp".into()),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT", self.api_port.to_string()),
            ("POD_IP", ip.to_string()),
        ];
        for (key, value) in defaults {
            if !env.iter().any(|(k, _)| k == key) {
                env.push((key.to_string(), value));
            }
        }
        if program.entrypoint.is_some() {
            // There is no image filesystem: PostgreSQL's data must be on a volume, never on
            // the node's own disk.
            let data = env
                .iter()
                .find(|(k, _)| k == "PGDATA")
                .map_or("/var/lib/postgresql/data", |(_, v)| v.as_str());
            let on_volume = container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| Path::new(data).starts_with(&m.mount_path));
            if !on_volume {
                state.waiting = Some((
                    "RunContainerError".into(),
                    format!("the local node runs PostgreSQL only with PGDATA ({data}) on a volume"),
                ));
                return;
            }
        }
        state.user = pods::user_of(pod, container, &program);
        state.command = Some(pods::command_line(container, &program));
        state.env = env.clone();
        let launch = pods::Launch {
            pod,
            container,
            program: &program,
            volumes,
            pod_dir,
            hosts_file: &self.namespace_hosts(&pod.namespace().unwrap_or_default()),
            env,
        };
        if let Err(err) = pods::start(&launch, state) {
            state.waiting = Some(("RunContainerError".into(), err.to_string()));
        }
    }
}

/// Replaces a file's content keeping the file (truncate and write): bind mounts of it see
/// the change.
fn write_in_place(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("hosts dir");
    }
    let mut file = fs::File::create(path).expect("hosts");
    file.write_all(text.as_bytes()).expect("hosts");
}

enum RunRef {
    Init(usize),
    Main(usize),
}

fn new_run(container: &Container, pod_dir: &Path) -> pods::Run {
    let dir = pod_dir.join("containers").join(&container.name);
    let _ = fs::create_dir_all(&dir);
    pods::Run {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        child: None,
        pid: None,
        restarts: 0,
        started_at: None,
        finished: None,
        waiting: None,
        ready: false,
        next_probe: Instant::now(),
        restart_at: None,
        log: dir.join("log"),
        message_file: dir.join("termination-log"),
        command: None,
        env: Vec::new(),
        user: (0, 0),
    }
}

/// Notes the end of a container whose process exited.
async fn reap(state: &mut pods::Run, container: &Container) {
    let Some(child) = state.child.as_mut() else {
        return;
    };
    if let Ok(Some(status)) = child.try_wait() {
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(9)
        });
        state.finished = Some(pods::finished(state, container, code));
        state.child = None;
        state.ready = false;
    }
}

/// Asks the containers to stop (their image's stop signal), and kills them when `grace` has
/// passed; true once all have ended.
async fn stop(run: &mut PodRun, grace: Duration) -> bool {
    let started = *run.stopping.get_or_insert_with(|| {
        for c in run.containers.iter().chain(run.init.iter()) {
            pods::signal(c, images::stop_signal(&c.image));
        }
        Instant::now()
    });
    if started.elapsed() >= grace {
        kill_all(run).await;
    }
    let mut all_done = true;
    for c in run.containers.iter_mut().chain(run.init.iter_mut()) {
        if let Some(child) = c.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    c.finished = Some(pods::Finished {
                        exit_code: status.code().unwrap_or(137),
                        message: String::new(),
                        at: jiff::Timestamp::now(),
                        started: c.started_at.unwrap_or_else(jiff::Timestamp::now),
                    });
                    c.child = None;
                }
                _ => all_done = false,
            }
        }
    }
    all_done
}

async fn kill_all(run: &mut PodRun) {
    for c in run.containers.iter_mut().chain(run.init.iter_mut()) {
        pods::signal(c, "KILL");
        if let Some(child) = c.child.as_mut() {
            let _ = child.kill().await;
        }
        c.child = None;
    }
}

fn container_status(state: &pods::Run) -> serde_json::Value {
    let id = state
        .pid
        .map(|p| format!("local://{p}"))
        .unwrap_or_default();
    let terminated = |f: &pods::Finished| {
        serde_json::json!({"terminated": {
            "exitCode": f.exit_code,
            "reason": if f.exit_code == 0 { "Completed" } else { "Error" },
            "message": f.message, "startedAt": f.started.to_string(), "finishedAt": f.at.to_string(),
            "containerID": id}})
    };
    let (state_json, last) = match (&state.child, &state.finished, &state.waiting) {
        (Some(_), previous, _) => (
            serde_json::json!({"running": {"startedAt": state.started_at.map(|t| t.to_string())}}),
            previous.as_ref().map(terminated),
        ),
        (None, _, Some((reason, message))) => (
            serde_json::json!({"waiting": {"reason": reason, "message": message}}),
            state.finished.as_ref().map(terminated),
        ),
        (None, Some(f), None) if state.restart_at.is_some() => (
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting {}", state.name)}}),
            Some(terminated(f)),
        ),
        (None, Some(f), None) => (terminated(f), None),
        (None, None, None) => (
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}}),
            None,
        ),
    };
    serde_json::json!({
        "name": state.name, "image": state.image, "imageID": format!("local://{}", state.image),
        "containerID": id, "ready": state.ready, "started": state.child.is_some(),
        "restartCount": state.restarts, "state": state_json,
        "lastState": last.unwrap_or_else(|| serde_json::json!({})),
    })
}

/// The pod's status as a kubelet reports it.
fn status_of(pod: &Pod, run: &PodRun) -> serde_json::Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let all_finished = run
        .containers
        .iter()
        .all(|c| c.child.is_none() && c.finished.is_some() && c.restart_at.is_none());
    let init_failed = restart_policy == "Never"
        && run
            .init
            .iter()
            .any(|c| c.finished.as_ref().is_some_and(|f| f.exit_code != 0));
    let phase = if init_failed {
        "Failed"
    } else if all_finished && restart_policy != "Always" {
        if run
            .containers
            .iter()
            .all(|c| c.finished.as_ref().is_some_and(|f| f.exit_code == 0))
        {
            "Succeeded"
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else if run
        .containers
        .iter()
        .any(|c| c.child.is_some() || c.finished.is_some())
    {
        "Running"
    } else {
        "Pending"
    };
    let ready = phase == "Running" && run.containers.iter().all(|c| c.ready);
    let initialized = run
        .init
        .iter()
        .all(|c| c.finished.as_ref().is_some_and(|f| f.exit_code == 0));
    let now = jiff::Timestamp::now().to_string();
    let keep_time = |type_: &str, status: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == status))
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_else(|| now.clone())
    };
    let condition = |type_: &str, value: bool| {
        let status = if value { "True" } else { "False" };
        serde_json::json!({"type": type_, "status": status, "lastTransitionTime": keep_time(type_, status)})
    };
    let succeeded_or_failed = matches!(phase, "Succeeded" | "Failed");
    serde_json::json!({
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": run.ip, "podIPs": [{"ip": run.ip}],
        "startTime": run.started.to_string(),
        "conditions": [
            condition("PodReadyToStartContainers", !succeeded_or_failed),
            condition("Initialized", initialized),
            condition("ContainersReady", ready),
            condition("Ready", ready),
            condition("PodScheduled", true),
        ],
        "initContainerStatuses": run.init.iter().map(container_status).collect::<Vec<_>>(),
        "containerStatuses": run.containers.iter().map(container_status).collect::<Vec<_>>(),
    })
}

/// The address the node gave a running pod (empty when it runs nowhere yet).
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}
