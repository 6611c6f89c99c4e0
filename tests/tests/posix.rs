//! POSIX behaviour a Linux syscall suite checks beyond the everyday tools:
//! appends under locks, timestamps while a file is open, fallocate modes,
//! SEEK_HOLE/SEEK_DATA, inode flags. Each runs through a real kernel mount.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use dfs_tests::{Cluster, Options};

const CS: u64 = 1 << 20;

fn cluster() -> Cluster {
    Cluster::start(Options {
        chunk_size: CS as u32,
        ..Options::default()
    })
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// An open-file-description lock over the whole file (`F_OFD_SETLKW`).
fn ofd_lock(f: &File, kind: i32) {
    // SAFETY: flock is plain data; fcntl reads it during the call only.
    #[allow(unsafe_code)]
    let r = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLKW, &fl)
    };
    assert_eq!(r, 0, "F_OFD_SETLKW: errno {}", errno());
}

/// Threads of one process, each with its own descriptor, append under an
/// exclusive lock: lock, seek to the end, write a block, unlock. Each block
/// must land whole after all the others (the end of file a descriptor sees
/// must include every write another descriptor finished).
fn locked_appends(paths: &[&Path], threads: usize, rounds: usize, block: usize) -> Vec<u8> {
    std::thread::scope(|s| {
        for t in 0..threads {
            let path = paths[t % paths.len()];
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(path).unwrap();
                let data = vec![b'a' + t as u8; block];
                for _ in 0..rounds {
                    ofd_lock(&f, libc::F_WRLCK);
                    // SAFETY: lseek on a descriptor this thread owns.
                    #[allow(unsafe_code)]
                    let end = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
                    assert!(end >= 0);
                    f.write_all_at(&data, end as u64).unwrap();
                    ofd_lock(&f, libc::F_UNLCK);
                }
            });
        }
    });
    std::fs::read(paths[0]).unwrap()
}

#[test]
fn appends_under_ofd_locks_all_land_whole() {
    let c = cluster();
    let m = c.mount("mnt");
    let path = m.join("spool");
    File::create(&path).unwrap();
    let (threads, rounds, block) = (6, 50, 4096);
    let data = locked_appends(&[&path], threads, rounds, block);
    assert_eq!(data.len(), threads * rounds * block, "no append lost");
    let mut per_thread = vec![0; threads];
    for b in data.chunks(block) {
        assert!(b.iter().all(|x| *x == b[0]), "a block was overwritten");
        per_thread[(b[0] - b'a') as usize] += 1;
    }
    assert!(per_thread.iter().all(|n| *n == rounds), "{per_thread:?}");
    // A fresh mount reads the same file back.
    let again = c.mount("again");
    assert_eq!(std::fs::read(again.join("spool")).unwrap(), data);
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

#[test]
fn write_moves_mtime_before_close() {
    let c = cluster();
    let m = c.mount("mnt");
    let path = m.join("f");
    std::fs::write(&path, b"before").unwrap();
    let before = std::fs::metadata(&path).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"after", 0).unwrap();
    // fstat on the open descriptor, with no close in between.
    let during = f.metadata().unwrap();
    assert!(
        mtime_ns(&during) > mtime_ns(&before),
        "write(2) marks mtime for update"
    );
    assert!(ctime_ns(&during) >= mtime_ns(&during), "and ctime");
    // The time a stat showed while open is the time that stays after close.
    drop(f);
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(mtime_ns(&after), mtime_ns(&during));
    // copy_file_range into an open file moves it too.
    let src = m.join("src");
    std::fs::write(&src, vec![7u8; 10_000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let from = File::open(&src).unwrap();
    let to = OpenOptions::new().write(true).open(&path).unwrap();
    let t0 = mtime_ns(&to.metadata().unwrap());
    // SAFETY: both descriptors are open; null offsets use the file positions.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            10_000,
            0,
        )
    };
    assert_eq!(n, 10_000, "copy_file_range: errno {}", errno());
    assert!(mtime_ns(&to.metadata().unwrap()) > t0);
    assert_eq!(to.metadata().unwrap().len(), 10_000);
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> i32 {
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        0
    } else {
        errno()
    }
}

fn seek(f: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on an open descriptor.
    #[allow(unsafe_code)]
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as u64)
    }
}

/// A file of `chunks` chunks, every byte non-zero.
fn filled(path: &Path, len: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn fallocate_punch_hole_zero_range_and_keep_size() {
    let c = cluster();
    let m = c.mount("mnt");
    let path = m.join("f");
    let mut model = filled(&path, 5 * CS + 1000);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    // A hole over a partial chunk, two whole chunks and another partial one.
    let (off, len) = (CS / 2, 2 * CS + CS / 2 + 4096);
    assert_eq!(
        fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | keep, off, len),
        0
    );
    model[off as usize..(off + len) as usize].fill(0);
    // Zero a range inside one chunk, and one that runs past the end (grows).
    assert_eq!(fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 100, 200), 0);
    model[100..300].fill(0);
    let end = model.len() as u64;
    assert_eq!(fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, end - 10, 5000), 0);
    let tail = model.len() - 10;
    model[tail..].fill(0);
    model.resize(end as usize - 10 + 5000, 0);
    // KEEP_SIZE past the end: the size stays; mode 0 past the end grows.
    assert_eq!(fallocate(&f, keep, 0, 20 * CS), 0);
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    assert_eq!(fallocate(&f, 0, model.len() as u64, 3000), 0);
    model.resize(model.len() + 3000, 0);
    // Punch without KEEP_SIZE and collapse/insert ranges are refused.
    assert_eq!(
        fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, CS),
        libc::EOPNOTSUPP
    );
    let mut back = vec![0; model.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "read through the open file");
    drop(f);
    assert!(std::fs::read(&path).unwrap() == model, "after close");
    let other = c.mount("other");
    assert!(
        std::fs::read(other.join("f")).unwrap() == model,
        "on another mount"
    );
    // The two wholly punched chunks store nothing: meta's map has a hole there.
    let stat = c.dfs(&["stat", "/f"]);
    assert!(stat.status.success());
    let text = String::from_utf8_lossy(&stat.stdout).to_string();
    assert!(text.contains("chunk 0 "), "{text}");
    for index in [1, 2] {
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("chunk {index} "))),
            "chunk {index} still mapped:\n{text}"
        );
    }
}

#[test]
fn seek_data_and_seek_hole_follow_the_chunk_map() {
    let c = cluster();
    let m = c.mount("mnt");
    let path = m.join("sparse");
    // Data in chunk 0 (first 1000 bytes) and chunk 3; holes elsewhere; size 6 chunks.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&[1; 1000], 0).unwrap();
    f.write_all_at(&[2; 10], 3 * CS + 5).unwrap();
    f.set_len(6 * CS).unwrap();
    let check = |f: &File| {
        assert_eq!(seek(f, 0, libc::SEEK_DATA), Ok(0));
        assert_eq!(seek(f, 0, libc::SEEK_HOLE), Ok(1000));
        assert_eq!(seek(f, 1000, libc::SEEK_DATA), Ok(3 * CS));
        assert_eq!(seek(f, 3 * CS + 4, libc::SEEK_HOLE), Ok(3 * CS + 15));
        assert_eq!(seek(f, 3 * CS + 15, libc::SEEK_DATA), Err(libc::ENXIO));
        assert_eq!(seek(f, 4 * CS, libc::SEEK_HOLE), Ok(4 * CS));
        assert_eq!(seek(f, 6 * CS, libc::SEEK_HOLE), Err(libc::ENXIO));
        assert_eq!(seek(f, 6 * CS, libc::SEEK_DATA), Err(libc::ENXIO));
    };
    check(&f); // while the writes are still in this mount's buffers
    drop(f);
    check(&File::open(&path).unwrap()); // committed
    let other = c.mount("other");
    check(&File::open(other.join("sparse")).unwrap());
    // cp --sparse=always keeps the holes: the copy reads the same.
    let copy = m.join("copy");
    let out = std::process::Command::new("cp")
        .args(["--sparse=always"])
        .arg(&path)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&path).unwrap());
}

/// Runs a Python statement in `dir` (as `user`, or root) and returns "ok"
/// or the errno name it failed with.
fn py_errno(dir: &Path, user: Option<&str>, code: &str) -> String {
    let script = format!(
        "import errno, os, sys\ntry:\n    {code}\n    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
    );
    let mut cmd = match user {
        Some(u) => {
            let mut c = std::process::Command::new("su");
            c.args(["-s", "/bin/sh", u, "-c"])
                .arg(format!("python3 -c \"{script}\""));
            c
        }
        None => {
            let mut c = std::process::Command::new("python3");
            c.args(["-c", &script]);
            c
        }
    };
    let out = cmd.current_dir(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lsattr(path: &Path) -> String {
    let out = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lsattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn immutable_and_append_only_hold_on_every_mount() {
    let c = cluster();
    let m = c.mount("mnt");
    let other = c.mount("other");
    dfs_tests::sh(
        &m.path,
        "echo data > frozen && echo log > journal && mkdir box && touch box/in && chmod 666 frozen",
    );
    dfs_tests::sh(
        &m.path,
        "chattr +i frozen && chattr +a journal && chattr +i box",
    );
    assert!(lsattr(&m.join("frozen")).contains('i'));
    assert!(
        lsattr(&other.join("journal")).contains('a'),
        "seen on another mount"
    );
    // Nobody may set or clear them but root (CAP_LINUX_IMMUTABLE).
    assert_eq!(
        py_errno(&m.path, Some("nobody"), "import fcntl, struct; fcntl.ioctl(os.open('frozen', os.O_RDONLY), 0x40086602, struct.pack('i', 0))"),
        "EPERM"
    );
    for dir in [&m.path, &other.path] {
        let d = dir.as_path();
        // Immutable: no data, attribute or name change.
        for code in [
            "open('frozen', 'w')",
            "open('frozen', 'a')",
            "os.truncate('frozen', 0)",
            "os.chmod('frozen', 0o600)",
            "os.chown('frozen', 1, 1)",
            "os.utime('frozen', None)",
            "os.unlink('frozen')",
            "os.rename('frozen', 'moved')",
            "os.link('frozen', 'hard')",
            "os.setxattr('frozen', 'user.k', b'v')",
            "open('box/new', 'w')",
            "os.unlink('box/in')",
            "os.rename('journal', 'box/j')",
        ] {
            assert_eq!(py_errno(d, None, code), "EPERM", "{code}");
        }
        assert_eq!(py_errno(d, None, "open('frozen').read()"), "ok");
        // Append-only: appends work, nothing else changes.
        for code in [
            "open('journal', 'w')",
            "open('journal', 'r+')",
            "os.truncate('journal', 0)",
            "os.unlink('journal')",
            "os.rename('journal', 'j2')",
            "os.chmod('journal', 0o600)",
        ] {
            assert_eq!(py_errno(d, None, code), "EPERM", "{code}");
        }
        assert_eq!(
            py_errno(
                d,
                None,
                "f = open('journal', 'a'); f.write('more\\n'); f.close()"
            ),
            "ok"
        );
    }
    assert_eq!(std::fs::read_to_string(m.join("frozen")).unwrap(), "data\n");
    assert_eq!(
        std::fs::read_to_string(other.join("journal")).unwrap(),
        "log\nmore\nmore\n"
    );
    // Cleared, everything works again.
    dfs_tests::sh(
        &m.path,
        "chattr -i frozen box && chattr -a journal && rm frozen journal box/in && rmdir box",
    );
    // Flags dfs does not keep are refused, not silently dropped.
    dfs_tests::sh(&m.path, "touch plain");
    let out = std::process::Command::new("chattr")
        .args(["+c"])
        .arg(m.join("plain"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "chattr +c is not supported");
}

/// Bytes the file system stores for every file below `dir` (st_blocks).
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            stored_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

#[test]
fn sparse_files_store_and_move_only_their_data() {
    let c = Cluster::start(Options {
        chunk_size: 4 << 20,
        ..Options::default()
    });
    let m = c.mount("mnt");
    // The shape of LTP's sendfile09 file: one byte at the end of every MiB.
    let mib = 1u64 << 20;
    let path = m.join("sparse");
    let f = File::create(&path).unwrap();
    for i in 1..=64 {
        f.write_all_at(b"C", i * mib - 1).unwrap();
    }
    drop(f);
    // Each node stores the 64 KiB blocks that hold a byte, not 64 MiB.
    for i in 0..3 {
        let stored = stored_bytes(&c.node_data(i));
        assert!(stored < 16 * mib, "node {i} stores {stored} bytes");
    }
    // sendfile from past the middle returns the right bytes.
    let out_path = c.local("out");
    let out = File::create(&out_path).unwrap();
    let src = File::open(&path).unwrap();
    let mut offset: libc::off_t = 40 * mib as libc::off_t;
    let mut sent = 0;
    while sent < 8 * mib as usize {
        // SAFETY: two open descriptors and a valid offset pointer.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::sendfile(
                out.as_raw_fd(),
                src.as_raw_fd(),
                &mut offset,
                8 * mib as usize - sent,
            )
        };
        assert!(n > 0, "sendfile: errno {}", errno());
        sent += n as usize;
    }
    let copy = std::fs::read(&out_path).unwrap();
    assert_eq!(copy.len(), 8 * mib as usize);
    for (i, b) in copy.iter().enumerate() {
        let expect = if (i as u64 + 1).is_multiple_of(mib) {
            b'C'
        } else {
            0
        };
        assert_eq!(*b, expect, "byte {i}");
    }
}

/// linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): gives an open file a name.
fn link_fd(f: &File, path: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: an open descriptor, an empty C string and a valid C path.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::linkat(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        0
    } else {
        errno()
    }
}

fn open_tmpfile(dir: &Path, excl: bool) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_TMPFILE | if excl { libc::O_EXCL } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(dir)
        .unwrap()
}

#[test]
fn o_tmpfile_is_unnamed_until_linked_and_gone_if_never_linked() {
    let c = cluster();
    let m = c.mount("mnt");
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    // An unnamed file: writable, nlink 0, in no listing.
    let f = open_tmpfile(&dir, false);
    let data: Vec<u8> = (0..3 * CS + 7).map(|i| (i % 253) as u8).collect();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // linkat gives it a name: whole content, one link, seen on another mount.
    assert_eq!(link_fd(&f, &dir.join("named")), 0);
    drop(f);
    let other = c.mount("other");
    assert!(std::fs::read(other.join("d/named")).unwrap() == data);
    assert_eq!(std::fs::metadata(dir.join("named")).unwrap().nlink(), 1);
    let chunks = |c: &Cluster| -> u64 {
        let field = c.status_field("chunks");
        field.split_whitespace().next().unwrap().parse().unwrap()
    };
    let chunks_named = chunks(&c);
    // Never linked: its data goes at the last close.
    let f = open_tmpfile(&dir, false);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    assert!(chunks(&c) > chunks_named);
    drop(f);
    c.wait_until(
        "the unlinked tmpfile's chunks are released",
        Duration::from_secs(10),
        |c| chunks(c) == chunks_named,
    );
    // O_EXCL: never linkable (the kernel refuses).
    let f = open_tmpfile(&dir, true);
    assert_eq!(link_fd(&f, &dir.join("never")), libc::ENOENT);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

/// fsx-rs, from PATH or cargo's bin folder (`scripts/install-deps.sh`
/// installs it; `make test` runs that).
fn fsx_binary() -> std::path::PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("fsx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    in_path
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin/fsx")))
        .find(|p| p.is_file())
        .expect("fsx is not installed: run scripts/install-deps.sh (make test does)")
}

/// fsx: random reads, writes, mmap reads and writes, truncates, close/open,
/// fsync, posix_fallocate, hole punching, sendfile and copy_file_range on one
/// file, each checked against fsx's own copy. Chunks of 128 KiB, so a 4 MiB
/// file crosses many chunk edges. (fsx-rs has no zero-range operation: the
/// model test in fuse_model.rs runs ZERO_RANGE and PUNCH_HOLE against ext4.)
#[test]
fn fsx_with_hole_punching_passes() {
    let fsx = fsx_binary();
    let c = Cluster::start(Options {
        chunk_size: 128 << 10,
        ..Options::default()
    });
    let m = c.mount("mnt");
    let config = c.local("fsx.toml");
    std::fs::write(
        &config,
        "flen = 4194304\n[opsize]\nmin = 1\nmax = 262144\nalign = 1\n[weights]\n\
         close_open = 2\nread = 10\nwrite = 10\nmapread = 5\nmapwrite = 5\ntruncate = 5\n\
         fsync = 1\nfdatasync = 1\nposix_fallocate = 3\npunch_hole = 5\nsendfile = 3\n\
         copy_file_range = 3\ninvalidate = 1\n",
    )
    .unwrap();
    let seed: u64 = rand::random::<u32>().into();
    let artifacts = c.dir.path().join("fsx-artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    let out = std::process::Command::new(fsx)
        .args(["-N", "2000", "-S", &seed.to_string(), "-f"])
        .arg(&config)
        .arg("-P")
        .arg(&artifacts)
        .arg(m.join("fsxfile"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("All operations completed A-OK"),
        "fsx -S {seed} failed:\n{}\n{}",
        stdout.lines().rev().take(40).collect::<Vec<_>>().join("\n"),
        stderr
    );
}
