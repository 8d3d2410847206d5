//! Repository URLs: `s3://bucket/prefix` and `file:///path`.

use std::{fmt, path::PathBuf, str::FromStr};

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on a mounted volume or the local disk.
    File(PathBuf),
    /// A bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

/// A repository URL that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid repository URL {url:?}: {reason} (expected s3://bucket/prefix or file:///absolute/path)"
)]
pub struct LocationError {
    url: String,
    reason: &'static str,
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason| LocationError {
            url: url.to_string(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(err(
                    "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|part| part == ".." || part == ".") && !prefix.is_empty() {
                return Err(err("the prefix may not contain '.' or '..' segments"));
            }
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(err("the path must be absolute"));
            }
            Ok(Location::File(PathBuf::from(path)))
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "file://{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_file_urls() {
        assert_eq!(
            "s3://my-bucket/prod/pg/".parse(),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "prod/pg".into()
            })
        );
        assert_eq!(
            "s3://my-bucket".parse(),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "file:///var/backups".parse(),
            Ok(Location::File("/var/backups".into()))
        );
        assert_eq!(
            Location::S3 {
                bucket: "b12".into(),
                prefix: "x/y".into()
            }
            .to_string(),
            "s3://b12/x/y"
        );
    }

    #[test]
    fn rejects_what_cannot_work() {
        for url in [
            "http://x/y",
            "s3://",
            "s3://Upper/x",
            "file://relative/path",
            "s3://bucket/../x",
            "/plain/path",
        ] {
            let err = url.parse::<Location>().expect_err(url);
            assert!(
                err.to_string().contains(url),
                "the error names the URL: {err}"
            );
        }
    }
}
