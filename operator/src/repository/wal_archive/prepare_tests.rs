//! Hashing and compressing a WAL file in chunks gives the file's hash and a frame that
//! decompresses to it.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::{hash_and_compress, hex};

#[test]
fn a_file_is_hashed_and_compressed_whole_in_chunks() {
    // Chunks, a part of one and an empty file, on one thread and several.
    for (length, threads) in [(5 << 20 | 12345, 1), (3 << 20, 2), (100, 1), (0, 1)] {
        let mut file = tempfile::NamedTempFile::new().expect("temp");
        let data: Vec<u8> = (0..length)
            .map(|i: usize| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        file.write_all(&data).expect("write");
        let (sha256, size, compressed) =
            hash_and_compress(file.path(), 1, threads).expect("compress");
        assert_eq!(sha256, hex(&Sha256::digest(&data)));
        assert_eq!(size, length as u64);
        assert_eq!(zstd::decode_all(&compressed[..]).expect("decode"), data);
    }
}
