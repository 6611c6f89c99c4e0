//! Unlinks answered before meta has them (`dfs-fuse/src/deferred.rs`): only
//! in a directory no other mount looks at, in order with everything else the
//! mount asks of meta afterwards, and landing on meta even when meta stalled
//! while the mount answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use dfs_tests::{http_get, Cluster, Mount, Options};

/// A cluster with metrics, meta on `store` (None: SQLite).
fn cluster(store: Option<String>) -> Cluster {
    Cluster::start(Options {
        store,
        metrics: true,
        ..Options::default()
    })
}

/// The name of file `i` of a test directory.
fn file(i: usize) -> String {
    format!("f{i:02}")
}

/// Makes directory `name` on `m` with `files` small files in it.
fn filled(m: &Mount, name: &str, files: usize) -> PathBuf {
    let dir = m.join(name);
    std::fs::create_dir(&dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(file(i)), "x").unwrap();
    }
    dir
}

/// Unlinks the files numbered `which` in `dir`.
fn unlink(dir: &Path, which: Range<usize>) {
    for i in which {
        std::fs::remove_file(dir.join(file(i))).unwrap();
    }
}

/// `dfs_fuse_deferred_unlinks_total{outcome}` of a mount.
fn deferred(m: &Mount, outcome: &str) -> f64 {
    let page = http_get(m.metrics.as_ref().unwrap(), "/metrics");
    let prefix = format!("dfs_fuse_deferred_unlinks_total{{outcome=\"{outcome}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

#[test]
fn unlinks_in_a_private_directory_are_answered_while_meta_stalls_and_land_in_order() {
    let c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = filled(&m, "d", 40);
    // The first unlink in a directory waits for meta, whose reply says no
    // other mount looks at it.
    unlink(&dir, 0..1);
    assert_eq!(deferred(&m, "done"), 0.0);

    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    let (tx, rx) = mpsc::channel();
    let gone = dir.clone();
    std::thread::spawn(move || {
        unlink(&gone, 1..31);
        tx.send(()).unwrap();
    });
    let answered = rx.recv_timeout(Duration::from_secs(10));
    dfs_tests::signal(meta, "CONT");
    answered.expect("30 unlinks answered while meta was stopped");
    // This mount's own view has them gone at once.
    assert!(!dir.join(file(1)).exists());

    // An fsync of the directory waits for them, then makes them durable.
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&m, "done"), 30.0);
    assert_eq!(deferred(&m, "failed"), 0.0);
    let other = c.mount("other");
    let left: Vec<String> = (31..40).map(file).collect();
    assert_eq!(
        names(&other.join("d")),
        left,
        "another mount sees them gone"
    );

    // A name unlinked early can be made again at once; the directory,
    // emptied by unlinks answered early, can be removed at once.
    unlink(&dir, 31..32);
    std::fs::write(dir.join(file(31)), "again").unwrap();
    assert_eq!(
        std::fs::read_to_string(other.join("d").join(file(31))).unwrap(),
        "again"
    );
    for name in names(&dir) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
    assert!(!other.join("d").exists());
    assert!(c.status_field("files").starts_with("0 "), "no file left");
    assert_eq!(deferred(&m, "failed"), 0.0);
}

#[test]
fn a_directory_another_mount_looks_at_is_unlinked_synchronously() {
    let c = cluster(None);
    let (a, b) = (c.mount("a"), c.mount("b"));
    c.wait_watch(&a, true);
    c.wait_watch(&b, true);
    let shared = filled(&a, "shared", 10);
    let private = filled(&a, "private", 10);
    // B lists one directory: meta now sends B its changes.
    assert_eq!(names(&b.join("shared")).len(), 10);
    unlink(&shared, 0..10);
    assert_eq!(deferred(&a, "done"), 0.0, "B looks at `shared`");
    unlink(&private, 0..10);
    std::fs::File::open(&private).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&a, "done"), 9.0, "all but the first in `private`");
    assert!(names(&b.join("shared")).is_empty());
    assert!(names(&b.join("private")).is_empty());
}

#[test]
fn unlinks_in_flight_when_meta_crashes_land_on_the_restarted_meta() {
    let mut c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = filled(&m, "d", 20);
    unlink(&dir, 0..1);
    // Sent to a meta that never answers them: it stops, then dies.
    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    unlink(&dir, 1..15);
    c.kill_meta();
    c.start_meta();
    // The directory's fsync waits for them, sent again to the new meta.
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&m, "done") + deferred(&m, "gone"), 14.0);
    assert_eq!(deferred(&m, "failed"), 0.0);
    let other = c.mount("other");
    let left: Vec<String> = (15..20).map(file).collect();
    assert_eq!(names(&other.join("d")), left);
}

/// On PostgreSQL every unlink waits for meta: other metas' watchers are not
/// known to this one, and unlinks of one directory sent together would
/// conflict in serializable transactions.
#[test]
fn on_postgresql_every_unlink_waits_for_meta() {
    let Some(admin) = dfs_tests::postgres_admin_url() else {
        return;
    };
    let c = cluster(Some(dfs_tests::fresh_postgres_db(&admin)));
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = filled(&m, "d", 10);
    unlink(&dir, 0..10);
    assert_eq!(deferred(&m, "done"), 0.0);
    assert!(names(&dir).is_empty());
}
