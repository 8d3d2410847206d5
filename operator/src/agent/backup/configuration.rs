//! What makes a backup restorable besides its data, stored with it: the Kubernetes objects
//! the database runs as (`--configuration`, written by the operator), and the server's
//! configuration files the backup does not otherwise hold — those outside the data
//! directory (Bitnami keeps `postgresql.conf` and `pg_hba.conf` in `/opt/bitnami`), and
//! with a logical backup all of them. Both are read back with `pgbackup configuration`.

use std::path::Path;

use super::BackupContext;
use crate::{
    agent::AgentError,
    api::BackupMethod,
    repository::{NewObject, ObjectEntry, ObjectRole, store_object},
};

/// Largest configuration file read from the server or from `--configuration`.
const FILE_LIMIT: usize = 4 << 20;

/// The server settings naming configuration files.
const FILE_SETTINGS: [&str; 3] = ["config_file", "hba_file", "ident_file"];

/// Stores the configuration objects; what cannot be read is left out with a warning,
/// never failing the backup.
pub(super) async fn store(ctx: &BackupContext<'_>) -> Result<Vec<ObjectEntry>, AgentError> {
    let mut objects = Vec::new();
    if let Some(path) = &ctx.args.configuration {
        match read_limited(path) {
            Ok(bytes) => {
                let object = NewObject {
                    name: "kubernetes.yaml".into(),
                    role: ObjectRole::Configuration,
                    database: None,
                };
                objects.push(store_bytes(ctx, object, bytes).await?);
            }
            Err(why) => {
                tracing::warn!("the Kubernetes configuration is not stored with this backup: {why}")
            }
        }
    }
    for (setting, path) in server_files(ctx).await {
        match read_server_file(ctx.client, &path).await {
            Ok(bytes) => {
                let name = Path::new(&path)
                    .file_name()
                    .map_or_else(|| setting.clone(), |n| n.to_string_lossy().into_owned());
                let object = NewObject {
                    name: format!("server-{name}"),
                    role: ObjectRole::ServerFile,
                    database: None,
                };
                let mut entry = store_bytes(ctx, object, bytes).await?;
                entry.path = Some(path);
                objects.push(entry);
            }
            Err(why) => tracing::warn!(
                "{path} ({setting}) is not stored with this backup: {why} (reading it needs superuser or pg_read_server_files)"
            ),
        }
    }
    Ok(objects)
}

/// `(setting, path)` of each configuration file to store: outside the data directory, or
/// every one for a logical backup (which holds no file of the server).
async fn server_files(ctx: &BackupContext<'_>) -> Vec<(String, String)> {
    let rows = match ctx
        .client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
            &[&["data_directory", "config_file", "hba_file", "ident_file"].as_slice()],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!("cannot ask where the server's configuration files are: {err}");
            return Vec::new();
        }
    };
    let settings: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let data_directory = settings
        .iter()
        .find(|(name, _)| name == "data_directory")
        .map(|(_, value)| value.clone());
    if data_directory.is_none() {
        tracing::warn!(
            "the server does not say where its files are (pg_settings shows them to superusers and pg_read_all_settings): its configuration files are not stored with this backup"
        );
    }
    let logical = ctx.args.method == BackupMethod::Logical;
    wanted_files(&settings, data_directory.as_deref(), logical)
}

/// The files of `settings` to store: those not under `data_directory`, or all of them.
fn wanted_files(
    settings: &[(String, String)],
    data_directory: Option<&str>,
    all: bool,
) -> Vec<(String, String)> {
    let Some(data) = data_directory else {
        return Vec::new();
    };
    let inside = |path: &str| Path::new(path).starts_with(data);
    FILE_SETTINGS
        .iter()
        .filter_map(|setting| settings.iter().find(|(name, _)| name == setting))
        .filter(|(_, path)| !path.is_empty() && (all || !inside(path)))
        .cloned()
        .collect()
}

/// The file at `path` on the server, read over SQL.
async fn read_server_file(client: &tokio_postgres::Client, path: &str) -> Result<Vec<u8>, String> {
    let row = client
        .query_one("SELECT pg_read_binary_file($1)", &[&path])
        .await
        .map_err(|e| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        })?;
    let bytes: Vec<u8> = row.get(0);
    if bytes.len() > FILE_LIMIT {
        return Err(format!("larger than {} MiB", FILE_LIMIT >> 20));
    }
    Ok(bytes)
}

/// The local file at `path`, refused above [`FILE_LIMIT`].
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > FILE_LIMIT {
        return Err(format!(
            "{} is larger than {} MiB",
            path.display(),
            FILE_LIMIT >> 20
        ));
    }
    Ok(bytes)
}

async fn store_bytes(
    ctx: &BackupContext<'_>,
    object: NewObject,
    bytes: Vec<u8>,
) -> Result<ObjectEntry, AgentError> {
    Ok(store_object(
        ctx.store,
        &ctx.dir,
        object,
        std::io::Cursor::new(bytes),
        &ctx.options,
        &ctx.progress,
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(data: &str, config: &str) -> Vec<(String, String)> {
        [
            ("data_directory", data),
            ("config_file", config),
            ("hba_file", "/opt/bitnami/postgresql/conf/pg_hba.conf"),
            ("ident_file", &format!("{data}/pg_ident.conf")),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn files_outside_the_data_directory_are_stored_and_all_for_a_dump() {
        let data = "/bitnami/postgresql/data";
        let bitnami = settings(data, "/opt/bitnami/postgresql/conf/postgresql.conf");
        let names = |files: Vec<(String, String)>| -> Vec<String> {
            files.into_iter().map(|(name, _)| name).collect()
        };
        assert_eq!(
            names(wanted_files(&bitnami, Some(data), false)),
            ["config_file", "hba_file"],
            "pg_ident.conf is in the data directory, which a physical backup holds"
        );
        assert_eq!(
            names(wanted_files(&bitnami, Some(data), true)),
            ["config_file", "hba_file", "ident_file"]
        );
        // A directory whose name starts like the data directory's is not inside it.
        let near = settings(data, "/bitnami/postgresql/data-conf/postgresql.conf");
        assert!(names(wanted_files(&near, Some(data), false)).contains(&"config_file".into()));
        // Where the data directory is cannot be told: nothing is guessed.
        assert!(wanted_files(&bitnami, None, true).is_empty());
    }
}
