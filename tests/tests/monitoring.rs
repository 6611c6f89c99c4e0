//! Monitoring end to end: a cluster with every /metrics endpoint on, a small
//! workload through a real mount, and a real Prometheus scraping it with the
//! shipped alert rules. Every dashboard panel's PromQL and every alert rule
//! must return data, so a dashboard naming a metric the code does not export
//! fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfs_tests::{free_port, http_get, metric_value, Cluster, Options};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shipped_prometheus_files_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "dfs-alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (make test installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn reading_a_file_twice_raises_hits_not_misses() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("mnt");
    let metrics = m.metrics.clone().unwrap();
    std::fs::write(m.join("f"), vec![3u8; 5 << 20]).unwrap();
    // A second mount reads, so the cache starts empty.
    let reader = c.mount("reader");
    let rm = reader.metrics.clone().unwrap();
    std::fs::read(reader.join("f")).unwrap();
    drop_page_cache(&reader.join("f"));
    let before = http_get(&rm, "/metrics");
    std::fs::read(reader.join("f")).unwrap();
    let after = http_get(&rm, "/metrics");
    let (h0, h1) = (
        metric_value(&before, "dfs_fuse_cache_hits_total"),
        metric_value(&after, "dfs_fuse_cache_hits_total"),
    );
    let (m0, m1) = (
        metric_value(&before, "dfs_fuse_cache_misses_total"),
        metric_value(&after, "dfs_fuse_cache_misses_total"),
    );
    assert!(h1 >= h0 + 5.0, "second read: hits {h0} -> {h1}");
    assert_eq!(m1, m0, "second read: no new misses");
    assert_eq!(
        metric_value(&after, "dfs_fuse_cache_bytes"),
        (5 << 20) as f64
    );
    let writer = http_get(&metrics, "/metrics");
    assert_eq!(
        metric_value(&writer, "dfs_fuse_write_bytes_total"),
        (5 << 20) as f64
    );
    assert_eq!(
        metric_value(&writer, "dfs_fuse_dirty_bytes"),
        0.0,
        "nothing left uncommitted after close"
    );
}

#[test]
fn every_dashboard_panel_and_alert_rule_returns_data() {
    let c = Cluster::start(Options {
        chunk_size: 1 << 20,
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("mnt");
    // Workload: writes, reads (cache misses then hits), an error, a CLI upload.
    std::fs::write(m.join("f"), vec![1u8; 3 << 20]).unwrap();
    assert!(std::fs::metadata(m.join("missing")).is_err());
    let local = c.random_file("up", 2 << 20);
    c.dfs_ok(&["put", local.to_str().unwrap(), "/up"]);

    let prom_dir = c.dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let nodes: Vec<String> = c.node_metrics.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: dfs-meta\n    static_configs:\n      - targets: [\"{meta}\"]\n  - job_name: dfs-node\n    static_configs:\n      - targets: [{nodes}]\n  - job_name: dfs-fuse\n    static_configs:\n      - targets: [\"{fuse}\"]\n",
        rules = repo().join("deploy/prometheus/dfs-alerts.yml").display(),
        meta = c.meta_metrics.as_ref().unwrap(),
        nodes = nodes.join(", "),
        fuse = m.metrics.as_ref().unwrap(),
    );
    std::fs::write(prom_dir.join("prometheus.yml"), config).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (make test installs it)"),
    );
    // Keep reading while Prometheus collects a few samples, so rates are real.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), m.join("f"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Past the kernel's page cache, so the mount's cache sees the reads.
                drop_page_cache(&path);
                let _ = std::fs::read(&path);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    c.wait_until(
        "prometheus scrapes every target",
        Duration::from_secs(60),
        |_| {
            // 503 while Prometheus is still starting.
            std::net::TcpStream::connect(&web).is_ok()
                && dfs_tests::try_http_get(&web, "/api/v1/targets?state=active")
                    .is_ok_and(|targets| targets.matches("\"health\":\"up\"").count() == 5)
        },
    );
    std::thread::sleep(Duration::from_secs(6));

    let mut queries: Vec<(String, String)> = Vec::new();
    for dash in ["cluster-overview", "fuse-client", "repair-scrub"] {
        let path = repo().join(format!("deploy/grafana/dashboards/{dash}.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in json["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().to_string();
                queries.push((format!("{dash}: {}", panel["title"]), expr));
            }
        }
    }
    let rules: serde_json::Value = serde_json::from_str(&http_get(&web, "/api/v1/rules")).unwrap();
    let mut rule_count = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            rule_count += 1;
            // An alert returns nothing while healthy; with `bool` comparisons the
            // same expression must still find every metric it names.
            let q = rule["query"].as_str().unwrap();
            let q = [" > ", " < ", " == "].iter().fold(q.to_string(), |q, op| {
                q.replace(op, &format!("{}bool ", op))
            });
            queries.push((format!("alert {}", rule["name"]), q));
        }
    }
    assert_eq!(rule_count, 7, "all alert rules loaded");
    let mut empty = Vec::new();
    for (what, q) in &queries {
        let body = http_get(&web, &format!("/api/v1/query?query={}", encode(q)));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{what}: {q}: {body}");
        if json["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            empty.push(format!("{what}: {q}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}

/// Drops the kernel's cached pages of one file, so the next read reaches the
/// mount (which keeps the page cache of unchanged files across opens).
fn drop_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: a plain syscall on a descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}
