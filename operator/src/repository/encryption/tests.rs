//! Encrypted streams round-trip, a wrong, altered or cut object fails, and the key text is
//! checked and never printed.

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
