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
    // (The kernel asks B's daemon: A changed these directories lately, so
    // B hands their entries to the kernel without a TTL and answers itself.)
    let asked = || {
        let page = http_get(b.metrics.as_ref().unwrap(), "/metrics");
        ["Lookup", "GetAttr"]
            .iter()
            .map(|m| {
                let name = format!("dfs_fuse_meta_calls_total{{method=\"{m}\"}}");
                dfs_tests::metric_or_zero(&page, &name)
            })
            .sum::<f64>()
    };
    let before = asked();
    for _ in 0..50 {
        assert_eq!(size(&b.join("f")), Some(3));
        assert!(b.join("d/new").exists());
    }
    let after = asked();
    assert!(
        after - before < 5.0,
        "100 stats of cached names went to meta {} times",
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

fn setxattr(p: &Path, name: &str, value: &str) {
    let ok = std::process::Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The value of xattr `name`, None if the file has none.
fn getxattr(p: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// A cluster with metrics and two mounts caching for an hour, both watching.
fn two_watching_mounts() -> (Cluster, Mount, Mount) {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let a = c.mount_with("a", HOUR_CACHE);
    let b = c.mount_with("b", HOUR_CACHE);
    c.wait_watch(&a, true);
    c.wait_watch(&b, true);
    (c, a, b)
}

fn confirms(c: &Cluster, outcome: &str) -> f64 {
    let page = http_get(c.meta_metrics.as_ref().unwrap(), "/metrics");
    dfs_tests::metric_or_zero(
        &page,
        &format!("dfs_meta_invalidation_confirms_total{{outcome=\"{outcome}\"}}"),
    )
}

/// A change returns only once every other mount that may cache what it
/// touched has dropped it: B, checking right after A's call returns (no
/// wait, no other process in between), never sees what was there before.
#[test]
fn another_mount_sees_a_change_as_soon_as_the_call_returns() {
    let (c, a, b) = two_watching_mounts();
    std::fs::create_dir(a.join("d")).unwrap();
    for i in 0..40 {
        let (f, g, h) = (format!("d/f{i}"), format!("d/g{i}"), format!("d/h{i}"));
        std::fs::write(a.join(&f), b"x").unwrap();
        assert_eq!(size(&b.join(&f)), Some(1), "round {i}: B caches f");
        assert_eq!(getxattr(&b.join(&f), "user.k"), None, "round {i}");
        let value = format!("v{i}");
        setxattr(&a.join(&f), "user.k", &value);
        assert_eq!(
            getxattr(&b.join(&f), "user.k").as_deref(),
            Some(value.as_str()),
            "round {i}: B missed A's xattr"
        );
        std::fs::set_permissions(a.join(&f), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mode = std::fs::metadata(b.join(&f)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "round {i}: B saw the mode before A's chmod");
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(a.join(&f))
            .unwrap();
        std::io::Write::write_all(&mut w, b"yz").unwrap();
        drop(w);
        assert_eq!(
            size(&b.join(&f)),
            Some(3),
            "round {i}: B saw the size before A's close"
        );
        assert_eq!(std::fs::read(b.join(&f)).unwrap(), b"xyz", "round {i}");
        std::fs::rename(a.join(&f), a.join(&h)).unwrap();
        assert!(
            !b.join(&f).exists(),
            "round {i}: B saw the name A renamed away"
        );
        assert!(
            b.join(&h).exists(),
            "round {i}: B missed the name A renamed to"
        );
        std::fs::remove_file(a.join(&h)).unwrap();
        assert!(!b.join(&h).exists(), "round {i}: B saw the file A removed");
        assert!(!b.join(&g).exists(), "round {i}: B caches g's absence");
        let listed = |m: &Mount| {
            let want = format!("g{i}");
            std::fs::read_dir(m.join("d"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_str() == Some(want.as_str()))
                .count()
        };
        assert_eq!(listed(&b), 0, "round {i}");
        std::fs::write(a.join(&g), b"").unwrap();
        assert_eq!(
            listed(&b),
            1,
            "round {i}: B's listing missed the file A created"
        );
        assert!(
            b.join(&g).exists(),
            "round {i}: B missed the file A created"
        );
    }
    assert!(confirms(&c, "applied") > 0.0);
    assert_eq!(confirms(&c, "ran_out"), 0.0);
}

/// Two mounts changing one directory at once, each having cached the names
/// the other removes: each one's entry invalidation may wait for the
/// directory's lock that its own call holds while meta waits on the other
/// mount. Every change is still confirmed in time (no watcher dropped), and
/// right after, both see the same names.
#[test]
fn two_mounts_changing_one_directory_at_once_confirm_each_other() {
    let (c, a, b) = two_watching_mounts();
    std::fs::create_dir(a.join("d")).unwrap();
    assert_eq!(std::fs::read_dir(b.join("d")).unwrap().count(), 0);
    const N: usize = 100;
    for i in 0..N {
        std::fs::write(a.join(&format!("d/x{i}")), b"x").unwrap();
        std::fs::write(b.join(&format!("d/y{i}")), b"y").unwrap();
    }
    // Each mount's kernel caches every name with the long TTL: once neither
    // counts the directory as lately changed by the other (the mount's
    // `SHARED_FOR`, 5 s), when entries go to the kernel with no TTL.
    std::thread::sleep(Duration::from_millis(5500));
    for m in [&a, &b] {
        for i in 0..N {
            assert!(m.join(&format!("d/x{i}")).exists());
            assert!(m.join(&format!("d/y{i}")).exists());
        }
    }
    let work = |m: &Mount, gone: &str, made: &str| {
        for i in 0..N {
            std::fs::remove_file(m.join(&format!("d/{gone}{i}"))).unwrap();
            std::fs::write(m.join(&format!("d/{made}{i}")), b"z").unwrap();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| work(&a, "x", "p"));
        s.spawn(|| work(&b, "y", "q"));
    });
    for m in [&a, &b] {
        for i in 0..N {
            for (name, there) in [("x", false), ("y", false), ("p", true), ("q", true)] {
                let p = m.join(&format!("d/{name}{i}"));
                assert_eq!(p.exists(), there, "{}", p.display());
            }
        }
    }
    assert!(confirms(&c, "applied") > 0.0);
    assert_eq!(confirms(&c, "ran_out"), 0.0, "a mount was dropped");
    let entries = |m: &Mount| {
        let page = http_get(m.metrics.as_ref().unwrap(), "/metrics");
        dfs_tests::metric_or_zero(&page, "dfs_fuse_invalidations_total{kind=\"entry\"}")
    };
    assert!(
        entries(&a) > 0.0 && entries(&b) > 0.0,
        "the kernels' cached entries were invalidated"
    );
}

/// A file open on B that A rewrites: B's next read through the same handle
/// shows A's bytes as soon as A's close returned, as on a local disk (the
/// kernel's pages and the mount's chunk map both go).
#[test]
fn a_handle_open_on_another_mount_reads_what_was_just_written() {
    use std::os::unix::fs::FileExt;
    let (_c, a, b) = two_watching_mounts();
    std::fs::write(a.join("f"), b"old contents").unwrap();
    let fb = std::fs::File::open(b.join("f")).unwrap();
    for round in 0..20u8 {
        let mut seen = [0u8; 12];
        fb.read_exact_at(&mut seen, 0).unwrap();
        let fa = std::fs::OpenOptions::new()
            .write(true)
            .open(a.join("f"))
            .unwrap();
        let mark = [b'A' + round; 3];
        fa.write_all_at(&mark, 0).unwrap();
        drop(fa);
        fb.read_exact_at(&mut seen, 0).unwrap();
        assert_eq!(
            &seen[..3],
            &mark,
            "round {round}: B read the bytes before A's close"
        );
        assert_eq!(&seen[3..], b" contents");
    }
}

/// An open from the chunk map a mount holds (no GetChunks) never reads
/// content another mount replaced: the writer's close drops the map here
/// before it returns, even when the new content has the old size.
#[test]
fn an_open_from_a_held_map_reads_what_another_mount_just_wrote() {
    let (_c, a, b) = two_watching_mounts();
    let from_cache = || dfs_tests::opens_from_held_maps(&b);
    let (fa, fb) = (a.join("f"), b.join("f"));
    std::fs::write(&fa, "round 00").unwrap();
    assert_eq!(std::fs::read_to_string(&fb).unwrap(), "round 00");
    let before = from_cache();
    for round in 1..=20 {
        let text = format!("round {round:02}");
        std::fs::write(&fa, &text).unwrap();
        assert_eq!(std::fs::read_to_string(&fb).unwrap(), text, "round {round}");
        // A's release (after its close returned) may still change the
        // file's times, which drops B's map again: let it land.
        std::thread::sleep(Duration::from_millis(100));
        // Nothing changed since: B opens it from the map it holds.
        assert_eq!(std::fs::read_to_string(&fb).unwrap(), text, "round {round}");
    }
    assert!(
        from_cache() >= before + 10.0,
        "B's second opens used its held map ({} of 20)",
        from_cache() - before
    );
}

/// A file written here past the chunk maps the mount keeps (more than 4
/// chunks, over several commits) shows its whole size and content here
/// afterwards, from the mount's own cache too (the kernel's dropped).
#[test]
fn a_large_file_written_here_shows_its_last_commit() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        metrics: true,
        ..Options::default()
    });
    let m = c.mount_with("m", HOUR_CACHE);
    c.wait_watch(&m, true);
    let data: Vec<u8> = (0..(9 << 20) + 123u32).map(|i| (i % 253) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.join("big")).unwrap();
        for piece in data.chunks(1 << 20) {
            f.write_all(piece).unwrap();
        }
    }
    dfs_tests::drop_kernel_caches();
    assert_eq!(size(&m.join("big")), Some(data.len() as u64));
    assert!(std::fs::read(m.join("big")).unwrap() == data, "the content");
}
