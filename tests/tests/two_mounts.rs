//! Two mounts writing the same file: a commit changes only what its writer
//! wrote, and never shrinks the file, so the other mount's closed data stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use dfs_tests::{Cluster, Options};

fn cluster() -> Cluster {
    cluster_with(false)
}

/// 1 MiB chunks; `metrics`: every daemon serves its metrics.
fn cluster_with(metrics: bool) -> Cluster {
    Cluster::start(Options {
        chunk_size: 1 << 20,
        metrics,
        ..Options::default()
    })
}

/// How many files meta counts open (`dfs_meta_open_files`).
fn open_on_meta(c: &Cluster) -> f64 {
    let page = dfs_tests::http_get(c.meta_metrics.as_ref().unwrap(), "/metrics");
    dfs_tests::metric_value(&page, "dfs_meta_open_files")
}

/// Whoever lets go of a file last — its release (which the kernel sends
/// after close returns), a stat that waited on the file meanwhile, or a
/// read that opened it again before that release ran — its close reaches
/// meta.
#[test]
fn a_close_reaches_meta_whoever_lets_go_of_the_file_last() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = cluster_with(true);
    let b = c.mount("b");
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let statter = {
        let (dir, done) = (b.path.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for i in 0..100 {
                    let _ = std::fs::metadata(dir.join(format!("f{i}")));
                }
            }
        })
    };
    for i in 0..100 {
        let p = b.join(&format!("f{i}"));
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
    done.store(true, Ordering::Relaxed);
    statter.join().unwrap();
    c.wait_until(
        "every close reached meta",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 0.0,
    );
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

/// Four appenders, two per mount: one keeps the file open, one opens it for
/// every record. Each writes 150 records of 1,000 bytes with O_APPEND.
const APPENDERS: &str = r#"
import os, sys, threading
a, b = sys.argv[1], sys.argv[2]
N, SIZE = 150, 1000
def record(tag, i):
    head = ("%s-%05d:" % (tag, i)).encode()
    return head + bytes([65 + i % 26]) * (SIZE - len(head) - 1) + b"\n"
def keep_open(path, tag):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(N):
        assert os.write(fd, record(tag, i)) == SIZE
    os.close(fd)
def reopen(path, tag):
    for i in range(N):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        assert os.write(fd, record(tag, i)) == SIZE
        os.close(fd)
jobs = [(keep_open, a, "A1"), (reopen, a, "A2"), (keep_open, b, "B1"), (reopen, b, "B2")]
threads = [threading.Thread(target=f, args=(p, t)) for f, p, t in jobs]
[t.start() for t in threads]
[t.join() for t in threads]
data = open(a, "rb").read()
assert len(data) == 4 * N * SIZE, "size %d, want %d" % (len(data), 4 * N * SIZE)
seen = {}
for k in range(0, len(data), SIZE):
    rec = data[k:k + SIZE]
    tag, i = rec[:2].decode(), int(rec[3:8])
    assert rec == record(tag, i), "record at %d is torn: %r" % (k, rec[:20])
    assert seen.get(tag, -1) == i - 1, "%s: %d after %d" % (tag, i, seen.get(tag, -1))
    seen[tag] = i
assert all(seen[t] == N - 1 for t in ("A1", "A2", "B1", "B2")), seen
print("ok")
"#;

#[test]
fn appends_from_two_mounts_all_land_whole() {
    let c = cluster();
    let (a, b) = (c.mount("a"), c.mount("b"));
    dfs_tests::python(APPENDERS, &[&a.join("log"), &b.join("log")]);
    // The other mount reads the same: every record once, whole, in order.
    let via_b = std::fs::read(b.join("log")).unwrap();
    assert_eq!(via_b, std::fs::read(a.join("log")).unwrap());
}

/// O_CREAT, O_EXCL and O_TRUNC on a name another mount created. (The race
/// where this mount's CREATE meets the other's, which must open the file
/// rather than fail with EEXIST, is what the appenders above run into.)
#[test]
fn o_creat_opens_what_another_mount_just_created() {
    let c = cluster();
    let (a, b) = (c.mount("a"), c.mount("b"));
    let script = r#"
import os, sys
a, b = sys.argv[1], sys.argv[2]
for name in ("x", "y", "z"):
    assert not os.path.exists(os.path.join(b, name))
    open(os.path.join(a, name), "w").write("hello")
fd = os.open(os.path.join(b, "x"), os.O_CREAT | os.O_RDWR, 0o600)
assert os.read(fd, 100) == b"hello", "O_CREAT opened another file"
os.close(fd)
try:
    os.open(os.path.join(b, "y"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    raise SystemExit("O_EXCL succeeded on an existing file")
except FileExistsError:
    pass
fd = os.open(os.path.join(b, "z"), os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
os.close(fd)
assert os.path.getsize(os.path.join(a, "z")) == 0, "O_TRUNC did not truncate"
print("ok")
"#;
    dfs_tests::python(script, &[&a.path, &b.path]);
}

/// A file another mount removes, or renames another file over, while this
/// mount has it open stays readable and writable here until the last close
/// here, as on a local disk (meta keeps it as an orphan held by this mount's
/// session); then it goes.
#[test]
fn a_file_another_mount_removes_stays_open_here() {
    use std::io::Read;
    let c = cluster();
    let (a, b) = (c.mount("a"), c.mount("b"));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.join("f"), &data).unwrap();
    std::fs::write(a.join("g"), b"old g").unwrap();
    std::fs::write(a.join("g2"), b"new g").unwrap();
    let fb = std::fs::File::open(b.join("f")).unwrap();
    let gb = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("g"))
        .unwrap();
    std::fs::remove_file(a.join("f")).unwrap();
    std::fs::rename(a.join("g2"), a.join("g")).unwrap();
    assert_eq!(c.orphans(), 2, "B's open files are kept for it");
    assert!(!b.join("f").exists());
    // Long enough for meta's purge (every 250 ms) to delete a file's chunks.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut got = Vec::new();
    (&fb).read_to_end(&mut got).unwrap();
    assert!(got == data, "B reads the whole removed file");
    gb.write_all_at(b"OLD", 0).unwrap();
    gb.sync_all().unwrap();
    let mut whole = vec![0u8; 5];
    gb.read_exact_at(&mut whole, 0).unwrap();
    assert_eq!(whole, b"OLD g", "B writes the replaced file");
    assert_eq!(std::fs::read(b.join("g")).unwrap(), b"new g");
    drop(fb);
    drop(gb);
    c.wait_until(
        "the last close here releases them",
        std::time::Duration::from_secs(30),
        |c| c.orphans() == 0,
    );
    assert!(c.dfs_ok(&["--json", "status"]).contains("\"files\":1"));
}

/// An open from a chunk map the mount held (no GetChunks) reaches meta in
/// the next batch of opens: from then on a removal elsewhere keeps the file.
#[test]
fn a_file_opened_from_a_held_map_is_kept_when_another_mount_removes_it() {
    use std::io::Read;
    let c = cluster_with(true);
    let (a, b) = (c.mount("a"), c.mount("b"));
    c.wait_watch(&b, true);
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(a.join("f"), &data).unwrap();
    // B's first open fetches the map and keeps it; its second, once meta
    // heard of the close, uses the map and tells meta in a batch.
    assert_eq!(std::fs::read(b.join("f")).unwrap(), data);
    c.wait_until(
        "meta heard of B's close",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 0.0,
    );
    let before = dfs_tests::opens_from_held_maps(&b);
    let fb = std::fs::File::open(b.join("f")).unwrap();
    assert_eq!(
        dfs_tests::opens_from_held_maps(&b),
        before + 1.0,
        "B opened f from its held map"
    );
    c.wait_until(
        "meta heard of B's open",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 1.0,
    );
    std::fs::remove_file(a.join("f")).unwrap();
    assert_eq!(c.orphans(), 1, "B's open file is kept for it");
    // Long enough for meta's purge (every 250 ms) to delete a file's chunks.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut got = Vec::new();
    (&fb).read_to_end(&mut got).unwrap();
    assert!(got == data, "B reads the whole removed file");
    drop(fb);
    c.wait_until(
        "B's close releases it",
        std::time::Duration::from_secs(30),
        |c| c.orphans() == 0,
    );
}

/// A writer's open always asks meta, which counts the file open at once: a
/// removal elsewhere right after keeps it, and the writer's data lands.
#[test]
fn a_file_opened_for_writing_is_kept_when_another_mount_removes_it_at_once() {
    let c = cluster_with(true);
    let (a, b) = (c.mount("a"), c.mount("b"));
    c.wait_watch(&b, true);
    std::fs::write(a.join("f"), b"first").unwrap();
    // B holds the file's map, and meta heard B's close.
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"first");
    c.wait_until(
        "meta heard of B's close",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 0.0,
    );
    let fb = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("f"))
        .unwrap();
    std::fs::remove_file(a.join("f")).unwrap();
    // Long enough for meta's purge (every 250 ms) to delete a removed file.
    std::thread::sleep(std::time::Duration::from_secs(1));
    fb.write_all_at(b"FIRST and more", 0).unwrap();
    fb.sync_all().expect("B's fsync of the file A removed");
    let mut back = vec![0u8; 14];
    fb.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, b"FIRST and more");
    drop(fb);
    c.wait_until(
        "B's close releases it",
        std::time::Duration::from_secs(30),
        |c| c.orphans() == 0,
    );
}

/// Meta keeps which files a mount has open in memory: a restarted meta
/// learns them again when the mount's watch stream comes back.
#[test]
fn a_restarted_meta_still_keeps_a_file_open_elsewhere() {
    let mut c = cluster_with(true);
    let (a, b) = (c.mount("a"), c.mount("b"));
    std::fs::write(a.join("f"), b"still here").unwrap();
    let fb = std::fs::File::open(b.join("f")).unwrap();
    c.wait_watch(&b, true);
    c.kill_meta();
    c.wait_watch(&b, false);
    c.start_meta();
    c.wait_watch(&b, true);
    c.wait_until(
        "B told the new meta what it has open",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 1.0,
    );
    std::fs::remove_file(a.join("f")).unwrap();
    assert_eq!(c.orphans(), 1);
    let mut got = String::new();
    std::io::Read::read_to_string(&mut &fb, &mut got).unwrap();
    assert_eq!(got, "still here");
}

/// Every file a mount made or opened and closed is closed on meta too:
/// nothing stays counted open to be kept for it later.
#[test]
fn files_closed_on_a_mount_are_not_open_on_meta() {
    let c = cluster_with(true);
    let b = c.mount("b");
    for i in 0..40 {
        let p = b.join(&format!("f{i}"));
        match i % 4 {
            0 => drop(std::fs::File::create(&p).unwrap()),
            1 => std::fs::write(&p, b"data").unwrap(),
            2 => drop(dfs_tests::sh(&b.path, &format!("mknod f{i} p"))),
            _ => {
                std::fs::write(&p, b"x").unwrap();
                drop(std::fs::read(&p).unwrap());
            }
        }
    }
    dfs_tests::sh(
        &b.path,
        "python3 -c \"import os; os.mknod('reg', 0o100644)\"",
    );
    c.wait_until(
        "every close reached meta",
        std::time::Duration::from_secs(10),
        |c| open_on_meta(c) == 0.0,
    );
}
