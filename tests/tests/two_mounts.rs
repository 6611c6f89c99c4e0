//! Two mounts writing the same file: a commit changes only what its writer
//! wrote, and never shrinks the file, so the other mount's closed data stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use dfs_tests::{Cluster, Options};

fn cluster() -> Cluster {
    Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    })
}

#[test]
fn a_commit_keeps_what_another_mount_appended() {
    let c = cluster();
    let (a, b) = (c.mount("a"), c.mount("b"));
    std::fs::write(a.join("f"), vec![b'o'; 1000]).unwrap();
    // A opens the 1,000-byte file for update.
    let fa = OpenOptions::new().write(true).open(a.join("f")).unwrap();
    // B appends 5,000 bytes and closes: acknowledged.
    let mut fb = OpenOptions::new().append(true).open(b.join("f")).unwrap();
    fb.write_all(&[b'b'; 5000]).unwrap();
    drop(fb);
    // A writes one byte at offset 0 and closes.
    fa.write_all_at(b"A", 0).unwrap();
    drop(fa);
    let mut want = vec![b'A'];
    want.extend_from_slice(&[b'o'; 999]);
    want.extend_from_slice(&[b'b'; 5000]);
    let fresh = c.mount("fresh");
    let got = std::fs::read(fresh.join("f")).unwrap();
    assert_eq!(got.len(), 6000, "B's append survives A's commit");
    assert!(got == want, "A's byte and B's bytes");
}

#[test]
fn writes_to_different_ranges_of_one_chunk_both_survive() {
    let c = cluster();
    let (a, b) = (c.mount("a"), c.mount("b"));
    std::fs::write(a.join("f"), vec![b'.'; 300_000]).unwrap();
    let fa = OpenOptions::new().write(true).open(a.join("f")).unwrap();
    let fb = OpenOptions::new().write(true).open(b.join("f")).unwrap();
    // Both write into chunk 0 before either closes; B closes first.
    fa.write_all_at(&[b'A'; 100], 0).unwrap();
    fa.write_all_at(&[b'A'; 100], 200_000).unwrap();
    fb.write_all_at(&[b'B'; 100], 100_000).unwrap();
    drop(fb);
    drop(fa);
    let mut want = vec![b'.'; 300_000];
    want[..100].fill(b'A');
    want[200_000..200_100].fill(b'A');
    want[100_000..100_100].fill(b'B');
    let fresh = c.mount("fresh");
    assert!(std::fs::read(fresh.join("f")).unwrap() == want);
    // The same on the writers' own mounts once reopened.
    assert!(std::fs::read(a.join("f")).unwrap() == want);
    assert!(std::fs::read(b.join("f")).unwrap() == want);
}
