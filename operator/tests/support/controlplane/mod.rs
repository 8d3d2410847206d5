//! A real Kubernetes control plane for the tests: etcd, kube-apiserver (RBAC and Node
//! authorization, the default admission plugins plus OwnerReferencesPermissionEnforcement)
//! and kube-controller-manager (StatefulSet, Job, CronJob, Deployment, garbage collector,
//! namespace, service account, resource quota and volume controllers), built from their Go modules by
//! `.ci/fetch-controlplane`, started on free loopback ports in a directory of their own.
//!
//! One control plane serves all tests of a test binary ([`ControlPlane::shared`]): each test
//! works in a namespace of its own. It is installed as a user installs pgbackup: the
//! VolumeSnapshot CRDs, then `manifests/install.yaml` (the chart rendered by Helm's engine)
//! but for the operator's Deployment — tests run the operator themselves, authenticated with
//! the token of the chart's ServiceAccount ([`operator::Operator`]).
//!
//! The processes die with the test binary (`setpriv --pdeathsig`, tied to a thread that
//! lives as long as the binary); their directory is removed by the next run.

pub mod apply;
pub mod audit;
pub mod authorizations;
pub mod certs;
pub mod operator;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{free_port, wait_for_port};

/// The namespace the chart installs the operator's ServiceAccount and RBAC into.
pub const OPERATOR_NAMESPACE: &str = "pgbackup-system";
/// The chart's ServiceAccount (release name `pgbackup`).
pub const OPERATOR_ACCOUNT: &str = "pgbackup";

/// The controllers kube-controller-manager runs: what backups and restores meet on a cluster.
const CONTROLLERS: &[&str] = &[
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ephemeral-volume-controller",
    "endpointslice-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "resourcequota-controller",
];

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Where its certificates, logs, data and kubeconfigs live.
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The certificates.
    pub certs: certs::Certs,
    /// A kubeconfig of a cluster admin (group `system:masters`).
    pub admin_kubeconfig: PathBuf,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The control plane of this test binary, started and installed by the first caller.
    pub async fn shared() -> &'static ControlPlane {
        // kube's TLS runs on rustls with ring, as in the operator.
        let _ = rustls::crypto::ring::default_provider().install_default();
        SHARED
            .get_or_init(|| async {
                let plane = tokio::task::spawn_blocking(Self::start)
                    .await
                    .expect("control plane start-up");
                plane.wait_ready().await;
                plane.start_controller_manager();
                plane.install().await;
                let port = plane.server.rsplit(':').next().and_then(|p| p.parse().ok());
                crate::support::node::start(plane.admin_kubeconfig.clone(), port.expect("port"));
                plane
            })
            .await
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager; returns once the API
    /// server is ready.
    fn start() -> Self {
        let bin = binaries();
        remove_stale_dirs("pgbackup-controlplane-");
        // Not under /tmp: pods of the local node mount a private /tmp over it.
        let dir = PathBuf::from(format!(
            "/var/tmp/pgbackup-controlplane-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("certs")).expect("control plane dir");
        let certs = certs::make(&dir.join("certs"));

        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        spawn(
            &dir,
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name=default",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
        );
        assert!(
            wait_for_port(etcd_port, Duration::from_secs(30)),
            "etcd did not start:\n{}",
            tail(&dir.join("etcd.log"))
        );

        let api_port = free_port();
        let path = |p: &Path| p.display().to_string();
        fs::write(dir.join("audit-policy.yaml"), audit::POLICY).expect("audit policy");
        fs::write(dir.join("authorization.yaml"), authorizations::start(&dir))
            .expect("authorization configuration");
        spawn(
            &dir,
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", path(&certs.serving.cert)),
                format!("--tls-private-key-file={}", path(&certs.serving.key)),
                format!("--client-ca-file={}", path(&certs.ca)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    path(&certs.service_account_pub)
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    path(&certs.service_account_key)
                ),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // Node and RBAC, with a recorder of every check between them.
                format!(
                    "--authorization-config={}",
                    path(&dir.join("authorization.yaml"))
                ),
                // The defaults (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity,
                // ResourceQuota, StorageObjectInUseProtection, …) and the plugin that makes
                // owner references with blockOwnerDeletion need rights on the owner.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
                // The `kubernetes` Service cannot point at a loopback address.
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                format!(
                    "--audit-policy-file={}",
                    path(&dir.join("audit-policy.yaml"))
                ),
                format!("--audit-log-path={}", path(&dir.join("audit.log"))),
                "--audit-log-mode=blocking".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ]),
        );
        let server = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &certs.ca,
            &client_cert_user(&certs.admin),
        );
        let plane = ControlPlane {
            dir: dir.clone(),
            server,
            certs: certs.clone(),
            admin_kubeconfig,
        };
        assert!(
            wait_for_port(api_port, Duration::from_secs(60)),
            "kube-apiserver did not start:\n{}",
            plane.log_tail("kube-apiserver")
        );
        plane
    }

    /// Polls `/readyz` with the admin's certificate until the API server answers ok.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = self.admin().await;
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if client
                .request_text(request)
                .await
                .is_ok_and(|t| t.trim() == "ok")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not become ready:\n{}",
                self.log_tail("kube-apiserver")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts kube-controller-manager, with its own client certificate.
    fn start_controller_manager(&self) {
        let kubeconfig = self.dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &self.server,
            &self.certs.ca,
            &client_cert_user(&self.certs.controller_manager),
        );
        let path = |p: &Path| p.display().to_string();
        let bin = binaries();
        spawn(
            &self.dir,
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager")).args([
                format!("--kubeconfig={}", path(&kubeconfig)),
                format!("--authentication-kubeconfig={}", path(&kubeconfig)),
                format!("--authorization-kubeconfig={}", path(&kubeconfig)),
                format!("--controllers={}", CONTROLLERS.join(",")),
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    path(&self.certs.service_account_key)
                ),
                format!("--root-ca-file={}", path(&self.certs.ca)),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                // Pods and objects of finished tests go quickly.
                "--concurrent-gc-syncs=5".into(),
                "--v=1".into(),
            ]),
        );
    }

    /// A client of a tenant: a ServiceAccount `tenant` of `namespace` that may do anything
    /// with pgbackup objects there, and `get` only the Secrets in `readable`.
    pub async fn tenant(&self, namespace: &str, readable: &[&str]) -> Client {
        let admin = &self.admin().await;
        let mut rules = vec![serde_json::json!({
            "apiGroups": ["pgbackup.io"],
            "resources": ["postgresbackups", "backupschedules", "volumesnapshotbackups", "pointintimerestores"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        })];
        if !readable.is_empty() {
            rules.push(
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"],
                                          "verbs": ["get"], "resourceNames": readable}),
            );
        }
        let objects = serde_json::json!([
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "tenant", "namespace": namespace}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "tenant", "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
             "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}]},
        ]);
        for doc in objects.as_array().expect("objects") {
            apply::apply(admin, doc, apply::Mode::Apply)
                .await
                .expect("tenant RBAC");
        }
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin.clone(), namespace);
        let request = k8s_openapi::api::authentication::v1::TokenRequest::default();
        let token = accounts
            .create_token_request("tenant", &Default::default(), &request)
            .await
            .expect("tenant token")
            .status
            .expect("token")
            .token;
        self.client(&self.token_kubeconfig(&format!("tenant-{namespace}"), &token))
            .await
    }

    /// A client of the cluster admin.
    pub async fn admin(&self) -> Client {
        self.client(&self.admin_kubeconfig).await
    }

    /// A client with the credentials of `kubeconfig`.
    pub async fn client(&self, kubeconfig: &Path) -> Client {
        let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client configuration");
        Client::try_from(config).expect("client")
    }

    /// Writes a kubeconfig of this cluster for a user authenticated by `token`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server,
            &self.certs.ca,
            &serde_json::json!({"token": token}),
        );
        path
    }

    /// The VolumeSnapshot CRDs, then `manifests/install.yaml` without the operator's own
    /// workload; waits until every CRD is established.
    async fn install(&self) {
        let client = self.admin().await;
        let root = repository_root();
        let snapshot_crds = root.join("e2e/controlplane/volumesnapshot-crds");
        let mut files: Vec<PathBuf> = fs::read_dir(&snapshot_crds)
            .expect("e2e/controlplane/volumesnapshot-crds")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files.push(root.join("manifests/install.yaml"));
        for file in files {
            let text = fs::read_to_string(&file).expect("manifest");
            apply::apply_yaml(&client, &text, apply::Mode::Apply, |doc| {
                !matches!(
                    doc["kind"].as_str(),
                    Some("Deployment" | "PodDisruptionBudget" | "Service")
                )
            })
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", file.display()));
        }
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = crds.list(&Default::default()).await.expect("list CRDs");
            let waiting: Vec<String> = list
                .items
                .iter()
                .filter(|crd| {
                    !crd.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                })
                .map(|crd| crd.metadata.name.clone().unwrap_or_default())
                .collect();
            if waiting.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRDs not established: {waiting:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_for_admission_policy().await;
    }

    /// Waits until the API server enforces the chart's admission policy (it loads new
    /// policies in the background): a probe tenant's dry run that names a Secret it may not
    /// read is refused.
    async fn wait_for_admission_policy(&self) {
        let admin = self.admin().await;
        let namespace = test_namespace(&admin, "admission-probe").await;
        let tenant = self.tenant(&namespace, &[]).await;
        let probe = serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"method": "logical",
                     "target": {"statefulSet": "pg", "credentialsSecret": {"name": "unreadable"}},
                     "repository": {"volume": {"claimName": "backups"}}},
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while apply::apply(&tenant, &probe, apply::Mode::DryRun)
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "the admission policy is not enforced"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The requests of ServiceAccounts so far ([`audit`]).
    pub fn audited(&self) -> Vec<audit::Request> {
        audit::requests(&self.dir.join("audit.log"))
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_tail(&self, component: &str) -> String {
        tail(&self.dir.join(format!("{component}.log")))
    }
}

/// The workspace root.
pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory of the control plane binaries: `PGBACKUP_CONTROLPLANE_BIN`, else what
/// `.ci/fetch-controlplane` recorded in its cache.
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBACKUP_CONTROLPLANE_BIN") {
        return dir.into();
    }
    let cache = std::env::var_os("PGBACKUP_CONTROLPLANE_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/pgbackup/controlplane")
        },
        PathBuf::from,
    );
    let current = fs::read_to_string(cache.join("current")).unwrap_or_else(|_| {
        panic!(
            "no control plane in {}: run `bash .ci/setup` (it builds kube-apiserver, \
             kube-controller-manager and etcd once)",
            cache.display()
        )
    });
    PathBuf::from(current.trim())
}

/// Directories `/var/tmp/<prefix><pid>` of earlier runs whose test binary is gone.
pub fn remove_stale_dirs(prefix: &str) {
    let Ok(entries) = fs::read_dir("/var/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Starts `command` with its output in `<dir>/<name>.log`, from a thread that lives as
/// long as the test binary, under `setpriv --pdeathsig KILL`: the process dies with the
/// binary, also when a test panics or the run is interrupted.
pub fn spawn(dir: &Path, name: &str, command: &mut Command) -> u32 {
    let log = fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--pdeathsig", "KILL", "--"])
        .arg(command.get_program())
        .args(command.get_args())
        .envs(
            command
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    keeper_spawn(wrapped).id()
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from the keeper thread, which never ends: a parent-death signal fires
/// when the thread that started a process ends, so processes that must outlive a test
/// are started there.
fn keeper_spawn(command: Command) -> Child {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = KEEPER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut command, reply) in receiver {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    let program = command.get_program().to_string_lossy().into_owned();
    sender
        .lock()
        .expect("keeper")
        .send((command, reply))
        .expect("keeper thread");
    answer
        .recv()
        .expect("keeper thread")
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

fn client_cert_user(cert: &certs::ClientCert) -> serde_json::Value {
    serde_json::json!({
        "client-certificate": cert.cert.display().to_string(),
        "client-key": cert.key.display().to_string(),
    })
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &serde_json::Value) {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pgbackup-test", "cluster": {
            "server": server, "certificate-authority": ca.display().to_string()}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "pgbackup-test", "context": {"cluster": "pgbackup-test", "user": "user"}}],
        "current-context": "pgbackup-test",
    });
    fs::write(
        path,
        serde_yaml::to_string(&config).expect("kubeconfig yaml"),
    )
    .expect("kubeconfig");
}

/// The last 60 lines of a file.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Creates a namespace named `<prefix>-<n>` for one test and returns its name.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let namespace = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
    });
    apply::apply(client, &namespace, apply::Mode::Apply)
        .await
        .expect("test namespace");
    name
}
