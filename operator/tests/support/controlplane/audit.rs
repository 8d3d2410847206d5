//! What ServiceAccounts asked of the API server, from its audit log (metadata level,
//! ServiceAccounts only): which calls the operator and the Jobs it starts made, and which
//! were refused. A refusal of the operator's call is a rule missing from the chart.

use std::{collections::BTreeSet, path::Path};

/// The audit policy the API server runs with: request metadata of ServiceAccounts (the
/// operator, agent pods, tenants), nothing of anyone else.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
"#;

/// One request, as RBAC sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// The id of the token it came with ([`token_id`]).
    pub token: String,
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// `<resource>` or `<resource>/<subresource>`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub message: String,
}

impl Request {
    /// Refused for want of a permission: by RBAC, or by admission checking one
    /// (OwnerReferencesPermissionEnforcement). Creating in a namespace being deleted, or
    /// beyond a ResourceQuota, is refused too, for every user; that is not a missing rule.
    pub fn forbidden(&self) -> bool {
        self.code == 403
            && !self.message.contains("because it is being terminated")
            && !self.message.contains("exceeded quota")
    }

    /// `(group, resource, verb)`.
    pub fn call(&self) -> (String, String, String) {
        (self.group.clone(), self.resource.clone(), self.verb.clone())
    }
}

/// Every request in the audit log at `path` so far.
pub fn requests(path: &Path) -> Vec<Request> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        // A watch is audited when it starts, and again only when it ends.
        .filter(|event| {
            event["stage"] == "ResponseComplete"
                || (event["stage"] == "ResponseStarted" && event["verb"] == "watch")
        })
        .map(|event| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let object = &event["objectRef"];
            let resource = match object["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", text(&object["resource"])),
                None => text(&object["resource"]),
            };
            let credential = &event["user"]["extra"]["authentication.kubernetes.io/credential-id"];
            Request {
                user: text(&event["user"]["username"]),
                token: text(&credential[0])
                    .strip_prefix("JTI=")
                    .unwrap_or_default()
                    .to_string(),
                verb: text(&event["verb"]),
                group: text(&object["apiGroup"]),
                resource,
                namespace: text(&object["namespace"]),
                name: text(&object["name"]),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                message: text(&event["responseStatus"]["message"]),
            }
        })
        .collect()
}

/// The calls among `requests`.
pub fn calls<'a>(
    requests: impl IntoIterator<Item = &'a Request>,
) -> BTreeSet<(String, String, String)> {
    requests.into_iter().map(Request::call).collect()
}

/// The id (`jti`) of a ServiceAccount token, as the audit log names it.
pub fn token_id(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&base64url(payload)).expect("the token's claims");
    claims["jti"].as_str().expect("jti").to_string()
}

/// Decodes unpadded base64url.
fn base64url(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        other => panic!("not base64url: {other}"),
    };
    let (mut bits, mut held, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | u32::from(value(c));
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    out
}
