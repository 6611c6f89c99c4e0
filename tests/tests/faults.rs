//! Faults under a real mount: what an application sees while a node is
//! stopped (SIGSTOP, a gray failure) or gone, and what the cluster records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use dfs_tests::{http_get, metric_value, stat_chunks, Cluster, Options};

#[test]
fn fsync_with_a_stalled_replica_replaces_it_and_succeeds() {
    let c = Cluster::start(Options {
        nodes: 4,
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let m = c.mount("mnt");
    let path = m.join("f");
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let before = stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    let stalled = before[0].1[0].0;
    let index = c.node_index(stalled);
    // The node stops answering but keeps its connections (SIGSTOP).
    let pid = c.node_pid(index).unwrap();
    dfs_tests::signal(pid, "STOP");
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(b"x").unwrap();
    let start = Instant::now();
    let synced = f.sync_all();
    dfs_tests::signal(pid, "CONT");
    synced.expect("fsync succeeds with one node of four stalled");
    assert!(start.elapsed() < Duration::from_secs(60));
    drop(f);
    // Every chunk's recorded replicas are the ones that synced: the stalled
    // node is no longer among them, and a new copy took its place.
    for (index, replicas) in stat_chunks(&c.dfs_ok(&["stat", "/f"])) {
        let ids: Vec<u64> = replicas.iter().map(|(id, _)| *id).collect();
        assert!(!ids.contains(&stalled), "chunk {index}: {ids:?}");
        assert_eq!(ids.len(), 3, "chunk {index}: {ids:?}");
    }
    let mut expected = data;
    expected[0] = b'x';
    assert!(std::fs::read(&path).unwrap() == expected);
}

/// Prints the time from a node's death to full redundancy: 4 nodes, one
/// killed (`DFS_HEAL_MIB` of data, 128 MiB here; `make chaos` uses 1 GiB).
#[test]
fn self_healing_time_is_measured() {
    let mib: usize = std::env::var("DFS_HEAL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let mut c = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    });
    let f = c.random_file("f", mib << 20);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let chunks = stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    let victim_id = chunks[0].1[0].0;
    let victim = c.node_index(victim_id);
    let held = chunks
        .iter()
        .filter(|(_, r)| r.iter().any(|(id, _)| *id == victim_id))
        .count();
    let start = Instant::now();
    c.kill_node(victim);
    c.wait_until("meta sees the node down", Duration::from_secs(60), |c| {
        c.status_field("nodes").starts_with("3 up")
    });
    let detected = start.elapsed();
    c.wait_until("full redundancy again", Duration::from_secs(600), |c| {
        c.dfs(&["fsck"]).status.success()
    });
    let healed = start.elapsed();
    eprintln!(
        "self-healing: {mib} MiB in {} chunks, node holding {held} of them killed: \
         seen down after {:.1} s (dead-after 3 s), full redundancy after {:.1} s \
         ({:.1} s of copying)",
        chunks.len(),
        detected.as_secs_f64(),
        healed.as_secs_f64(),
        (healed - detected).as_secs_f64()
    );
    for (index, replicas) in stat_chunks(&c.dfs_ok(&["stat", "/f"])) {
        let live = replicas
            .iter()
            .filter(|(id, down)| !down && *id != victim_id)
            .count();
        assert_eq!(live, 3, "chunk {index}: {replicas:?}");
    }
    let out = c.local("out");
    c.dfs_ok(&["get", "/f", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&f).unwrap());
}

#[test]
fn a_node_out_of_disk_space_costs_no_write() {
    let mut c = Cluster::start(Options {
        nodes: 4,
        chunk_size: 1 << 20,
        ..Options::default()
    });
    // Node 0 moves onto a 6 MiB disk. It claims a large disk, so placement
    // keeps choosing it until it is full (as when something else fills the
    // disk): ENOSPC mid-write.
    let _small = dfs_tests::onto_small_disk(&mut c, 0, "6m");
    let data = c.node_data(0);
    c.wait_nodes_up(4);
    let m = c.mount("mnt");
    // 48 MiB in 8 files: node 0 fills up along the way.
    let mut files = Vec::new();
    for i in 0..8 {
        let bytes: Vec<u8> = (0..6 << 20).map(|j| (j % 241) as u8 ^ i as u8).collect();
        let path = m.join(&format!("f{i}"));
        std::fs::write(&path, &bytes).expect("a full node must not fail the write");
        files.push((path, bytes));
    }
    for (path, bytes) in &files {
        assert!(std::fs::read(path).unwrap() == *bytes, "{}", path.display());
    }
    let stat = c.dfs_ok(&["stat", "/f7"]);
    for (index, replicas) in stat_chunks(&stat) {
        assert_eq!(replicas.len(), 3, "chunk {index} has every copy: {stat}");
    }
    // Node 0 did take chunks until its disk was full.
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&data)
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    assert!(avail < 2 << 20, "node 0's disk has {avail} bytes free");
    c.kill_node(0);
}

#[test]
fn a_reader_whose_chunks_were_deleted_reads_the_new_map() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        gc_grace_secs: Some(1),
        metrics: true,
        // Only deleted chunks' files in the pool (none made ahead).
        node_args: vec!["--spares-ahead".into(), "0".into()],
        ..Options::default()
    });
    let (a, b) = (c.mount("a"), c.mount("b"));
    let old: Vec<u8> = (0..3 << 20).map(|i| (i % 199) as u8).collect();
    std::fs::write(b.join("f"), &old).unwrap();
    // Open on mount A (its chunk map is read; none of the chunks is in its
    // cache), nothing read yet.
    let mut reader = std::fs::File::open(a.join("f")).unwrap();
    // Mount B replaces the content: the old chunks become garbage, and the
    // nodes delete them after meta's grace period.
    let new: Vec<u8> = (0..3 << 20).map(|i| (i % 157) as u8).collect();
    std::fs::write(b.join("f"), &new).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.wait_until(
        "old chunks deleted on the nodes",
        Duration::from_secs(30),
        |c| c.status_field("replicas awaiting deletion") == "0",
    );
    std::thread::sleep(Duration::from_secs(1));
    // A's reader gets the file as it is now, not EIO.
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut got).expect("no EIO for a changed file");
    assert!(got == new, "the new content");
    // The deleted chunks' files were kept emptied for reuse (recycle.rs), and
    // the next writes fill them with their own bytes.
    let spares = |c: &Cluster| -> f64 {
        c.node_metrics
            .iter()
            .map(|m| metric_value(&http_get(m, "/metrics"), "dfs_node_spare_files"))
            .sum()
    };
    c.wait_until("spare files reported", Duration::from_secs(30), |c| {
        spares(c) > 0.0
    });
    let before = spares(&c);
    let third: Vec<u8> = (0..3 << 20).map(|i| (i % 131) as u8).collect();
    std::fs::write(b.join("g"), &third).unwrap();
    c.wait_until("spare files taken", Duration::from_secs(30), |c| {
        spares(c) < before
    });
    assert!(
        std::fs::read(a.join("g")).unwrap() == third,
        "a recycled file's new bytes"
    );
    assert!(
        std::fs::read(a.join("f")).unwrap() == new,
        "the other file untouched"
    );
}

#[test]
fn a_cluster_out_of_space_is_enospc_not_eio() {
    let mut c = Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let _disks: Vec<dfs_tests::SmallDisk> = (0..3)
        .map(|i| dfs_tests::onto_small_disk(&mut c, i, "4m"))
        .collect();
    c.wait_nodes_up(3);
    let m = c.mount("mnt");
    let big = vec![7u8; 16 << 20];
    let err = std::fs::write(m.join("big"), &big).expect_err("16 MiB cannot fit on 4 MiB disks");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
}

#[test]
fn a_write_short_of_replicas_through_stalls_is_eio_not_enospc() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let m = c.mount("mnt");
    // Two nodes of three stall: a write can reach one, fewer than the two a
    // degraded write needs. Nothing is full, so ENOSPC would mislead.
    let stalled: Vec<u32> = (1..3).map(|i| c.node_pid(i).unwrap()).collect();
    for pid in &stalled {
        dfs_tests::signal(*pid, "STOP");
    }
    // (fsync reports it; Rust's File drops the error of close.)
    let result = std::fs::File::create(m.join("f")).and_then(|mut f| {
        f.write_all(&[1u8; 1 << 20])?;
        f.sync_all()
    });
    for pid in &stalled {
        dfs_tests::signal(*pid, "CONT");
    }
    let err = result.expect_err("one replica of three is not enough");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn small_writes_with_a_stalled_node_take_a_spare_node_instead_of_waiting() {
    let c = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    });
    let m = c.mount("mnt");
    // Placements are fetched ahead, a batch at a time: stall a node that
    // the first one named, so that the next writes are placed on it too.
    std::fs::write(m.join("warm"), b"warm").unwrap();
    let stalled_id = stat_chunks(&c.dfs_ok(&["stat", "/warm"]))[0].1[0].0;
    let pid = c.node_pid(c.node_index(stalled_id)).unwrap();
    dfs_tests::signal(pid, "STOP");
    let start = Instant::now();
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = (0..8u8)
        .map(|i| {
            let path = m.join(&format!("f{i}"));
            let data = vec![i; 4096];
            std::fs::write(&path, &data).expect("a stalled node costs no write");
            (path, data)
        })
        .collect();
    let took = start.elapsed();
    // The chunk maps as the writes left them, read while the node is still
    // stopped: once it runs again it may report the copy it was sent, and
    // meta may keep that one and trim a spare's instead.
    for (path, _) in &files {
        let name = format!("/{}", path.file_name().unwrap().to_string_lossy());
        for (index, replicas) in stat_chunks(&c.dfs_ok(&["stat", &name])) {
            let ids: Vec<u64> = replicas.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids.len(), 3, "{name} chunk {index}: {ids:?}");
            assert!(!ids.contains(&stalled_id), "{name}: {ids:?}");
        }
    }
    dfs_tests::signal(pid, "CONT");
    eprintln!("8 small files with one node of four stopped: {took:?}");
    for (path, data) in &files {
        assert!(std::fs::read(path).unwrap() == *data, "{}", path.display());
    }
    // The writes did not wait out the stalled node: spare nodes took copies.
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(
        log.contains("a spare node takes a copy too"),
        "no hedged write in the mount's log"
    );
}
