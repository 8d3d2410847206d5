//! Client-side encryption of stored objects in the age format (age-encryption.org/v1):
//! X25519 recipients, a fresh file key per object, ChaCha20-Poly1305 over 64 KiB chunks
//! (the STREAM construction), so every object is authenticated chunk by chunk and a cut or
//! altered object fails to read.
//!
//! The key is a list of age identities (`AGE-SECRET-KEY-1…`), one per line, `#` comments
//! allowed — the format of `age-keygen`'s output. New objects are encrypted to the first
//! identity; objects are read with any of them, which is how keys are rotated: put the new
//! key first and keep the old ones below it until no backup needs them.
//!
//! Here: the key, and decrypting a stream; the manifest MAC in `mac`, the encrypting stream in
//! `stream`.

mod mac;
mod stream;

use std::{fmt, io, str::FromStr, sync::Arc};

use age::{secrecy::ExposeSecret, x25519};
use tokio::io::BufReader;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::ObjectReader;

/// File name suffix of an encrypted WAL object.
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// Bytes read from the plaintext source per encryption step.
const READ_SIZE: usize = 256 * 1024;

/// The key text is not a list of age identities.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Nothing but blank lines and comments.
    #[error(
        "the encryption key is empty: it must hold an age identity (AGE-SECRET-KEY-1…), made with `pgbackup keygen` or `age-keygen`"
    )]
    Empty,
    /// A line that is not an X25519 identity.
    #[error(
        "line {line} of the encryption key is not an age identity (AGE-SECRET-KEY-1…): make one with `pgbackup keygen` or `age-keygen`; passphrases and SSH keys are not accepted"
    )]
    NotAnIdentity {
        /// 1-based line number.
        line: usize,
    },
}

/// The identities objects are encrypted to and decrypted with. With a key, objects stored
/// unencrypted are refused unless [`Keys::accepting_plaintext`] says otherwise: anyone who
/// can write to the repository could have put them there, and only holders of the key can
/// write encrypted ones.
#[derive(Clone)]
pub struct Keys {
    identities: Arc<Vec<x25519::Identity>>,
    plaintext: bool,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: the public key names which key this is.
        f.debug_struct("Keys")
            .field("recipient", &self.recipient().to_string())
            .field("identities", &self.identities.len())
            .finish()
    }
}

impl FromStr for Keys {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let mut identities = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = x25519::Identity::from_str(line)
                .map_err(|_| KeyError::NotAnIdentity { line: number + 1 })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            identities: Arc::new(identities),
            plaintext: false,
        })
    }
}

impl Keys {
    /// A new random identity, as `age-keygen` writes it: a comment with its public key,
    /// then the secret key.
    pub fn generate() -> String {
        let identity = x25519::Identity::generate();
        format!(
            "# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        )
    }

    /// These keys, also reading objects stored unencrypted when `accept` is set (a
    /// repository that had backups before encryption was turned on).
    pub fn accepting_plaintext(mut self, accept: bool) -> Self {
        self.plaintext = accept;
        self
    }

    /// Whether objects stored unencrypted are read.
    pub fn accepts_plaintext(&self) -> bool {
        self.plaintext
    }

    /// The public key new objects are encrypted to (the first identity's).
    pub fn recipient(&self) -> x25519::Recipient {
        self.identities[0].to_public()
    }

    /// Encrypts a stream: the age file is produced as the source is read.
    pub fn encrypt(&self, source: ObjectReader) -> io::Result<ObjectReader> {
        stream::encrypt_to(&self.recipient(), source)
    }

    /// Decrypts a stream. The header is read here, so a wrong key or an object that is not
    /// an age file fails before any plaintext is handed out; an altered or cut body fails
    /// the read where it is found.
    pub async fn decrypt(&self, source: ObjectReader) -> Result<ObjectReader, DecryptError> {
        let buffered = BufReader::with_capacity(READ_SIZE, source).compat();
        let decryptor =
            age::Decryptor::new_async_buffered(buffered)
                .await
                .map_err(|err| match err {
                    age::DecryptError::Io(err) => DecryptError::Read(err),
                    _ => DecryptError::NotEncrypted,
                })?;
        if decryptor.is_scrypt() {
            return Err(DecryptError::NotEncrypted);
        }
        let reader = decryptor
            .decrypt_async(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|err| match err {
                age::DecryptError::NoMatchingKeys => DecryptError::WrongKey,
                other => DecryptError::Header(other.to_string()),
            })?;
        Ok(Box::pin(reader.compat()))
    }
}

/// Why an object could not be opened for decryption.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// None of the identities is a recipient of the object.
    #[error(
        "none of the keys given opens it: it was encrypted with another key (after a key rotation, keep the old key in the Secret below the new one)"
    )]
    WrongKey,
    /// The object does not start with an age header.
    #[error("it is not an age-encrypted object")]
    NotEncrypted,
    /// The header is damaged.
    #[error("its encryption header is damaged: {0}")]
    Header(String),
    /// Reading the object failed.
    #[error("reading it failed: {0}")]
    Read(io::Error),
}

#[cfg(test)]
mod tests;
