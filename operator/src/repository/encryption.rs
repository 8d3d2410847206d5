//! Client-side encryption of stored objects in the age format (age-encryption.org/v1):
//! X25519 recipients, a fresh file key per object, ChaCha20-Poly1305 over 64 KiB chunks
//! (the STREAM construction), so every object is authenticated chunk by chunk and a cut or
//! altered object fails to read.
//!
//! The key is a list of age identities (`AGE-SECRET-KEY-1…`), one per line, `#` comments
//! allowed — the format of `age-keygen`'s output. New objects are encrypted to the first
//! identity; objects are read with any of them, which is how keys are rotated: put the new
//! key first and keep the old ones below it until no backup needs them.

use std::{
    fmt, io,
    io::Write,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
};

use age::{secrecy::ExposeSecret, x25519};
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::ObjectReader;

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

    /// The MAC that authenticates a manifest's `bytes`: HMAC-SHA-256 under a key derived
    /// from the first identity. Only holders of the key can make one, so a manifest
    /// written by anyone else is told apart, even one whose objects are encrypted to the
    /// public key.
    pub fn manifest_mac(&self, bytes: &[u8]) -> String {
        super::hex_digest(&hmac_sha256(&mac_key(&self.identities[0]), bytes))
    }

    /// Whether `mac` is the MAC of `bytes` under any of the identities (rotated keys).
    pub fn manifest_mac_matches(&self, bytes: &[u8], mac: &str) -> bool {
        self.identities.iter().any(|identity| {
            let expected = super::hex_digest(&hmac_sha256(&mac_key(identity), bytes));
            // Compared whole, not stopping at the first difference.
            expected.len() == mac.len()
                && expected
                    .bytes()
                    .zip(mac.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// The public key new objects are encrypted to (the first identity's).
    pub fn recipient(&self) -> x25519::Recipient {
        self.identities[0].to_public()
    }

    /// Encrypts a stream: the age file is produced as the source is read.
    pub fn encrypt(&self, source: ObjectReader) -> io::Result<ObjectReader> {
        let recipient = self.recipient();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        let out = Output::default();
        let writer = encryptor.wrap_output(out.clone())?;
        Ok(Box::pin(Encrypting {
            source,
            writer: Some(writer),
            out,
            pending: Vec::new(),
            sent: 0,
            scratch: vec![0; READ_SIZE],
        }))
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

/// Where the age writer puts ciphertext until the reader hands it on.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads plaintext from the source, hands out ciphertext; memory stays at one read plus
/// one age chunk.
struct Encrypting {
    source: ObjectReader,
    writer: Option<age::stream::StreamWriter<Output>>,
    out: Output,
    /// Ciphertext taken from `out`, being handed out.
    pending: Vec<u8>,
    sent: usize,
    scratch: Vec<u8>,
}

impl AsyncRead for Encrypting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.sent < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.sent);
                buf.put_slice(&this.pending[this.sent..this.sent + n]);
                this.sent += n;
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.sent = 0;
            std::mem::swap(
                &mut this.pending,
                &mut this.out.0.lock().unwrap_or_else(PoisonError::into_inner),
            );
            if !this.pending.is_empty() {
                continue;
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(this.source.as_mut().poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if let Some(writer) = this.writer.take() {
                    writer.finish()?;
                }
            } else {
                writer.write_all(read.filled())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn read_all(mut reader: ObjectReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn keys() -> Keys {
        Keys::generate().parse().expect("generated key parses")
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn encrypted(keys: &Keys, data: &[u8]) -> Vec<u8> {
        let source: ObjectReader = Box::pin(std::io::Cursor::new(data.to_vec()));
        read_all(keys.encrypt(source).expect("encryptor"))
            .await
            .expect("encrypt")
    }

    async fn decrypted(keys: &Keys, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let source: ObjectReader = Box::pin(std::io::Cursor::new(data));
        let reader = keys.decrypt(source).await.map_err(|e| e.to_string())?;
        read_all(reader).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn round_trips_streams_of_every_size() {
        let keys = keys();
        for len in [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 3_000_000] {
            let data = plaintext(len);
            let sealed = encrypted(&keys, &data).await;
            assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
            assert!(
                sealed.len() > len,
                "authenticated: longer than the plaintext"
            );
            if len > 100 {
                assert!(!sealed.windows(64).any(|w| w == &data[..64]));
            }
            assert_eq!(decrypted(&keys, sealed).await.expect("decrypt"), data);
        }
    }

    #[tokio::test]
    async fn a_wrong_key_is_named_and_rotation_reads_old_objects() {
        let old = Keys::generate();
        let old_keys: Keys = old.parse().expect("old");
        let sealed = encrypted(&old_keys, b"rows of yesterday").await;
        let new = Keys::generate();
        let err = decrypted(&new.parse().expect("new"), sealed.clone())
            .await
            .expect_err("wrong key");
        assert!(err.contains("another key"), "{err}");
        let rotated: Keys = format!("{new}{old}").parse().expect("both");
        assert_eq!(
            decrypted(&rotated, sealed).await.expect("old key below"),
            b"rows of yesterday"
        );
        assert_eq!(
            rotated.recipient().to_string(),
            new.parse::<Keys>().expect("new").recipient().to_string(),
            "new objects go to the first key"
        );
    }

    #[tokio::test]
    async fn altered_cut_or_plain_objects_fail() {
        let keys = keys();
        let data = plaintext(200_000);
        let sealed = encrypted(&keys, &data).await;
        let mut altered = sealed.clone();
        let last = altered.len() - 10;
        altered[last] ^= 1;
        assert!(decrypted(&keys, altered).await.is_err());
        let cut = sealed[..sealed.len() - 70_000].to_vec();
        assert!(decrypted(&keys, cut).await.is_err());
        let err = decrypted(&keys, data).await.expect_err("plain");
        assert!(err.contains("not an age-encrypted object"), "{err}");
    }

    #[test]
    fn key_text_is_checked_and_never_printed() {
        assert!(matches!("".parse::<Keys>(), Err(KeyError::Empty)));
        assert!(matches!("# only\n\n".parse::<Keys>(), Err(KeyError::Empty)));
        let err = "# c\nhunter2\n".parse::<Keys>().expect_err("passphrase");
        assert!(matches!(err, KeyError::NotAnIdentity { line: 2 }));
        let text = Keys::generate();
        let keys: Keys = text.parse().expect("generated");
        let secret = text.lines().nth(1).expect("secret line");
        assert!(!format!("{keys:?}").contains(secret));
        assert!(format!("{keys:?}").contains("age1"));
    }
}
