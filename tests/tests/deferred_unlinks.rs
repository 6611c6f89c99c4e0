//! Unlinks answered before meta has them (`dfs-fuse/src/deferred.rs`): only
//! in a directory no other mount looks at, in order with everything else the
//! mount asks of meta afterwards, and landing on meta even when meta stalled
//! while the mount answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::Duration;

use dfs_tests::{http_get, Cluster, Mount, Options};

/// `dfs_fuse_deferred_unlinks_total{outcome}` of a mount.
fn deferred(m: &Mount, outcome: &str) -> f64 {
    let page = http_get(m.metrics.as_ref().unwrap(), "/metrics");
    let prefix = format!("dfs_fuse_deferred_unlinks_total{{outcome=\"{outcome}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits until meta's invalidations reach `m` (its caches keep entries then).
fn wait_live(c: &Cluster, m: &Mount) {
    c.wait_until("invalidations live", Duration::from_secs(30), |_| {
        dfs_tests::metric_value(
            &http_get(m.metrics.as_ref().unwrap(), "/metrics"),
            "dfs_fuse_watch_live",
        ) == 1.0
    });
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

#[test]
fn unlinks_in_a_private_directory_are_answered_while_meta_stalls_and_land_in_order() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("m");
    wait_live(&c, &m);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..40 {
        std::fs::write(dir.join(format!("f{i:02}")), format!("file {i}")).unwrap();
    }
    // The first unlink in a directory waits for meta, whose reply says no
    // other mount looks at it.
    std::fs::remove_file(dir.join("f00")).unwrap();
    assert_eq!(deferred(&m, "done"), 0.0);

    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    let (tx, rx) = mpsc::channel();
    let gone = dir.clone();
    std::thread::spawn(move || {
        for i in 1..31 {
            std::fs::remove_file(gone.join(format!("f{i:02}"))).unwrap();
        }
        tx.send(()).unwrap();
    });
    let answered = rx.recv_timeout(Duration::from_secs(10));
    dfs_tests::signal(meta, "CONT");
    answered.expect("30 unlinks answered while meta was stopped");
    // This mount's own view has them gone at once.
    assert!(!dir.join("f01").exists());

    // An fsync of the directory waits for them, then makes them durable.
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&m, "done"), 30.0);
    assert_eq!(deferred(&m, "failed"), 0.0);
    let other = c.mount("other");
    let left: Vec<String> = (31..40).map(|i| format!("f{i:02}")).collect();
    assert_eq!(
        names(&other.join("d")),
        left,
        "another mount sees them gone"
    );

    // A name unlinked early can be made again at once; the directory,
    // emptied by unlinks answered early, can be removed at once.
    std::fs::remove_file(dir.join("f31")).unwrap();
    std::fs::write(dir.join("f31"), "again").unwrap();
    assert_eq!(
        std::fs::read_to_string(other.join("d/f31")).unwrap(),
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
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let (a, b) = (c.mount("a"), c.mount("b"));
    wait_live(&c, &a);
    wait_live(&c, &b);
    let shared = a.join("shared");
    let private = a.join("private");
    for dir in [&shared, &private] {
        std::fs::create_dir(dir).unwrap();
        for i in 0..10 {
            std::fs::write(dir.join(format!("f{i}")), "x").unwrap();
        }
    }
    // B lists one directory: meta now sends B its changes.
    assert_eq!(names(&b.join("shared")).len(), 10);
    for i in 0..10 {
        std::fs::remove_file(shared.join(format!("f{i}"))).unwrap();
    }
    assert_eq!(deferred(&a, "done"), 0.0, "B looks at `shared`");
    for i in 0..10 {
        std::fs::remove_file(private.join(format!("f{i}"))).unwrap();
    }
    std::fs::File::open(&private).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&a, "done"), 9.0, "all but the first in `private`");
    assert!(names(&b.join("shared")).is_empty());
    assert!(names(&b.join("private")).is_empty());
}

#[test]
fn unlinks_in_flight_when_meta_crashes_land_on_the_restarted_meta() {
    let mut c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("m");
    wait_live(&c, &m);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("f{i:02}")), "x").unwrap();
    }
    std::fs::remove_file(dir.join("f00")).unwrap();
    // Sent to a meta that never answers them: it stops, then dies.
    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    for i in 1..15 {
        std::fs::remove_file(dir.join(format!("f{i:02}"))).unwrap();
    }
    c.kill_meta();
    c.start_meta();
    // The directory's fsync waits for them, sent again to the new meta.
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    assert_eq!(deferred(&m, "done") + deferred(&m, "gone"), 14.0);
    assert_eq!(deferred(&m, "failed"), 0.0);
    let other = c.mount("other");
    let left: Vec<String> = (15..20).map(|i| format!("f{i:02}")).collect();
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
    let c = Cluster::start(Options {
        store: Some(dfs_tests::fresh_postgres_db(&admin)),
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("m");
    wait_live(&c, &m);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..10 {
        std::fs::write(dir.join(format!("f{i}")), "x").unwrap();
    }
    for i in 0..10 {
        std::fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
    assert_eq!(deferred(&m, "done"), 0.0);
    assert!(names(&dir).is_empty());
}
