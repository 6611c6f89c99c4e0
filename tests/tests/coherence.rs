//! Kernel caches kept honest by meta's invalidations: a mount caching
//! entries and attributes for an hour still sees another mount's changes,
//! because meta tells it (the watch stream), across meta restarts and from
//! another meta on the same PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use dfs_tests::{http_get, metric_value, Cluster, Mount, Options};

/// Long enough that only an invalidation can bring a change in time.
const HOUR_CACHE: &str = "cache_size=64M,cache_timeout=3600";
const SEEN_WITHIN: Duration = Duration::from_secs(15);

fn metric(m: &Mount, name: &str) -> f64 {
    metric_value(&http_get(m.metrics.as_ref().unwrap(), "/metrics"), name)
}

fn size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// B caches f, a missing name, a directory listing and modes; A changes each.
fn changes_reach(c: &Cluster, a: &Mount, b: &Mount) {
    std::fs::write(a.join("f"), b"12345").unwrap();
    std::fs::create_dir(a.join("d")).unwrap();
    std::fs::write(a.join("d/old"), b"x").unwrap();
    // B looks at everything once (and at a name that does not exist yet).
    assert_eq!(size(&b.join("f")), Some(5));
    assert!(!b.join("later").exists());
    assert!(b.join("d/old").exists());
    let listed: Vec<_> = std::fs::read_dir(b.join("d")).unwrap().collect();
    assert_eq!(listed.len(), 1);

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("f"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"67890").unwrap();
    drop(f);
    c.wait_until("B sees A's append", SEEN_WITHIN, |_| {
        size(&b.join("f")) == Some(10)
    });
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"1234567890");

    std::fs::write(a.join("later"), b"").unwrap();
    c.wait_until("B sees A's new file (a cached miss)", SEEN_WITHIN, |_| {
        b.join("later").exists()
    });

    std::fs::rename(a.join("d/old"), a.join("d/new")).unwrap();
    c.wait_until("B sees A's rename", SEEN_WITHIN, |_| {
        !b.join("d/old").exists() && b.join("d/new").exists()
    });

    std::fs::set_permissions(a.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    c.wait_until("B sees A's chmod", SEEN_WITHIN, |_| {
        std::fs::metadata(b.join("f")).unwrap().mode() & 0o777 == 0o600
    });

    std::fs::hard_link(a.join("f"), a.join("f2")).unwrap();
    c.wait_until("B sees the new link count", SEEN_WITHIN, |_| {
        std::fs::metadata(b.join("f")).unwrap().nlink() == 2
    });

    std::fs::OpenOptions::new()
        .write(true)
        .open(a.join("f"))
        .unwrap()
        .set_len(3)
        .unwrap();
    c.wait_until("B sees A's truncate", SEEN_WITHIN, |_| {
        size(&b.join("f")) == Some(3)
    });
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"123");

    std::fs::remove_file(a.join("later")).unwrap();
    c.wait_until("B sees A's unlink", SEEN_WITHIN, |_| {
        !b.join("later").exists()
    });
}

#[test]
fn another_mounts_changes_reach_an_hour_long_cache() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let a = c.mount("a");
    let b = c.mount_with("b", HOUR_CACHE);
    c.wait_watch(&b, true);
    changes_reach(&c, &a, &b);

    // And B really caches: stats of what it knows ask meta nothing more.
    let before = metric(&b, "dfs_fuse_requests_total{op=\"getattr\"}")
        + metric(&b, "dfs_fuse_requests_total{op=\"lookup\"}");
    for _ in 0..50 {
        assert_eq!(size(&b.join("f")), Some(3));
        assert!(b.join("d/new").exists());
    }
    let after = metric(&b, "dfs_fuse_requests_total{op=\"getattr\"}")
        + metric(&b, "dfs_fuse_requests_total{op=\"lookup\"}");
    assert!(
        after - before < 5.0,
        "100 stats of cached names went to the daemon {} times",
        after - before
    );
    // The writer's own changes are not sent back to it.
    let page = http_get(a.metrics.as_ref().unwrap(), "/metrics");
    assert!(
        !page.contains("dfs_fuse_invalidations_total{"),
        "A was told of its own changes"
    );
    let page = http_get(b.metrics.as_ref().unwrap(), "/metrics");
    assert!(metric_value(&page, "dfs_fuse_invalidations_total{kind=\"entry\"}") > 0.0);
}

#[test]
fn invalidations_resume_after_a_meta_restart() {
    let mut c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let a = c.mount("a");
    let b = c.mount_with("b", HOUR_CACHE);
    c.wait_watch(&b, true);
    std::fs::write(a.join("f"), b"one").unwrap();
    assert_eq!(size(&b.join("f")), Some(3));
    c.kill_meta();
    c.wait_watch(&b, false);
    c.start_meta();
    c.wait_watch(&b, true);
    std::fs::write(a.join("f"), b"three").unwrap();
    c.wait_until("B sees A's rewrite after the restart", SEEN_WITHIN, |_| {
        size(&b.join("f")) == Some(5)
    });
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"three");
}

#[test]
fn changes_on_one_meta_reach_a_mount_of_another() {
    let Some(admin) = dfs_tests::postgres_admin_url() else {
        return;
    };
    let mut c = Cluster::start(Options {
        store: Some(dfs_tests::fresh_postgres_db(&admin)),
        metrics: true,
        ..Options::default()
    });
    let second = c.add_meta();
    let first = c.meta_addrs().split(',').next().unwrap().to_string();
    // A talks to the first meta only, B to the second only.
    let a = c.mount_via("a", "cache_size=64M", &first);
    let b = c.mount_via("b", HOUR_CACHE, c.extra_meta_addr(second));
    c.wait_watch(&b, true);
    changes_reach(&c, &a, &b);
}
