//! The cluster core end to end: real dfs-meta and dfs-node processes on
//! 127.0.0.1, driven by the real `dfs` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use dfs_tests::{stat_chunks, Cluster, Options};

fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn put_stat_get_round_trip() {
    let c = Cluster::start(Options::default());
    let big = c.random_file("big", 50 << 20);
    let empty = c.random_file("empty", 0);
    c.dfs_ok(&["put", big.to_str().unwrap(), "/big"]);
    c.dfs_ok(&["upload", empty.to_str().unwrap(), "/empty"]);

    let stat = c.dfs_ok(&["stat", "/big"]);
    assert!(stat.contains("size: 52428800"), "{stat}");
    let chunks = stat_chunks(&stat);
    assert_eq!(chunks.len(), 13, "50 MiB in 4 MiB chunks: {stat}");
    for (index, replicas) in &chunks {
        let distinct: HashSet<u64> = replicas.iter().map(|r| r.0).collect();
        assert_eq!(
            distinct.len(),
            3,
            "chunk {index} must be on 3 distinct nodes: {stat}"
        );
        assert!(replicas.iter().all(|r| !r.1), "all replicas up: {stat}");
    }
    assert!(c.dfs_ok(&["stat", "/empty"]).contains("size: 0"));

    let out = c.local("big.out");
    c.dfs_ok(&["get", "/big", out.to_str().unwrap()]);
    assert!(same_bytes(&big, &out), "downloaded bytes differ");
    let out0 = c.local("empty.out");
    c.dfs_ok(&["download", "/empty", out0.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out0).unwrap().len(), 0);

    let ls = c.dfs_ok(&["ls", "/"]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec!["big", "empty"],
        "no temp files left: {ls}"
    );
    assert_eq!(c.status_field("files"), "2  directories: 1  data: 50.0 MiB");
}

#[test]
fn reads_survive_losing_nodes_and_writes_degrade_cleanly() {
    let mut c = Cluster::start(Options::default());
    let big = c.random_file("big", 20 << 20);
    c.dfs_ok(&["put", big.to_str().unwrap(), "/big"]);
    let out = c.local("out");

    c.kill_node(0);
    c.dfs_ok(&["get", "/big", out.to_str().unwrap()]);
    assert!(same_bytes(&big, &out), "one node down");

    // With 2 of 3 nodes a write still succeeds, and says it is under-replicated.
    let small = c.random_file("small", 9 << 20);
    let put = c.dfs(&["put", small.to_str().unwrap(), "/degraded"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(
        stderr(&put).contains("under-replicated"),
        "{}",
        stderr(&put)
    );
    let stat = c.dfs_ok(&["stat", "/degraded"]);
    for (_, replicas) in stat_chunks(&stat) {
        assert_eq!(replicas.len(), 2, "{stat}");
    }
    c.dfs_ok(&["get", "/degraded", out.to_str().unwrap()]);
    assert!(same_bytes(&small, &out));

    c.kill_node(1);
    std::fs::remove_file(&out).unwrap();
    c.dfs_ok(&["get", "/big", out.to_str().unwrap()]);
    assert!(same_bytes(&big, &out), "two nodes down, one copy left");

    // One node is not enough for a write: a clear error, and no file appears.
    let put = c.dfs(&["put", small.to_str().unwrap(), "/refused"]);
    assert_eq!(put.status.code(), Some(1), "{}", stderr(&put));
    assert!(
        stderr(&put).contains("at least 2 needed"),
        "{}",
        stderr(&put)
    );
    let ls = c.dfs_ok(&["ls", "/"]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec!["big", "degraded"],
        "no partial file: {ls}"
    );
}

#[test]
fn zero_nodes_up_is_a_clear_error() {
    let mut c = Cluster::start(Options::default());
    for i in 0..3 {
        c.kill_node(i);
    }
    c.wait_until("nodes down", Duration::from_secs(20), |c| {
        c.status_field("nodes") == "0 up, 3 down"
    });
    let f = c.random_file("f", 1000);
    let put = c.dfs(&["put", f.to_str().unwrap(), "/f"]);
    assert_eq!(put.status.code(), Some(1));
    assert!(stderr(&put).contains("no storage node"), "{}", stderr(&put));
    assert_eq!(c.dfs_ok(&["ls", "/"]), "", "nothing left behind");
    assert!(c.dfs_ok(&["status"]).contains("health: DEGRADED"));
}

#[test]
fn repair_brings_chunks_back_to_three_copies() {
    let mut c = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    });
    let f = c.random_file("f", 12 << 20);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let stat = c.dfs_ok(&["stat", "/f"]);
    // Kill a node that holds chunk 0.
    let victim_id = stat_chunks(&stat)[0].1[0].0;
    let victim = c.node_index(victim_id);
    c.kill_node(victim);
    // First meta must see it dead; until then every replica still counts as up.
    c.wait_until("the killed node seen down", Duration::from_secs(30), |c| {
        stat_chunks(&c.dfs_ok(&["stat", "/f"]))
            .iter()
            .flat_map(|(_, r)| r.iter())
            .any(|(id, down)| *id == victim_id && *down)
    });
    c.wait_until(
        "three live replicas of every chunk",
        Duration::from_secs(60),
        |c| {
            let stat = c.dfs_ok(&["stat", "/f"]);
            stat_chunks(&stat)
                .iter()
                .all(|(_, r)| r.iter().filter(|(_, down)| !down).count() == 3)
        },
    );
    assert_eq!(c.status_field("under-replicated chunks"), "0");
    // The repaired copies are real: with the original holders' peers gone, reads still work.
    let out = c.local("out");
    c.dfs_ok(&["get", "/f", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
    // The dead node comes back with its old copies: each chunk it held has one
    // replica too many until repair drops the extra one and its node deletes it.
    // Its copies are still in the map (marked down) and on its disk.
    assert!(stat_chunks(&c.dfs_ok(&["stat", "/f"]))
        .iter()
        .any(|(_, r)| r.iter().any(|(id, down)| *id == victim_id && *down)));
    c.restart_node(victim);
    c.wait_nodes_up(4);
    let chunks = stat_chunks(&c.dfs_ok(&["stat", "/f"])).len();
    let chunk_files = |c: &Cluster| -> usize {
        (0..4)
            .map(|i| {
                std::fs::read_dir(c.node_data(i).join("chunks"))
                    .map(|dirs| {
                        dirs.flatten()
                            .map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count()))
                            .sum::<usize>()
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    c.wait_until(
        "exactly three up replicas of every chunk, and three files of each on disk",
        Duration::from_secs(60),
        |c| {
            let stat = c.dfs_ok(&["stat", "/f"]);
            stat_chunks(&stat)
                .iter()
                .all(|(_, r)| r.len() == 3 && r.iter().all(|(_, down)| !down))
                && chunk_files(c) == 3 * chunks
        },
    );
    let again = c.local("again");
    c.dfs_ok(&["get", "/f", again.to_str().unwrap()]);
    assert!(same_bytes(&f, &again));
}

#[test]
fn a_corrupt_replica_is_skipped_and_replaced() {
    let c = Cluster::start(Options::default());
    let f = c.random_file("f", 3 << 20);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    // Flip one byte in the copy a reader tries first.
    let first = c.node_index(stat_chunks(&c.dfs_ok(&["stat", "/f"]))[0].1[0].0);
    let mut flipped = 0;
    for dir in std::fs::read_dir(c.node_data(first).join("chunks"))
        .unwrap()
        .flatten()
    {
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let mut raw = std::fs::read(file.path()).unwrap();
            let at = raw.len() - 17;
            raw[at] ^= 0x40;
            std::fs::write(file.path(), raw).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1);
    // Several reads: whichever replica is tried first, the bytes are right.
    for i in 0..3 {
        let out = c.local(&format!("out{i}"));
        c.dfs_ok(&["get", "/f", out.to_str().unwrap()]);
        assert!(same_bytes(&f, &out), "read {i} returned corrupt data");
    }
    assert_eq!(
        c.node_data(first)
            .join("corrupt")
            .read_dir()
            .unwrap()
            .count(),
        1,
        "bad chunk moved aside"
    );
    c.wait_until("replica count back to 3", Duration::from_secs(30), |c| {
        let stat = c.dfs_ok(&["stat", "/f"]);
        stat_chunks(&stat).iter().all(|(_, r)| r.len() == 3)
    });
}

#[test]
fn meta_restart_keeps_namespace_and_files() {
    let mut c = Cluster::start(Options::default());
    let f = c.random_file("f", 5 << 20);
    c.dfs_ok(&["mkdir", "-p", "/a/b/c"]);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/a/b/file"]);
    assert!(c.stop_meta(), "meta exits cleanly on SIGTERM");
    c.start_meta();
    c.wait_nodes_up(3);
    assert_eq!(
        c.dfs_ok(&["ls", "/a/b"]).lines().collect::<Vec<_>>(),
        vec!["c", "file"]
    );
    let out = c.local("out");
    c.dfs_ok(&["get", "/a/b/file", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
    // A crash (SIGKILL) loses nothing that was acknowledged either.
    c.dfs_ok(&["put", f.to_str().unwrap(), "/after"]);
    c.kill_meta();
    c.start_meta();
    c.dfs_ok(&["get", "/after", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
    assert!(c.stop_node(0), "node exits cleanly on SIGTERM");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let mut c = Cluster::start(Options::default());
    let f = c.random_file("f", 1000);
    let fp = f.to_str().unwrap();
    let check = |args: &[&str], needle: &str| {
        let out = c.dfs(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "dfs {args:?} should fail: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "dfs {args:?}: expected '{needle}' in: {}",
            stderr(&out)
        );
    };
    check(
        &["get", "/missing", c.local("x").to_str().unwrap()],
        "/missing: no such file",
    );
    check(&["stat", "/missing"], "no such file");
    check(&["ls", "/nope/deeper"], "no such file");
    c.dfs_ok(&["mkdir", "/d"]);
    check(&["mkdir", "/d"], "exists");
    let long = format!("/{}", "n".repeat(256));
    check(&["mkdir", &long], "255");
    check(&["put", fp, &long], "255");
    check(&["put", fp, "/missing-dir/f"], "no such file");
    c.dfs_ok(&["put", fp, "/d/f"]);
    check(&["put", fp, "/d/f"], "exists");
    c.dfs_ok(&["put", "--force", fp, "/d/f"]);
    check(&["rm", "/d"], "is a directory");
    check(
        &["get", "/d", c.local("y").to_str().unwrap()],
        "is a directory",
    );
    assert!(
        !c.local("x").exists() && !c.local("y").exists(),
        "failed gets leave no local file"
    );
    assert_eq!(
        c.dfs_ok(&["ls", "/"]).lines().collect::<Vec<_>>(),
        vec!["d"]
    );
    assert_eq!(
        c.dfs_ok(&["ls", "/d"]).lines().collect::<Vec<_>>(),
        vec!["f"]
    );
    c.dfs_ok(&["rm", "-r", "/d"]);
    assert_eq!(c.dfs_ok(&["ls", "/"]), "");
    // Usage errors exit 2; an unreachable metadata server exits 3.
    assert_eq!(c.dfs(&["frobnicate"]).status.code(), Some(2));
    c.kill_meta();
    let out = c.dfs(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[test]
fn a_cluster_on_postgres_works_the_same() {
    let Some(admin) = dfs_tests::postgres_admin_url() else {
        return;
    };
    let url = dfs_tests::fresh_postgres_db(&admin);
    let mut c = Cluster::start(Options {
        store: Some(url),
        ..Options::default()
    });
    let f = c.random_file("f", 9 << 20);
    c.dfs_ok(&["mkdir", "/pg"]);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/pg/f"]);
    let fsck = c.dfs_ok(&["fsck", "/pg"]);
    assert!(fsck.contains("checked: 1 files, 3 chunks"), "{fsck}");
    assert!(fsck.contains("status: HEALTHY"), "{fsck}");
    c.kill_node(2);
    let out = c.local("out");
    c.dfs_ok(&["get", "/pg/f", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
    c.kill_meta();
    c.start_meta();
    c.dfs_ok(&["get", "/pg/f", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
}

/// The chunk files in a node's data directory (`chunks/` or `corrupt/`), by
/// path, with their inode numbers: a file deleted and copied again has a new one.
fn chunk_files(c: &Cluster, node: usize, sub: &str) -> BTreeMap<PathBuf, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut files = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(c.node_data(node).join(sub)) else {
        return files;
    };
    for entry in dirs.flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
                files.insert(f.path(), f.metadata().unwrap().ino());
            }
        } else {
            files.insert(entry.path(), meta.ino());
        }
    }
    files
}

#[test]
fn a_node_out_of_file_descriptors_loses_no_replica() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let f = c.random_file("f", 24 << 20);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let before = stat_chunks(&c.dfs_ok(&["stat", "/f"]));
    assert!(before.iter().all(|(_, r)| r.len() == 3));
    let files_before = chunk_files(&c, 0, "chunks");
    assert_eq!(files_before.len(), before.len());
    // Node 0 may open no new file (EMFILE) while readers come: reads it
    // serves fail, which says nothing about its data.
    let pid = c.node_pid(0).unwrap();
    let soft = dfs_tests::set_open_file_limit(pid, &dfs_tests::open_files(pid).to_string());
    for i in 0..3 {
        let out = c.local(&format!("out{i}"));
        c.dfs_ok(&["get", "/f", out.to_str().unwrap()]);
        assert!(same_bytes(&f, &out), "read {i}");
    }
    dfs_tests::set_open_file_limit(pid, &soft);
    // Meta still counts every replica, and node 0 still has every file: the
    // same files, not copies made again after a deletion.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stat_chunks(&c.dfs_ok(&["stat", "/f"])), before);
    assert_eq!(chunk_files(&c, 0, "chunks"), files_before);
    assert!(chunk_files(&c, 0, "corrupt").is_empty());
}

#[test]
fn fsck_names_the_files_at_risk() {
    let mut c = Cluster::start(Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let f = c.random_file("f", (2 << 20) + 5);
    c.dfs_ok(&["mkdir", "/a"]);
    c.dfs_ok(&["mkdir", "/b"]);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/a/f1"]);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/b/f2"]);
    let healthy = c.dfs_ok(&["fsck"]);
    assert!(healthy.contains("checked: 2 files, 6 chunks"), "{healthy}");
    assert!(healthy.contains("status: HEALTHY"), "{healthy}");
    // One node of three dies: every chunk is under-replicated (nowhere to copy).
    c.kill_node(0);
    c.wait_until("meta sees the node down", Duration::from_secs(30), |c| {
        c.status_field("nodes").starts_with("2 up")
    });
    let out = c.dfs(&["fsck"]);
    assert_eq!(out.status.code(), Some(1), "data at risk is exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("under-replicated chunks: 6"), "{text}");
    assert!(text.contains("/a/f1: chunk 0"), "{text}");
    assert!(text.contains("/b/f2: chunk 2"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 chunks of 2 files"));
    // status, nodes and stat as JSON, for scripts.
    let json =
        |args: &[&str]| -> serde_json::Value { serde_json::from_str(&c.dfs_ok(args)).unwrap() };
    let status = json(&["status", "--json"]);
    assert_eq!(status["health"], "DEGRADED");
    assert_eq!(
        (status["nodes_up"].as_u64(), status["files"].as_u64()),
        (Some(2), Some(2))
    );
    let nodes = json(&["--json", "nodes"]);
    let states: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "down").count(), 1);
    let stat = json(&["stat", "/a/f1", "--json"]);
    assert_eq!(stat["size"].as_u64(), Some((2 << 20) + 5));
    assert_eq!(stat["chunks"].as_array().unwrap().len(), 3);
    assert_eq!(stat["chunks"][0]["replicas"].as_array().unwrap().len(), 3);
    // A subtree, as JSON.
    let out = c.dfs(&["fsck", "/a", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["healthy"], false);
    assert_eq!(doc["files"], 1);
    let problems = doc["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3);
    assert!(problems.iter().all(|p| p["path"] == "/a/f1"
        && p["health"] == "under-replicated"
        && p["live_replicas"] == 2));
    // The node comes back: healthy again, and --repair is accepted.
    c.restart_node(0);
    c.wait_nodes_up(3);
    let back = c.dfs_ok(&["fsck", "--repair"]);
    assert!(back.contains("status: HEALTHY"), "{back}");
    assert_eq!(c.dfs(&["fsck", "/missing"]).status.code(), Some(1));
}

#[test]
fn fsck_lists_chunk_files_meta_does_not_know_and_repair_deletes_them() {
    let c = Cluster::start(Options {
        gc_grace_secs: Some(1),
        ..Options::default()
    });
    let f = c.random_file("f", 5000);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    // A chunk file no file references: a copy of a real one under an id
    // meta never handed out (left behind by a crash, or a restored disk).
    let real = chunk_files(&c, 1, "chunks");
    let (some_chunk, _) = real.iter().next().expect("node 1 holds a chunk");
    let stray_id: u64 = 0x00ff_ffff_0000;
    let stray = c
        .node_data(1)
        .join("chunks")
        .join(format!("{:02x}", stray_id % 256))
        .join(format!("{stray_id:016x}"));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::copy(some_chunk, &stray).unwrap();
    // Listed with its node; not data at risk (exit 0), and nothing deleted yet.
    let text = c.dfs_ok(&["fsck"]);
    assert!(
        text.contains("chunk files on nodes that meta does not know: 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("stray: chunk {stray_id} on node")),
        "{text}"
    );
    assert!(text.contains("status: HEALTHY"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&c.dfs_ok(&["--json", "fsck"])).unwrap();
    assert_eq!(doc["stray_chunks"], 1, "{doc}");
    assert_eq!(doc["strays"][0]["chunk_id"], stray_id, "{doc}");
    assert!(stray.exists(), "fsck without --repair changes nothing");
    // A subtree check does not look at the nodes.
    let sub: serde_json::Value =
        serde_json::from_str(&c.dfs_ok(&["--json", "fsck", "/f"])).unwrap();
    assert_eq!(sub["stray_chunks"], 0, "{sub}");
    // --repair queues its deletion: the node deletes it with a heartbeat,
    // and every real chunk file stays.
    let text = c.dfs_ok(&["fsck", "--repair"]);
    assert!(text.contains("(1 queued for deletion)"), "{text}");
    c.wait_until("the stray is deleted", Duration::from_secs(30), |_| {
        !stray.exists()
    });
    assert_eq!(chunk_files(&c, 1, "chunks"), real);
    let text = c.dfs_ok(&["fsck"]);
    assert!(
        text.contains("chunk files on nodes that meta does not know: 0"),
        "{text}"
    );
    let out = c.local("back");
    c.dfs_ok(&["get", "/f", out.to_str().unwrap()]);
    assert!(same_bytes(&f, &out));
}

#[test]
fn a_drained_node_hands_its_chunks_over_and_can_be_removed() {
    let mut c = Cluster::start(Options {
        nodes: 4,
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let f = c.random_file("f", (5 << 20) + 3);
    c.dfs_ok(&["put", f.to_str().unwrap(), "/f"]);
    let holders = |c: &Cluster, path: &str| -> Vec<Vec<u64>> {
        stat_chunks(&c.dfs_ok(&["stat", path]))
            .into_iter()
            .map(|(_, r)| r.into_iter().map(|(id, _)| id).collect())
            .collect()
    };
    let node = holders(&c, "/f")[0][0];
    let addr = c.node_addr(c.node_index(node)).to_string();
    // Drain by address: returns once no chunk depends on the node.
    let out = c.dfs_ok(&["node", "drain", &addr]);
    assert!(out.contains("0 chunks depend on it"), "{out}");
    assert!(c.dfs_ok(&["nodes"]).contains("up,drain"));
    for chunk in holders(&c, "/f") {
        let others = chunk.iter().filter(|n| **n != node).count();
        assert!(others >= 3, "every chunk has 3 copies elsewhere: {chunk:?}");
    }
    // Its now extra replicas are trimmed; reads never stopped working.
    c.wait_until(
        "the drained node holds nothing",
        Duration::from_secs(30),
        |c| {
            holders(c, "/f")
                .iter()
                .all(|r| r.len() == 3 && !r.contains(&node))
        },
    );
    let back = c.local("back");
    c.dfs_ok(&["get", "/f", back.to_str().unwrap()]);
    assert!(same_bytes(&f, &back));
    // New chunks avoid it.
    c.dfs_ok(&["put", f.to_str().unwrap(), "/g"]);
    assert!(holders(&c, "/g").iter().all(|r| !r.contains(&node)));
    // A node that chunks depend on cannot be removed; the drained one can.
    let busy = holders(&c, "/f")[0][0];
    let refused = c.dfs(&["node", "remove", &busy.to_string()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("depend"));
    // As the README says: stop the drained node's process, then remove it (a
    // removed node that still runs registers again as a new, empty node).
    let index = c.node_index(node);
    assert!(c.stop_node(index), "the drained node stops cleanly");
    assert!(c
        .dfs_ok(&["node", "remove", &node.to_string()])
        .contains("removed"));
    assert!(!c.dfs_ok(&["nodes"]).contains(&addr));
    assert!(c.dfs_ok(&["fsck"]).contains("status: HEALTHY"));
}
