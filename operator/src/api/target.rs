//! `target`: which PostgreSQL, running in which StatefulSet, a backup or restore works on.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The PostgreSQL database to back up or restore: a StatefulSet in the same namespace as
/// this object. Everything named here is looked up in that namespace only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sslMode) || !(self.sslMode in ['verify-ca', 'verify-full']) || has(self.sslRootCert)").message("sslMode verify-ca and verify-full need sslRootCert (the CA certificate to check the server's certificate against)"))]
pub struct DatabaseTarget {
    /// Name of the StatefulSet that runs PostgreSQL, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub stateful_set: String,

    /// Pod to connect to. Default: every pod of the StatefulSet is asked and the one of
    /// the role `prefer` names is used — the primary is the pod whose server answers
    /// `pg_is_in_recovery() = false`, wherever the chart (Bitnami's `architecture:
    /// replication`, Patroni) moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,

    /// Which server a backup reads from when neither `pod` nor `host` is set: `primary`
    /// (the pod not in recovery) or `standby` (a streaming standby, so that a backup does
    /// not load the primary; the primary when no standby answers). Two pods answering as
    /// primary at once are refused. WAL archiving always follows the primary, across a
    /// failover. Long logical dumps on a standby can be cancelled by recovery conflicts:
    /// raise `max_standby_streaming_delay` or set `hot_standby_feedback = on` there.
    #[serde(default)]
    pub prefer: ServerPreference,

    /// Host name to connect to. Default: `<pod>.<serviceName>`, from the pod and the
    /// StatefulSet's `serviceName`. It must lead to the StatefulSet's own pods — a pod
    /// (`<statefulset>-<n>.<serviceName>`) or a Service of this namespace whose selector
    /// picks them, as `name`, `name.<namespace>`, `name.<namespace>.svc` or
    /// `name.<namespace>.svc.cluster.local` — unless `allowExternalHost` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// Let `host` name a server that is not one of the StatefulSet's pods (another
    /// cluster domain, an IP address, a database outside Kubernetes). Off by default: the
    /// database's credentials are sent to that host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_external_host: bool,

    /// Let the server ask for the password in clear text or as an MD5 hash (`pg_hba.conf`
    /// method `password`, or `md5` with the password stored as MD5 — PostgreSQL 13's
    /// default `password_encryption`). Off by default: pgbackup sends the password only
    /// through SCRAM, which gives a server that is not the database neither the password
    /// nor a hash that is quick to crack. Better: store the password as SCRAM
    /// (`password_encryption = scram-sha-256`, then set it again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_weak_authentication: bool,

    /// TCP port of the PostgreSQL server.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Database to connect to for SQL commands (a logical backup may cover others, see
    /// `logical.databases`).
    #[serde(default = "default_database")]
    pub database: String,

    /// Secret (in this namespace) with the user name and password to connect with. For
    /// physical backups and WAL archiving the role needs the REPLICATION attribute and a
    /// `host replication` line in `pg_hba.conf`.
    pub credentials_secret: CredentialsSecret,

    /// TLS mode of the connection, as libpq's `sslmode`.
    #[serde(default)]
    pub ssl_mode: SslMode,

    /// Secret key (in this namespace) holding the PEM CA certificate(s) the server's
    /// certificate must chain to. Needed for `verify-ca` and `verify-full`; with `require`
    /// the chain is then checked too, as libpq does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<SecretKeyRef>,

    /// Name of the StatefulSet's volumeClaimTemplate that holds PGDATA.
    #[serde(default = "default_data_volume_claim_template")]
    pub data_volume_claim_template: String,

    /// Where PGDATA sits inside that volume, relative to its root (e.g. `pgdata` for the
    /// official image with `PGDATA=/var/lib/postgresql/data/pgdata`, `data` for Bitnami's).
    /// Empty: the root of the volume.
    #[serde(default)]
    pub data_sub_path: String,
}

/// The role of the server a backup reads from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServerPreference {
    /// The primary.
    #[default]
    Primary,
    /// A standby, else the primary.
    Standby,
}

/// A Secret holding database credentials, and the keys inside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// One key of a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// libpq's `sslmode`: whether and how the connection uses TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS only if the server insists.
    Allow,
    /// Use TLS if the server offers it.
    #[default]
    Prefer,
    /// Always use TLS; do not check the server certificate.
    Require,
    /// Always use TLS and check that the server certificate is signed by a trusted CA.
    VerifyCa,
    /// As `verify-ca`, and check that the host name matches the certificate.
    VerifyFull,
}

impl SslMode {
    /// The value as libpq spells it (`PGSSLMODE`).
    pub fn as_libpq(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

fn default_port() -> i32 {
    5432
}

fn default_database() -> String {
    "postgres".into()
}

fn default_data_volume_claim_template() -> String {
    "data".into()
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}
