//! Command-line options that say which repository to use, shared by every agent command.

use clap::Args;

use crate::repository::{KeyError, Keys, Location, S3Options, Store};

use super::AgentError;

/// Which repository, and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct RepositoryArgs {
    /// The repository: `s3://bucket/prefix` or `file:///path`.
    #[arg(long, env = "PGBACKUP_REPOSITORY", value_name = "URL")]
    pub repository: String,

    /// Name of the database server inside the repository (the operator uses
    /// `<namespace>-<statefulset>`).
    #[arg(long, env = "PGBACKUP_SERVER", default_value = "default")]
    pub server: String,

    /// Endpoint URL of an S3-compatible service. Default: AWS S3.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region. Default: the AWS configuration's, else us-east-1.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// Path-style S3 addressing (`endpoint/bucket/key`), needed by most self-hosted stores.
    /// A value needs `=` (`--s3-force-path-style=false`), so that in an `archive_command`
    /// the WAL path after the bare flag is not taken for its value.
    #[arg(long, env = "PGBACKUP_S3_FORCE_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub s3_force_path_style: bool,

    /// Size of each S3 multipart part in MiB (5 or more). Memory used for an upload is about
    /// part size × concurrency.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(5..=512))]
    pub s3_part_size_mib: u32,

    /// S3 parts uploaded, or ranges downloaded, at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub s3_concurrency: u32,

    /// S3 server-side encryption: `AES256` or `aws:kms`.
    #[arg(long, value_parser = ["AES256", "aws:kms"])]
    pub s3_sse: Option<String>,

    /// KMS key id or ARN for `--s3-sse aws:kms`.
    #[arg(long, requires = "s3_sse")]
    pub s3_sse_kms_key_id: Option<String>,

    /// S3 storage class of new objects, e.g. STANDARD_IA.
    #[arg(long)]
    pub s3_storage_class: Option<String>,

    /// Client-side encryption key: age identities (`AGE-SECRET-KEY-1…`), one per line, as
    /// `pgbackup keygen` or `age-keygen` writes them. New objects are encrypted to the first;
    /// objects are read with any of them. Without it, new objects are stored unencrypted and
    /// encrypted ones cannot be read. Taken from the environment only, never a flag.
    #[arg(skip = std::env::var("PGBACKUP_ENCRYPTION_KEY").ok())]
    pub encryption_key: Option<String>,

    /// Read the encryption key from this file instead of `PGBACKUP_ENCRYPTION_KEY`.
    #[arg(long, env = "PGBACKUP_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<std::path::PathBuf>,

    /// With an encryption key, also read backups and WAL stored unencrypted (those written
    /// before encryption was turned on). Without it they are refused: anyone who can
    /// write to the repository can write unencrypted objects, only holders of the key
    /// encrypted ones.
    #[arg(long, env = "PGBACKUP_ALLOW_UNENCRYPTED")]
    pub allow_unencrypted: bool,
}

impl RepositoryArgs {
    /// The repository location from the URL.
    pub fn location(&self) -> Result<Location, AgentError> {
        Ok(self.repository.parse()?)
    }

    /// The S3 options from the flags.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.s3_region.clone().filter(|r| !r.is_empty()),
            force_path_style: self.s3_force_path_style,
            part_size: self.s3_part_size_mib as usize * 1024 * 1024,
            concurrency: self.s3_concurrency as usize,
            server_side_encryption: self.s3_sse.clone(),
            kms_key_id: self.s3_sse_kms_key_id.clone(),
            storage_class: self.s3_storage_class.clone(),
            credentials: None,
        }
    }

    /// The encryption key, when one is given (the file wins over the variable).
    pub fn keys(&self) -> Result<Option<Keys>, AgentError> {
        let text = match &self.encryption_key_file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| AgentError::Io {
                path: path.display().to_string(),
                source,
            })?,
            None => match self.encryption_key.as_deref() {
                Some(text) if !text.trim().is_empty() => text.to_string(),
                _ => return Ok(None),
            },
        };
        text.parse::<Keys>()
            .map(|keys| Some(keys.accepting_plaintext(self.allow_unencrypted)))
            .map_err(|err: KeyError| AgentError::Invalid(err.to_string()))
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Store, AgentError> {
        if self.server.is_empty() || self.server.contains('/') || self.server.starts_with('.') {
            return Err(AgentError::Invalid(format!(
                "invalid --server {:?}: a name without '/'",
                self.server
            )));
        }
        Ok(Store::open(&self.location()?, &self.s3_options()).await?)
    }
}
