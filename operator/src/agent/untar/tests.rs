//! Unpacking gives back the tree `tar` packed, in each format; names that leave the target
//! and damaged or cut streams are refused.

use std::{os::unix::fs::MetadataExt, process::Command};

use super::{header::BLOCK, *};

/// A tree of files `tar -c` archives, with what `pg_basebackup` and GNU tar put in: a
/// long name, modes, an empty file, an empty directory, a symbolic link.
fn sample_tree(dir: &Path) {
    let deep = dir
        .join("base/16384")
        .join("x".repeat(60))
        .join("y".repeat(60));
    fs::create_dir_all(&deep).expect("test setup");
    fs::write(deep.join("long-named-file"), b"deep").expect("test setup");
    fs::write(dir.join("base/16384/2619"), vec![42u8; 3 * CHUNK + 17]).expect("test setup");
    fs::write(dir.join("PG_VERSION"), b"15\n").expect("test setup");
    fs::set_permissions(dir.join("PG_VERSION"), fs::Permissions::from_mode(0o640))
        .expect("test setup");
    fs::write(dir.join("empty"), b"").expect("test setup");
    fs::create_dir(dir.join("pg_notify")).expect("test setup");
    std::os::unix::fs::symlink("base/16384/2619", dir.join("link")).expect("test setup");
}

fn tar_of(dir: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-c", "-f", "-", "--format", format, "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn unpack(bytes: Vec<u8>, target: &Path) -> Result<(), AgentError> {
    unpack_tar(std::io::Cursor::new(bytes), target).await
}

/// Every entry of `a` is in `b` with the same kind, content, mode and (files) mtime.
fn assert_same_tree(a: &Path, b: &Path) {
    for entry in walk(a) {
        let relative = entry.strip_prefix(a).expect("test setup");
        let other = b.join(relative);
        let (ma, mb) = (
            fs::symlink_metadata(&entry).expect("test setup"),
            fs::symlink_metadata(&other).unwrap_or_else(|_| panic!("{other:?} missing")),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{relative:?}");
        if ma.is_file() {
            assert_eq!(
                fs::read(&entry).expect("test setup"),
                fs::read(&other).expect("test setup"),
                "{relative:?}"
            );
            assert_eq!(ma.mtime(), mb.mtime(), "{relative:?}");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&entry).expect("test setup"),
                fs::read_link(&other).expect("test setup")
            );
        } else {
            assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{relative:?}");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("test setup").flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().expect("test setup").is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

#[tokio::test]
async fn unpacks_what_tar_packs_in_each_format() {
    let source = tempfile::tempdir().expect("test setup");
    sample_tree(source.path());
    for format in ["gnu", "pax", "ustar"] {
        let target = tempfile::tempdir().expect("test setup");
        let restored = target.path().join("pgdata");
        unpack(tar_of(source.path(), format), &restored)
            .await
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_same_tree(source.path(), &restored);
        assert_eq!(
            fs::metadata(&restored).expect("test setup").mode() & 0o777,
            0o700,
            "{format}"
        );
    }
}

/// A header of `kind` named `name` (ustar), with `size` bytes of data to follow.
fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let digits = field.len() - 1;
        field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
    };
    octal(&mut block[100..108], 0o600);
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], 0);
    block[156] = kind;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    octal(&mut block[148..155], sum);
    block
}

fn archive(entries: &[([u8; BLOCK], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (header, data) in entries {
        out.extend_from_slice(header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

#[tokio::test]
async fn names_that_leave_the_target_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "absolute",
            archive(&[(header("/etc/evil", b'0', 1, ""), b"x")]),
        ),
        (
            "dotdot",
            archive(&[(header("a/../../evil", b'0', 1, ""), b"x")]),
        ),
        (
            "beneath a link",
            archive(&[
                (header("out", b'2', 0, "/tmp"), b""),
                (header("out/evil", b'0', 1, ""), b"x"),
            ]),
        ),
        (
            "hard link",
            archive(&[(header("h", b'1', 0, "PG_VERSION"), b"")]),
        ),
        ("device", archive(&[(header("d", b'3', 0, ""), b"")])),
    ];
    for (case, bytes) in cases {
        let target = tempfile::tempdir().expect("test setup");
        let err = unpack(bytes, &target.path().join("pgdata"))
            .await
            .expect_err(case)
            .to_string();
        assert!(err.contains("refusing it"), "{case}: {err}");
        assert!(!target.path().join("evil").exists(), "{case}");
    }
}

#[tokio::test]
async fn a_damaged_or_cut_stream_fails() {
    let source = tempfile::tempdir().expect("test setup");
    sample_tree(source.path());
    let whole = tar_of(source.path(), "gnu");

    let target = tempfile::tempdir().expect("test setup");
    let cut = whole[..whole.len() / 2].to_vec();
    let err = unpack(cut, &target.path().join("cut"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("ends"), "{err}");

    let mut bad = whole.clone();
    bad[0] ^= 0x55; // the first header's checksum no longer matches
    let err = unpack(bad, &target.path().join("bad"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("checksum"), "{err}");

    // The stream's own error (a stored chunk whose SHA-256 does not match) is the one
    // reported, not what the writer made of the cut.
    struct Failing(std::io::Cursor<Vec<u8>>);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.0.position() as usize >= self.0.get_ref().len() / 2 {
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "object x is corrupt: sha256 mismatch",
                )));
            }
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    let err = unpack_tar(
        Failing(std::io::Cursor::new(whole)),
        &target.path().join("f"),
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
}
