//! Authenticating manifests: an HMAC under a key derived from the identities, so only
//! holders of the key can write a manifest that reads as theirs.

use age::{secrecy::ExposeSecret, x25519};

use super::Keys;

/// The key that authenticates manifests, derived from an identity (never the identity).
fn mac_key(identity: &x25519::Identity) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"pgbackup manifest authentication v1\0");
    hasher.update(identity.to_string().expose_secret().as_bytes());
    hasher.finalize().into()
}

/// HMAC-SHA-256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let inner = sha2::Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    sha2::Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

impl Keys {
    /// The MAC that authenticates a manifest's `bytes`: HMAC-SHA-256 under a key derived
    /// from the first identity. Only holders of the key can make one, so a manifest
    /// written by anyone else is told apart, even one whose objects are encrypted to the
    /// public key.
    pub fn manifest_mac(&self, bytes: &[u8]) -> String {
        crate::repository::hex_digest(&hmac_sha256(&mac_key(&self.identities[0]), bytes))
    }

    /// Whether `mac` is the MAC of `bytes` under any of the identities (rotated keys).
    pub fn manifest_mac_matches(&self, bytes: &[u8], mac: &str) -> bool {
        self.identities.iter().any(|identity| {
            let expected = crate::repository::hex_digest(&hmac_sha256(&mac_key(identity), bytes));
            // Compared whole, not stopping at the first difference.
            expected.len() == mac.len()
                && expected
                    .bytes()
                    .zip(mac.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}
