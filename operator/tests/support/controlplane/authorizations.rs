//! Every authorization check the API server makes for a ServiceAccount, as it makes it: a
//! webhook authorizer placed before RBAC that writes each SubjectAccessReview down and
//! answers "no opinion", so that RBAC decides as it would alone. Unlike the audit log, it
//! sees the checks made inside a request: the `create` a server-side apply that creates
//! needs, and the `update` on an owner's `finalizers` that admission asks for an owner
//! reference with `blockOwnerDeletion`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// One check, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// The id of the token the request came with.
    pub token: String,
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// `<resource>` or `<resource>/<subresource>`.
    pub resource: String,
}

impl Check {
    /// `(group, resource, verb)`.
    pub fn call(&self) -> (String, String, String) {
        (self.group.clone(), self.resource.clone(), self.verb.clone())
    }
}

/// Starts the recorder on a free loopback port, writing to `log`; returns the
/// `AuthorizationConfiguration` that puts it between the Node authorizer and RBAC.
pub fn start(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the authorization recorder");
    let port = listener.local_addr().expect("address").port();
    let log = Arc::new(Mutex::new(
        std::fs::File::create(log_path(dir)).expect("authorization log"),
    ));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, &log));
        }
    });
    let kubeconfig = dir.join("authorization-webhook.kubeconfig");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "recorder", "cluster": {"server": format!("http://127.0.0.1:{port}/")}}],
        "users": [{"name": "apiserver", "user": {}}],
        "contexts": [{"name": "recorder", "context": {"cluster": "recorder", "user": "apiserver"}}],
        "current-context": "recorder",
    });
    std::fs::write(
        &kubeconfig,
        serde_yaml::to_string(&config).expect("kubeconfig"),
    )
    .expect("webhook kubeconfig");
    format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthorizationConfiguration
authorizers:
- type: Node
  name: node
- type: Webhook
  name: recorder
  webhook:
    timeout: 5s
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: NoOpinion
    authorizedTTL: 1s
    unauthorizedTTL: 1s
    cacheAuthorizedRequests: false
    cacheUnauthorizedRequests: false
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: {}
    matchConditions:
    - expression: request.user.startsWith('system:serviceaccount:') && has(request.resourceAttributes)
- type: RBAC
  name: rbac
"#,
        kubeconfig.display()
    )
}

/// Where the checks are written, one JSON object per line.
fn log_path(dir: &Path) -> PathBuf {
    dir.join("authorizations.log")
}

/// Answers the SubjectAccessReviews of one connection.
fn serve(stream: TcpStream, log: &Mutex<std::fs::File>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(review) = serde_json::from_slice::<serde_json::Value>(&body) {
            let line = serde_json::to_string(&review["spec"]).unwrap_or_default();
            let mut log = log.lock().expect("log");
            let _ = writeln!(log, "{line}");
        }
        let answer = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","status":{"allowed":false}}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Every check recorded in `dir` so far.
pub fn checks(dir: &Path) -> Vec<Check> {
    let text = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|spec| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let attributes = &spec["resourceAttributes"];
            let resource = match attributes["subresource"].as_str() {
                Some(sub) if !sub.is_empty() => format!("{}/{sub}", text(&attributes["resource"])),
                _ => text(&attributes["resource"]),
            };
            let credential = &spec["extra"]["authentication.kubernetes.io/credential-id"];
            Check {
                user: text(&spec["user"]),
                token: text(&credential[0])
                    .strip_prefix("JTI=")
                    .unwrap_or_default()
                    .to_string(),
                verb: text(&attributes["verb"]),
                group: text(&attributes["group"]),
                resource,
            }
        })
        .collect()
}
