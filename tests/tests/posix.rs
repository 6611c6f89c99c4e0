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
