//! A backup's manifest pinned to the SHA-256 its backup reported (`--expect-sha256`): read
//! again whole and accepted only byte for byte, so that whoever can write to the repository
//! cannot have a backup of their own restored.

use crate::{
    agent::AgentError,
    repository::{Manifest, Store},
};

/// The manifest of `listed`'s backup read again, whole, and accepted only if its bytes
/// have the SHA-256 recorded when the backup was made; the test then uses exactly what
/// was checked. The chunks it names carry their own digests, checked as they are read.
pub(crate) async fn expected_manifest(
    store: &Store,
    listed: &Manifest,
    sha256: &str,
) -> Result<Manifest, AgentError> {
    use crate::repository::ObjectStore;
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let dir = crate::repository::BackupDir {
        server: listed.server.clone(),
        kind: listed.kind,
        backup_id: listed.backup_id.clone(),
    };
    let key = dir.key(crate::repository::MANIFEST_FILE);
    let mut bytes = Vec::new();
    store
        .get(&key)
        .await?
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| AgentError::Io {
            path: key.clone(),
            source,
        })?;
    let found = crate::repository::hex_digest(&sha2::Sha256::digest(&bytes));
    if !found.eq_ignore_ascii_case(sha256) {
        return Err(AgentError::Corrupt(format!(
            "the manifest of backup {} is not the one written when it was made (SHA-256 {found}, expected {sha256}): something else wrote it; not restoring it",
            listed.backup_id
        )));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt(format!("{key}: {e}")))?;
    manifest
        .check(&listed.backup_id)
        .map_err(|reason| AgentError::Corrupt(format!("{key}: {reason}")))?;
    Ok(manifest)
}
