//! A throwaway S3 server: `s3s-fs` (the S3 wire protocol with SigV4 authentication, stored in
//! a temporary directory) on a free port, with its own keys and one bucket. Killed and
//! deleted on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aws_sdk_s3::config::{Credentials, Region};
use tempfile::TempDir;

use super::{find_program, free_port, unique_suffix, wait_for_port};

/// A running s3s-fs server with one bucket.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    root: TempDir,
    port: u16,
    access_key: String,
    secret_key: String,
    bucket: String,
}

impl S3Server {
    /// Starts s3s-fs with keys of its own and creates the bucket `test-bucket`.
    pub async fn start() -> Self {
        let access_key = format!("AK{}", unique_suffix().replace('-', ""));
        let secret_key = format!("SK-{}", unique_suffix());
        Self::start_with(&access_key, &secret_key, "test-bucket").await
    }

    /// Starts s3s-fs accepting the given keys and creates `bucket`.
    pub async fn start_with(access_key: &str, secret_key: &str, bucket: &str) -> Self {
        let binary = find_program(
            "s3s-fs",
            "PGBACKUP_TEST_S3S_FS",
            &[std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cargo/bin/s3s-fs")],
        )
        .expect("s3s-fs not found: `cargo install s3s-fs@0.14.1 --features binary` or set PGBACKUP_TEST_S3S_FS");
        let root = tempfile::Builder::new()
            .prefix("pgbackup-test-s3-")
            .tempdir()
            .expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", access_key, "--secret-key", secret_key])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            if wait_for_port(port, Duration::from_secs(20))
                && child.try_wait().ok().flatten().is_none()
            {
                let server = S3Server {
                    child,
                    root,
                    port,
                    access_key: access_key.into(),
                    secret_key: secret_key.into(),
                    bucket: bucket.into(),
                };
                server
                    .client()
                    .create_bucket()
                    .bucket(&server.bucket)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("cannot create the test bucket: {e:?}"));
                return server;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start");
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Name of the bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key id the server accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret access key the server accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The standard AWS environment variables that point a client at this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Where s3s-fs keeps the objects (`<root>/<bucket>/<key>`).
    pub fn storage_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// The keys of the objects in the bucket under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list objects");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// An S3 client for this server with its keys.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with_keys(&self.access_key, &self.secret_key)
    }

    /// An S3 client for this server with other keys (to test refused credentials).
    pub fn client_with_keys(&self, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(self.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "pgbackup-test",
            ))
            .force_path_style(true)
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
