//! `repository`: where backups and WAL are stored (S3-compatible object storage or a volume),
//! and how objects are compressed and encrypted on the way.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where backups go. Exactly one of `s3` or `volume`. Inside it the layout is
/// `<prefix>/<serverName>/{base,logical,snapshots,wal}/…`, with a self-describing manifest
/// per backup, written last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.volume)").message("set exactly one of repository.s3 or repository.volume"))]
pub struct Repository {
    /// An S3 bucket (AWS S3 or any S3-compatible store: MinIO, Ceph RGW, R2, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Repository>,

    /// A PersistentVolumeClaim mounted into the backup Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeRepository>,

    /// Name of this database inside the repository. Default: `<namespace>-<statefulSet>`.
    /// Two databases must never share a name in one repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,252}$"))]
    pub server_name: Option<String>,

    /// Compression of every stored object.
    #[serde(default)]
    pub compression: Compression,

    /// Client-side encryption of every stored object with a key from a Secret. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// An S3 bucket and how to reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Repository {
    /// Bucket name. The bucket must exist.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,

    /// Key prefix inside the bucket, without leading or trailing slash (e.g. `prod/postgres`).
    #[serde(default)]
    pub prefix: String,

    /// Region of the bucket. Default: the AWS credential chain's region (`AWS_REGION`), or
    /// `us-east-1` for S3-compatible stores that ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Endpoint URL of an S3-compatible store (e.g. `https://minio.storage:9000`).
    /// Default: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,

    /// Address buckets as `<endpoint>/<bucket>` instead of `<bucket>.<endpoint>`; most
    /// self-hosted S3-compatible stores need this.
    #[serde(default)]
    pub force_path_style: bool,

    /// Secret with static S3 credentials. When unset the standard AWS credential chain of the
    /// Job's pod is used (e.g. IRSA web identity or EKS Pod Identity), but not the node's
    /// own role unless `nodeCredentials` allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<S3CredentialsSecret>,

    /// Without `credentialsSecret`, let agent pods fall back to the node's own AWS role
    /// (the EC2 instance metadata service). Off by default: every pod on the node has that
    /// role, so a backup object in any namespace could reach whatever it reaches — another
    /// namespace's backups under their `serverName` included. Prefer a role per
    /// ServiceAccount (IRSA, EKS Pod Identity) or a `credentialsSecret`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_credentials: bool,

    /// ServiceAccount of the namespace that the agent pods using this repository run under
    /// (backups, restores, restore tests, deletions, the WAL archiver), so that they reach
    /// S3 with the cloud identity bound to it: EKS IAM Roles for Service Accounts or Pod
    /// Identity. It must carry the label `pgbackup.io/agent-identity: "true"`: its owner
    /// lets pgbackup's agents use its identity, which a backup object alone cannot claim.
    /// Agent pods get no Kubernetes API token from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Server-side encryption requested from S3 for every object. Default: the bucket's
    /// own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,

    /// S3 storage class of stored objects (e.g. `STANDARD_IA`). Default: the bucket's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// A Secret with S3 access keys, and the keys inside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id in the Secret.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key of the secret access key in the Secret.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
    /// Key of an optional session token in the Secret (temporary credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

/// S3 server-side encryption settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.kmsKeyId) || self.algorithm == 'aws:kms'").message("kmsKeyId goes with algorithm aws:kms"))]
pub struct ServerSideEncryption {
    /// `AES256` (S3-managed keys) or `aws:kms` (a KMS key).
    pub algorithm: SseAlgorithm,
    /// KMS key id or ARN, with `aws:kms`. Default: the account's S3 KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// S3 server-side encryption algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SseAlgorithm {
    /// S3-managed keys (SSE-S3).
    #[serde(rename = "AES256")]
    Aes256,
    /// AWS KMS keys (SSE-KMS).
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// A PersistentVolumeClaim used as the repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRepository {
    /// Name of the PersistentVolumeClaim, in the same namespace as this object. Use a
    /// ReadWriteMany claim when backups and the WAL archiver run at the same time.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the volume, relative to its root. Empty: the root.
    #[serde(default)]
    pub path: String,
}

/// How stored objects are compressed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.level) || (self.algorithm == 'zstd' && self.level <= 19) || (self.algorithm == 'lz4' && self.level <= 12) || (self.algorithm == 'gzip' && self.level <= 9)"
).message("compression.level must be 1-19 for zstd, 1-12 for lz4, 1-9 for gzip, and unset for none"))]
pub struct Compression {
    /// Compression algorithm: `zstd` (best ratio for the speed), `lz4` (fastest), `gzip`
    /// (most compatible) or `none`.
    #[serde(default)]
    pub algorithm: CompressionAlgorithm,
    /// Compression level. Default: the algorithm's fast default (zstd 3, lz4 1, gzip 6).
    /// Ranges: zstd 1–19, lz4 1–12, gzip 1–9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 19))]
    pub level: Option<i32>,
}

/// Compression algorithm of stored objects. (Also the agent's `--compression`.)
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    #[default]
    Zstd,
    /// LZ4 frames.
    Lz4,
    /// gzip.
    Gzip,
    /// Store uncompressed.
    None,
}

/// Client-side encryption of stored objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Name of the Secret with the encryption key, in the same namespace as this object.
    /// Losing the key means losing the backups: keep a copy outside the cluster.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the encryption key in the Secret.
    #[serde(default = "default_encryption_key")]
    pub key: String,
    /// Also read backups and WAL stored unencrypted: those written before encryption was
    /// turned on for this repository. Off by default, as anyone who can write to the
    /// repository can write unencrypted objects (only holders of the key encrypted ones):
    /// a restore or restore test then refuses them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unencrypted: bool,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

fn default_encryption_key() -> String {
    "key".into()
}
