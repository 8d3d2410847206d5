//! The operator as a user runs it: the `pgbackup operator` process, authenticated with a
//! token of the chart's ServiceAccount (so it has exactly the chart's RBAC), watching one
//! test's namespace, with a leader Lease of its own in the operator's namespace.
//!
//! When it is dropped at the end of a test, no request of its own, nor of the Jobs it
//! started, may have been refused for want of a permission (the API server's audit log):
//! every path a test takes proves the chart's rules.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{Api, api::PostParams};

use super::{ControlPlane, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, audit, authorizations, tail};
use crate::support::free_port;

/// A running operator; killed when dropped.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    log: PathBuf,
    /// The kubeconfig it runs with (the ServiceAccount's token).
    pub kubeconfig: PathBuf,
    /// Its `/healthz`, `/readyz` and `/metrics` address.
    pub listen: String,
    namespace: String,
    audit_log: PathBuf,
    /// The control plane's directory.
    dir: PathBuf,
    /// The id of its token: its requests in the audit log.
    token_id: String,
}

impl Operator {
    /// Starts an operator that reconciles the objects of `namespace`; `identity` names it in
    /// the Lease (`<namespace>` alone when one operator runs).
    pub async fn start(plane: &ControlPlane, namespace: &str, identity: &str) -> Self {
        Self::start_with(plane, namespace, identity, &[]).await
    }

    /// [`Operator::start`] with more command-line arguments.
    pub async fn start_with(
        plane: &ControlPlane,
        namespace: &str,
        identity: &str,
        arguments: &[&str],
    ) -> Self {
        let token = service_account_token(plane).await;
        let kubeconfig = plane.token_kubeconfig(&format!("operator-{identity}"), &token);
        let log = plane.dir.join(format!("operator-{identity}.log"));
        let listen = format!("127.0.0.1:{}", free_port());
        // In a mount namespace of its own with the node's /etc/hosts, as in a pod: the
        // operator reaches databases by their pod DNS names (online snapshots, the check
        // of a restored server).
        let hosts = crate::support::node::node_dir().join("hosts");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&hosts)
            .arg(env!("CARGO_BIN_EXE_pgbackup"))
            .args([
                "operator",
                "--log-format=text",
                &format!("--namespace={namespace}"),
                &format!("--lease-namespace={OPERATOR_NAMESPACE}"),
                &format!("--lease-name=pgbackup-{namespace}"),
                &format!("--identity={identity}"),
                &format!("--listen={listen}"),
                "--lease-seconds=5",
            ])
            .args(arguments)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,pgbackup=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("operator log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("operator log"),
            )
            .spawn()
            .expect("start pgbackup operator");
        Self {
            child,
            log,
            kubeconfig,
            listen,
            namespace: namespace.to_string(),
            audit_log: plane.dir.join("audit.log"),
            dir: plane.dir.clone(),
            token_id: audit::token_id(&token),
        }
    }

    /// The requests it made so far.
    pub fn requests(&self) -> Vec<audit::Request> {
        audit::requests(&self.audit_log)
            .into_iter()
            .filter(|r| r.token == self.token_id)
            .collect()
    }

    /// The value of one sample on its `/metrics` (name and labels as exposed), if shown.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.listen).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines().find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The authorization checks its requests needed so far ([`authorizations`]).
    pub fn authorizations(&self) -> Vec<authorizations::Check> {
        authorizations::checks(&self.dir)
            .into_iter()
            .filter(|c| c.token == self.token_id)
            .collect()
    }

    /// Its requests and those of the ServiceAccounts of its namespace (the Jobs it
    /// started; not the tests' tenant) refused for want of a permission.
    fn refused(&self) -> Vec<audit::Request> {
        let pods = format!("system:serviceaccount:{}:", self.namespace);
        let tenant = format!("{pods}tenant");
        audit::requests(&self.audit_log)
            .into_iter()
            .filter(|r| r.token == self.token_id || (r.user.starts_with(&pods) && r.user != tenant))
            .filter(audit::Request::forbidden)
            .collect()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Stops it at once (SIGKILL), as a node failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            return;
        }
        let refused = self.refused();
        assert!(
            refused.is_empty(),
            "requests refused for want of a permission: {refused:#?}"
        );
    }
}

/// A token of the chart's ServiceAccount, from the TokenRequest API, as the kubelet
/// would project it into the operator's pod.
pub async fn service_account_token(plane: &ControlPlane) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(plane.admin().await, OPERATOR_NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request)
        .await
        .expect("a token of the operator's ServiceAccount")
        .status
        .expect("token status")
        .token
}
