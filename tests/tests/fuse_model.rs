//! Model-based test of the mount: random sequences of file operations run on
//! the dfs mount and on a local directory (the model). Every operation must
//! give the same result (or the same errno) on both, and after every step the
//! two trees must hold the same names, kinds and bytes. proptest shrinks a
//! failure to a short sequence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use dfs_tests::{Cluster, Options};
use proptest::prelude::*;

/// Three of the nodes' 64 KiB checksum blocks, so random reads fetch single blocks.
const CHUNK: u32 = 192 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Write {
        file: u8,
        offset: u32,
        len: u32,
        byte: u8,
    },
    Truncate {
        file: u8,
        size: u32,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Unlink {
        file: u8,
    },
    Link {
        from: u8,
        to: u8,
    },
    Mkdir {
        dir: u8,
    },
    Rmdir {
        dir: u8,
    },
    MoveIn {
        file: u8,
        dir: u8,
    },
    Symlink {
        file: u8,
        to: u8,
    },
    /// Write, then read another range through the same open descriptor
    /// (unflushed data must be visible).
    WriteRead {
        file: u8,
        offset: u32,
        len: u32,
        byte: u8,
        at: u32,
        count: u32,
    },
    /// A fresh open reading one range (a random read: 64 KiB blocks, not whole chunks).
    ReadAt {
        file: u8,
        at: u32,
        count: u32,
    },
    /// fallocate(2) with one of `FALLOCATE_MODES`.
    Fallocate {
        file: u8,
        mode: usize,
        offset: u32,
        len: u32,
    },
}

/// Extend, preallocate, punch a hole, zero a range (growing or not).
const FALLOCATE_MODES: [i32; 5] = [
    0,
    libc::FALLOC_FL_KEEP_SIZE,
    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    libc::FALLOC_FL_ZERO_RANGE,
    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
];

fn op() -> impl Strategy<Value = Op> {
    let f = 0u8..5;
    prop_oneof![
        4 => (f.clone(), 0u32..4 * CHUNK, 1u32..2 * CHUNK, any::<u8>())
            .prop_map(|(file, offset, len, byte)| Op::Write { file, offset, len, byte }),
        2 => (f.clone(), 0u32..4 * CHUNK).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (f.clone(), f.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => f.clone().prop_map(|file| Op::Unlink { file }),
        1 => (f.clone(), f.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (0u8..2).prop_map(|dir| Op::Mkdir { dir }),
        1 => (0u8..2).prop_map(|dir| Op::Rmdir { dir }),
        1 => (f.clone(), 0u8..2).prop_map(|(file, dir)| Op::MoveIn { file, dir }),
        1 => (f.clone(), f.clone()).prop_map(|(file, to)| Op::Symlink { file, to }),
        3 => (f.clone(), 0u32..4 * CHUNK, 1u32..2 * CHUNK, any::<u8>(), 0u32..5 * CHUNK, 1u32..2 * CHUNK)
            .prop_map(|(file, offset, len, byte, at, count)| Op::WriteRead { file, offset, len, byte, at, count }),
        2 => (f.clone(), 0u32..5 * CHUNK, 1u32..2 * CHUNK)
            .prop_map(|(file, at, count)| Op::ReadAt { file, at, count }),
        2 => (f, 0..FALLOCATE_MODES.len(), 0u32..4 * CHUNK, 1u32..3 * CHUNK)
            .prop_map(|(file, mode, offset, len)| Op::Fallocate { file, mode, offset, len }),
    ]
}

/// Applies one operation under `root`; returns the length and a hash of the
/// bytes it read (if any), or the errno. Hashes keep failure reports short.
fn apply(root: &Path, op: &Op) -> Result<(usize, u64), i32> {
    apply_inner(root, op).map(|read| {
        let data = read.unwrap_or_default();
        (data.len(), digest(&data))
    })
}

fn digest(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Opens (creating) `path` for writing, and for reading too with `read`, and
/// writes `len` copies of `byte` at `offset`; returns the still-open file.
fn write_at(
    path: &Path,
    offset: u32,
    len: u32,
    byte: u8,
    read: bool,
) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .read(read)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.seek(SeekFrom::Start(u64::from(offset)))?;
    f.write_all(&vec![byte; len as usize])?;
    Ok(f)
}

fn apply_inner(root: &Path, op: &Op) -> Result<Option<Vec<u8>>, i32> {
    let file = |i: u8| root.join(format!("f{i}"));
    let dir = |i: u8| root.join(format!("d{i}"));
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    match op {
        Op::Write {
            file: i,
            offset,
            len,
            byte,
        } => write_at(&file(*i), *offset, *len, *byte, false)
            .map_err(errno)
            .map(|_| None),
        Op::WriteRead {
            file: i,
            offset,
            len,
            byte,
            at,
            count,
        } => {
            let mut f = write_at(&file(*i), *offset, *len, *byte, true).map_err(errno)?;
            f.seek(SeekFrom::Start(u64::from(*at))).map_err(errno)?;
            let mut buf = Vec::new();
            f.take(u64::from(*count))
                .read_to_end(&mut buf)
                .map_err(errno)?;
            Ok(Some(buf))
        }
        Op::ReadAt { file: i, at, count } => {
            let f = std::fs::File::open(file(*i)).map_err(errno)?;
            let mut buf = vec![0u8; *count as usize];
            let n =
                std::os::unix::fs::FileExt::read_at(&f, &mut buf, u64::from(*at)).map_err(errno)?;
            buf.truncate(n);
            Ok(Some(buf))
        }
        Op::Fallocate {
            file: i,
            mode,
            offset,
            len,
        } => {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file(*i))
                .map_err(errno)?;
            // SAFETY: fallocate on an open descriptor; no memory is passed.
            #[allow(unsafe_code)]
            let r = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    FALLOCATE_MODES[*mode],
                    i64::from(*offset),
                    i64::from(*len),
                )
            };
            if r == 0 {
                Ok(None)
            } else {
                Err(errno(std::io::Error::last_os_error()))
            }
        }
        Op::Truncate { file: i, size } => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file(*i))
                .map_err(errno)?;
            f.set_len(u64::from(*size)).map_err(errno).map(|()| None)
        }
        Op::Rename { from, to } => std::fs::rename(file(*from), file(*to))
            .map_err(errno)
            .map(|()| None),
        Op::Unlink { file: i } => std::fs::remove_file(file(*i)).map_err(errno).map(|()| None),
        Op::Link { from, to } => std::fs::hard_link(file(*from), file(*to))
            .map_err(errno)
            .map(|()| None),
        Op::Mkdir { dir: i } => std::fs::create_dir(dir(*i)).map_err(errno).map(|()| None),
        Op::Rmdir { dir: i } => std::fs::remove_dir(dir(*i)).map_err(errno).map(|()| None),
        Op::MoveIn { file: i, dir: d } => std::fs::rename(file(*i), dir(*d).join(format!("f{i}")))
            .map_err(errno)
            .map(|()| None),
        Op::Symlink { file: i, to } => std::os::unix::fs::symlink(format!("f{i}"), file(*to))
            .map_err(errno)
            .map(|()| None),
    }
}

/// Everything observable about a tree: per path, kind, size, link count and bytes.
fn snapshot(root: &Path) -> BTreeMap<String, (String, u64, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let value = if meta.is_dir() {
                stack.push(path.clone());
                ("dir".to_string(), 0, 0, 0)
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                (
                    "symlink".to_string(),
                    0,
                    0,
                    digest(target.to_string_lossy().as_bytes()),
                )
            } else {
                (
                    "file".to_string(),
                    meta.len(),
                    meta.nlink(),
                    digest(&std::fs::read(&path).unwrap()),
                )
            };
            out.insert(rel, value);
        }
    }
    out
}

#[test]
fn mount_behaves_like_a_local_directory() {
    let c = Cluster::start(Options {
        chunk_size: CHUNK,
        ..Options::default()
    });
    // A cache smaller than a chunk: whole chunks are never kept, so reads go
    // the block path, and the tiny memory bound drains write buffers constantly.
    let m = c.mount_with("mnt", "cache_size=128K");
    let local = c.dir.path().join("model");
    std::fs::create_dir(&local).unwrap();
    let case = std::sync::atomic::AtomicU32::new(0);
    // 24 cases in `make test`; DFS_MODEL_CASES=500 for a longer hunt.
    let cases = std::env::var("DFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..30))| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (a, b) = (m.path.join(format!("case{n}")), local.join(format!("case{n}")));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        for (step, op) in ops.iter().enumerate() {
            let got = apply(&a, op);
            let want = apply(&b, op);
            prop_assert_eq!(got, want, "step {} {:?}: result differs", step, op);
            prop_assert_eq!(snapshot(&a), snapshot(&b), "step {} {:?}: trees differ", step, op);
        }
    });
}
