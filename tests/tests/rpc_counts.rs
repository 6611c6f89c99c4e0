//! Round trips per small-file operation, from the mount's own count of meta
//! calls: what the mount's caches and batched placements save, kept from
//! coming back unnoticed. Counts, not timings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use dfs_tests::{http_get, Cluster, Mount, Options};

const FILES: usize = 60;

/// dfs_fuse_meta_calls_total by method (the mount publishes them every 2 s).
fn calls(m: &Mount) -> BTreeMap<String, f64> {
    std::thread::sleep(Duration::from_millis(2300));
    let page = http_get(m.metrics.as_ref().unwrap(), "/metrics");
    page.lines()
        .filter_map(|l| l.strip_prefix("dfs_fuse_meta_calls_total{method=\""))
        .filter_map(|l| {
            let (method, rest) = l.split_once("\"} ")?;
            Some((method.to_string(), rest.trim().parse().ok()?))
        })
        .filter(|(m, _)| m != "RenewSession")
        .collect()
}

/// Calls per file between two counts, by method, and in all.
fn per_file(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> (BTreeMap<String, f64>, f64) {
    let by: BTreeMap<String, f64> = after
        .iter()
        .map(|(m, n)| {
            (
                m.clone(),
                (n - before.get(m).unwrap_or(&0.0)) / FILES as f64,
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let total = by.values().sum();
    (by, total)
}

#[test]
fn small_file_operations_make_few_round_trips() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = m.join("small");
    std::fs::create_dir(&dir).unwrap();
    let paths: Vec<_> = (0..FILES).map(|i| dir.join(format!("f{i}"))).collect();

    let t0 = calls(&m);
    for p in &paths {
        std::fs::write(p, [7u8; 4096]).unwrap();
    }
    let t1 = calls(&m);
    let (create, total) = per_file(&t0, &t1);
    // One CommitWrite at close, carrying the create answered at open (but
    // the first file's, which waits for meta); placements come in batches,
    // and a name in a directory made here needs no lookup.
    assert!(total < 1.5, "create: {total:.2} calls per file: {create:?}");

    dfs_tests::drop_kernel_caches();
    let t2 = calls(&m);
    for p in &paths {
        assert_eq!(std::fs::metadata(p).unwrap().len(), 4096);
    }
    let t3 = calls(&m);
    let (stat, total) = per_file(&t2, &t3);
    assert!(total < 0.1, "stat: {total:.2} calls per file: {stat:?}");

    dfs_tests::drop_kernel_caches();
    let t4 = calls(&m);
    for p in &paths {
        assert_eq!(std::fs::read(p).unwrap(), [7u8; 4096]);
    }
    let t5 = calls(&m);
    let (read, total) = per_file(&t4, &t5);
    // The chunk maps this mount's own commits returned are still good (no
    // invalidation came): the opens need no GetChunks, and meta hears of
    // them in batches, those closed before their batch left not at all.
    assert!(!read.contains_key("GetChunks"), "read: {read:?}");
    assert!(total < 0.3, "read: {total:.2} calls per file: {read:?}");

    let t6 = calls(&m);
    for p in &paths {
        std::fs::remove_file(p).unwrap();
    }
    let t7 = calls(&m);
    let (delete, total) = per_file(&t6, &t7);
    assert!(total < 1.1, "delete: {total:.2} calls per file: {delete:?}");
}

/// Once the caches have forgotten a directory's names (`cache_timeout`), a
/// program that stats them all lists the directory instead of looking each
/// name up (`dfs-fuse/src/refill.rs`).
#[test]
fn stats_after_the_cache_expired_list_the_directory_once() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount_with("m", "cache_timeout=2");
    c.wait_watch(&m, true);
    let dir = m.join("old");
    std::fs::create_dir(&dir).unwrap();
    let paths: Vec<_> = (0..FILES).map(|i| dir.join(format!("f{i}"))).collect();
    for (i, p) in paths.iter().enumerate() {
        std::fs::write(p, vec![1u8; i]).unwrap();
    }
    // Past the mount's and the kernel's cache time.
    std::thread::sleep(Duration::from_millis(2500));
    dfs_tests::drop_kernel_caches();
    let t0 = calls(&m);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(std::fs::metadata(p).unwrap().len(), i as u64);
    }
    assert!(!dir.join("absent").exists());
    let t1 = calls(&m);
    let (stat, total) = per_file(&t0, &t1);
    assert!(
        stat.get("ReadDir").copied().unwrap_or(0.0) > 0.0,
        "the directory was listed: {stat:?}"
    );
    assert!(total < 0.3, "stat: {total:.2} calls per file: {stat:?}");
}

/// A directory whose every name the mount knows (made here, or listed whole)
/// is listed from the mount's cache: `rm -rf` lists each directory twice,
/// `cp -r` out lists what `cp -r` in made. What this mount changes there
/// shows at once; what another mount changes, once meta's invalidation
/// came, from meta.
#[test]
fn a_directory_the_mount_knows_whole_is_listed_without_meta() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let (m, other) = (c.mount("m"), c.mount("other"));
    c.wait_watch(&m, true);
    let dir = m.join("made");
    std::fs::create_dir(&dir).unwrap();
    let mut names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(dir.join(n), vec![3u8; i]).unwrap();
    }
    let t0 = calls(&m);
    assert_eq!(dfs_tests::names(&dir), names);
    std::fs::remove_file(dir.join("f00")).unwrap();
    names.remove(0);
    assert_eq!(
        dfs_tests::names(&dir),
        names,
        "this mount's unlink shows at once"
    );
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let i: u64 = e.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(e.metadata().unwrap().len(), i, "the listing's attributes");
    }
    let t1 = calls(&m);
    let (listing, _) = per_file(&t0, &t1);
    assert!(
        !listing.contains_key("ReadDir"),
        "listed from the cache: {listing:?}"
    );

    std::fs::write(other.join("made/new"), b"from elsewhere").unwrap();
    c.wait_until(
        "the other mount's file is listed",
        Duration::from_secs(10),
        |_| dfs_tests::names(&dir).contains(&"new".to_string()),
    );
    let t2 = calls(&m);
    let (listing, _) = per_file(&t1, &t2);
    assert!(
        listing.contains_key("ReadDir"),
        "listed from meta: {listing:?}"
    );
}
