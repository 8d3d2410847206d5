//! The streaming data path on its own: every compression algorithm, with and without
//! client-side encryption, round-trips byte for byte through a repository, in one chunk or
//! many, and the manifest's sizes and checksums match what was stored.

use std::sync::Arc;

use pgbackup::{
    api::CompressionAlgorithm,
    repository::{
        BackupDir, BackupKind, FsStore, Keys, NewObject, ObjectRole, ObjectStore, Progress,
        StoredFormat, StreamOptions, open_object, store_object,
    },
};
use tokio::io::AsyncReadExt;

/// Half compressible, half not: a realistic mix for a dump.
fn payload() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..3_000_000u32)
        .map(|i| {
            if i % 2 == 0 {
                (i % 251) as u8
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }
        })
        .collect()
}

#[tokio::test]
async fn every_algorithm_round_trips_in_one_or_many_chunks() {
    let data = payload();
    for algorithm in [
        CompressionAlgorithm::Zstd,
        CompressionAlgorithm::Lz4,
        CompressionAlgorithm::Gzip,
        CompressionAlgorithm::None,
    ] {
        for (max_chunk_size, encryption) in [
            (u64::MAX, None),
            (300_000, None),
            (u64::MAX, Some(keys())),
            (300_000, Some(keys())),
        ] {
            let encrypted = encryption.is_some();
            let root = tempfile::tempdir().expect("temp dir");
            let store = FsStore::new(root.path().to_path_buf());
            let dir = BackupDir {
                server: "s".into(),
                kind: BackupKind::Logical,
                backup_id: "20260101T000000Z".into(),
            };
            let options = StreamOptions {
                compression: algorithm,
                level: StreamOptions::default_level(algorithm),
                max_chunk_size,
                encryption: encryption.clone(),
                threads: if encrypted { 2 } else { 1 },
            };
            let progress = Arc::new(Progress::default());
            let object = NewObject {
                name: "db.dump".into(),
                role: ObjectRole::Database,
                database: Some("db".into()),
            };
            let entry = store_object(
                &store,
                &dir,
                object,
                std::io::Cursor::new(data.clone()),
                &options,
                &progress,
            )
            .await
            .expect("stored");
            assert_eq!(entry.size, data.len() as u64, "{algorithm:?}");
            let stored: u64 = store
                .list(&dir.prefix())
                .await
                .expect("list")
                .iter()
                .map(|o| o.size)
                .sum();
            assert_eq!(
                entry.stored_size(),
                stored,
                "{algorithm:?}: the manifest's sizes are what is stored"
            );
            if max_chunk_size != u64::MAX {
                assert!(entry.chunks.len() > 1, "{algorithm:?}: split into chunks");
            }
            let mut back = Vec::new();
            let format = StoredFormat {
                compression: algorithm,
                encrypted,
            };
            if encrypted {
                let first = store
                    .get(&dir.key(&entry.chunks[0].file))
                    .await
                    .expect("stored");
                let mut header = vec![0; 22];
                let mut first = first;
                first.read_exact(&mut header).await.expect("header");
                assert_eq!(header, b"age-encryption.org/v1\n", "{algorithm:?}");
                let missing = open_object(&store, &dir, &entry, format, None).await;
                assert!(missing.is_err(), "{algorithm:?}: no key, no data");
            }
            open_object(&store, &dir, &entry, format, encryption.as_ref())
                .await
                .expect("open")
                .read_to_end(&mut back)
                .await
                .expect("read");
            assert!(
                back == data,
                "{algorithm:?} with chunks of {max_chunk_size}, encrypted {encrypted}: content differs"
            );
        }
    }
}

fn keys() -> Keys {
    Keys::generate().parse().expect("a new key")
}
