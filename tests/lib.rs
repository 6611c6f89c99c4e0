//! Test harness: starts a real cluster (dfs-meta plus storage nodes, each its own
//! process on 127.0.0.1) in a temp directory, runs the real `dfs` CLI against
//! it, and kills every process when dropped, printing the logs if the test failed.
//! The binaries come from the cargo target directory (`make test` builds them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// Directory holding dfs-meta, dfs-node and dfs.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DFS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/<test> -> target/debug
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in ["dfs-meta", "dfs-node", "dfs"] {
        assert!(
            dir.join(bin).exists(),
            "{} missing: run `cargo build --bins` (make test does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// A port for a daemon to listen on. Taken below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out for `bind(0)` is also what it
/// hands out as the local port of outgoing connections, so between this call
/// and the daemon's bind another test's connection could take it. Ports are
/// spread by process id and handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(97);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + base.wrapping_add(n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    /// Store URL; None = SQLite file in the cluster's temp dir.
    pub store: Option<String>,
    pub chunk_size: u32,
    pub dead_after_secs: u64,
    /// Give every daemon (and mount) a /metrics endpoint.
    pub metrics: bool,
    /// Meta's `--gc-grace-secs` (its default when None).
    pub gc_grace_secs: Option<u64>,
    /// More arguments for meta (e.g. `--session-lease-secs 2`).
    pub meta_args: Vec<String>,
    /// Environment for meta (e.g. DFS_META_FAILPOINTS).
    pub meta_env: Vec<(String, String)>,
    /// More arguments for every node (by default a small pool of chunk
    /// files made ahead: thousands per node per test would load the suite).
    pub node_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            store: None,
            chunk_size: 4 << 20,
            dead_after_secs: 3,
            metrics: false,
            gc_grace_secs: None,
            meta_args: Vec::new(),
            meta_env: Vec::new(),
            node_args: vec!["--spares-ahead".into(), "64".into()],
        }
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub meta_addr: String,
    pub store_url: String,
    pub opts: Options,
    /// Metrics endpoints: meta first, then one per node (when `opts.metrics`).
    pub meta_metrics: Option<String>,
    pub node_metrics: Vec<String>,
    meta: Option<Child>,
    /// Meta when started through `launcher` (`start_meta_apart`).
    meta_pid: Option<u32>,
    launcher: Option<Launcher>,
    /// More metas on the same store (`add_meta`), for failover.
    extra_metas: Vec<(String, Option<Child>)>,
    nodes: Vec<(String, Option<Child>)>,
    /// Extra command-line arguments per node index (`set_node_args`).
    node_args: std::collections::HashMap<usize, Vec<String>>,
    /// The cluster's CA and certificates (None: DFS_TEST_INSECURE=1, plaintext).
    pub pki: Option<PathBuf>,
}

impl Cluster {
    /// Starts meta and `opts.nodes` nodes and waits until all nodes are up.
    pub fn start(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store_url = opts
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/meta.db", dir.path().display()));
        let mut c = Cluster {
            meta_addr: format!("127.0.0.1:{}", free_port()),
            store_url,
            dir,
            opts: opts.clone(),
            meta_metrics: opts.metrics.then(|| format!("127.0.0.1:{}", free_port())),
            node_metrics: Vec::new(),
            meta: None,
            meta_pid: None,
            launcher: Some(Launcher::new()),
            extra_metas: Vec::new(),
            nodes: Vec::new(),
            node_args: Default::default(),
            pki: None,
        };
        c.pki = make_pki(c.dir.path());
        c.start_meta();
        for _ in 0..opts.nodes {
            c.add_node();
        }
        c.wait_nodes_up(opts.nodes);
        c
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap()
    }

    pub fn start_meta(&mut self) {
        let child = self.spawn_meta(&self.meta_addr.clone(), "meta", self.meta_metrics.clone());
        self.meta = Some(child);
        self.wait_until("meta answers", Duration::from_secs(30), |c| {
            c.dfs(&["status"]).status.success()
        });
    }

    /// Starts one more meta on the same store; returns its index. Nodes and
    /// mounts started (or restarted) from now on know every meta's address.
    pub fn add_meta(&mut self) -> usize {
        let addr = format!("127.0.0.1:{}", free_port());
        let i = self.extra_metas.len();
        let child = self.spawn_meta(&addr, &format!("meta{}", i + 1), None);
        self.extra_metas.push((addr.clone(), Some(child)));
        self.wait_until("the added meta answers", Duration::from_secs(30), |c| {
            Command::new(bin_dir().join("dfs"))
                .args(c.tls_args("admin"))
                .args(["--meta", &addr, "status"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        i
    }

    pub fn extra_meta_addr(&self, i: usize) -> &str {
        &self.extra_metas[i].0
    }

    /// Every meta's address, the first meta's first (what clients are given).
    pub fn meta_addrs(&self) -> String {
        std::iter::once(self.meta_addr.as_str())
            .chain(self.extra_metas.iter().map(|(a, _)| a.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL to an added meta.
    pub fn kill_extra_meta(&mut self, i: usize) {
        if let Some(mut child) = self.extra_metas[i].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn_meta(&self, addr: &str, log: &str, metrics: Option<String>) -> Child {
        let mut cmd = Command::new(bin_dir().join("dfs-meta"));
        if let Some(m) = &metrics {
            cmd.args(["--metrics", m]);
        }
        if let Some(g) = self.opts.gc_grace_secs {
            cmd.args(["--gc-grace-secs", &g.to_string()]);
        }
        cmd.args(&self.opts.meta_args);
        cmd.args(self.tls_args("meta"));
        cmd.envs(self.opts.meta_env.iter().cloned());
        cmd.args(["--listen", addr, "--store", &self.store_url])
            .args(["--chunk-size", &self.opts.chunk_size.to_string()])
            .args([
                "--dead-after-secs",
                &self.opts.dead_after_secs.to_string(),
                "--heartbeat-ms",
                "300",
            ])
            .stdout(Stdio::null())
            .stderr(self.log(log))
            .spawn()
            .unwrap()
    }

    /// Starts one more node; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = format!("127.0.0.1:{}", free_port());
        self.nodes.push((addr, None));
        if self.opts.metrics {
            self.node_metrics.push(format!("127.0.0.1:{}", free_port()));
        }
        self.restart_node(i);
        i
    }

    pub fn node_data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    pub fn node_addr(&self, i: usize) -> &str {
        &self.nodes[i].0
    }

    /// Extra arguments node `i` gets from its next (re)start on.
    pub fn set_node_args(&mut self, i: usize, args: &[&str]) {
        self.node_args
            .insert(i, args.iter().map(|a| a.to_string()).collect());
    }

    pub fn restart_node(&mut self, i: usize) {
        let data = self.node_data(i);
        let mut cmd = Command::new(bin_dir().join("dfs-node"));
        cmd.args(&self.opts.node_args);
        cmd.args(self.node_args.get(&i).into_iter().flatten());
        cmd.args(self.tls_args(&format!("node{i}")));
        if let Some(m) = self.node_metrics.get(i) {
            cmd.args(["--metrics", m]);
        }
        let child = cmd
            .args(["--listen", &self.nodes[i].0, "--meta", &self.meta_addrs()])
            .arg("--data")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(self.log(&format!("node{i}")))
            .spawn()
            .unwrap();
        self.nodes[i].1 = Some(child);
    }

    /// The process id of node `i`, while it runs.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].1.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to clean up, as when a machine dies.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_meta(&mut self) {
        if let Some(mut child) = self.meta.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.meta_pid.take() {
            signal(pid, "KILL");
            let start = Instant::now();
            while process_alive(pid) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts meta from the launcher shell, which holds no descriptor of any
    /// file on a mount. Use it when this process has files open on a mount:
    /// a process forked from this one would close its copies at exec, each
    /// close a FUSE flush waiting for the very meta being started (until the
    /// mount's meta_timeout), as NFS would for its server.
    pub fn start_meta_apart(&mut self) {
        let mut args = vec![
            "--listen".to_string(),
            self.meta_addr.clone(),
            "--store".into(),
            self.store_url.clone(),
            "--chunk-size".into(),
            self.opts.chunk_size.to_string(),
            "--dead-after-secs".into(),
            self.opts.dead_after_secs.to_string(),
            "--heartbeat-ms".into(),
            "300".into(),
        ];
        if let Some(m) = &self.meta_metrics {
            args.extend(["--metrics".to_string(), m.clone()]);
        }
        if let Some(g) = self.opts.gc_grace_secs {
            args.extend(["--gc-grace-secs".to_string(), g.to_string()]);
        }
        args.extend(self.opts.meta_args.iter().cloned());
        args.extend(self.tls_args("meta"));
        let log = self.dir.path().join("meta.log");
        let env = self.opts.meta_env.clone();
        let launcher = self.launcher.as_mut().expect("the launcher runs");
        let pid = launcher.spawn(&bin_dir().join("dfs-meta"), &args, &env, &log);
        self.meta_pid = Some(pid);
        self.wait_until("meta answers", Duration::from_secs(30), |c| {
            c.dfs(&["status"]).status.success()
        });
    }

    /// Waits until meta's invalidations reach mount `m` (`live`: its caches
    /// keep entries then) or stop reaching it, from the mount's
    /// `dfs_fuse_watch_live` (mounted with metrics).
    pub fn wait_watch(&self, m: &Mount, live: bool) {
        let want = if live { 1.0 } else { 0.0 };
        self.wait_until("the mount's watch state", Duration::from_secs(60), |_| {
            let page = http_get(
                m.metrics.as_ref().expect("mounted with metrics"),
                "/metrics",
            );
            metric_value(&page, "dfs_fuse_watch_live") == want
        });
    }

    /// The first meta's process id while it runs (for signals).
    pub fn meta_pid(&self) -> Option<u32> {
        self.meta.as_ref().map(Child::id).or(self.meta_pid)
    }

    /// SIGTERM to meta; returns whether it exited cleanly (status 0) within 10 s.
    pub fn stop_meta(&mut self) -> bool {
        match self.meta.take() {
            Some(child) => terminate(child),
            None => true,
        }
    }

    /// SIGTERM to a node; returns whether it exited cleanly within 10 s.
    pub fn stop_node(&mut self, i: usize) -> bool {
        match self.nodes[i].1.take() {
            Some(child) => terminate(child),
            None => true,
        }
    }

    /// The certificate arguments of a program holding certificate `name`
    /// (`--insecure` when the cluster runs without TLS).
    pub fn tls_args(&self, name: &str) -> Vec<String> {
        match self.cert(name) {
            Some((pki, crt, key)) => vec![
                "--tls-dir".into(),
                pki.display().to_string(),
                "--cert".into(),
                crt.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ],
            None => vec!["--insecure".into()],
        }
    }

    /// The mount options for certificate `name` (`client` for mounts).
    pub fn tls_mount_options(&self, name: &str) -> String {
        match self.cert(name) {
            Some((pki, crt, key)) => format!(
                "ca={},cert={},key={}",
                pki.join("ca.crt").display(),
                crt.display(),
                key.display()
            ),
            None => "insecure".into(),
        }
    }

    /// The CA directory and certificate `name`'s files, issued on first use
    /// (None: the cluster runs without TLS).
    fn cert(&self, name: &str) -> Option<(&Path, PathBuf, PathBuf)> {
        let pki = self.pki.as_deref()?;
        let crt = pki.join(format!("{name}.crt"));
        if !crt.exists() {
            issue(pki, name);
        }
        Some((pki, crt, pki.join(format!("{name}.key"))))
    }

    /// A raw gRPC channel to the server of `role` at `addr`, presenting
    /// certificate `cert` (None: none at all). Plaintext when the cluster is.
    pub async fn grpc_channel(
        &self,
        addr: &str,
        role: dfs_auth::Role,
        cert: Option<&str>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let Some(pki) = &self.pki else {
            return Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await;
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(pki.join("ca.crt")).unwrap(),
            ))
            .domain_name(role.server_name());
        if let Some((_, crt, key)) = cert.and_then(|name| self.cert(name)) {
            let read = |p: PathBuf| std::fs::read(p).unwrap();
            tls = tls.identity(Identity::from_pem(read(crt), read(key)));
        }
        Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// Runs the `dfs` CLI against this cluster.
    pub fn dfs(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("dfs"))
            .env("DFS_META", self.meta_addrs())
            .args(self.tls_args("admin"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `dfs` and panics unless it succeeds; returns stdout.
    pub fn dfs_ok(&self, args: &[&str]) -> String {
        let out = self.dfs(args);
        assert!(
            out.status.success(),
            "dfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Unlinked files meta still keeps for a holder (`dfs fsck`'s count).
    pub fn orphans(&self) -> u64 {
        let doc: serde_json::Value =
            serde_json::from_str(&self.dfs_ok(&["--json", "fsck"])).expect("fsck's JSON");
        doc["orphans"].as_u64().expect("fsck counts orphans")
    }

    pub fn status_field(&self, field: &str) -> String {
        let out = self.dfs_ok(&["status"]);
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}: ")))
            .unwrap_or_else(|| panic!("status has no {field}: {out}"))
            .to_string()
    }

    pub fn wait_nodes_up(&self, n: usize) {
        let want = format!("{n} up");
        self.wait_until(&format!("{n} nodes up"), Duration::from_secs(30), |c| {
            c.dfs(&["status"])
                .stdout
                .windows(want.len())
                .any(|w| w == want.as_bytes())
        });
    }

    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out after {timeout:?} waiting for: {what}");
    }

    /// Writes `len` random bytes to a local file in the cluster dir.
    pub fn random_file(&self, name: &str, len: usize) -> PathBuf {
        use rand::RngCore;
        let mut data = vec![0u8; len];
        rand::thread_rng().fill_bytes(&mut data);
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// The harness index of the node meta calls `node_id` (matched by address).
    pub fn node_index(&self, node_id: u64) -> usize {
        let nodes = self.dfs_ok(&["nodes"]);
        let addr = nodes
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node_id.to_string().as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("node {node_id} not in: {nodes}"))
            .to_string();
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].0 == addr)
            .expect("node started by this harness")
    }

    pub fn local(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn terminate(mut child: Child) -> bool {
    let pid = child.id() as libc::pid_t;
    // kill(1) rather than libc::kill keeps this crate free of unsafe code.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A shell started with the cluster, before any mount, that starts processes
/// on request (see `Cluster::start_meta_apart`).
struct Launcher {
    shell: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Launcher {
    fn new() -> Launcher {
        let mut shell = Command::new("bash")
            .arg("-c")
            .arg("while IFS= read -r line; do eval \"$line\"; done")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = shell.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(shell.stdout.take().unwrap());
        Launcher {
            shell,
            stdin,
            stdout,
        }
    }

    /// Starts `program args` in the background with `env`, output appended
    /// to `log`; returns its pid.
    fn spawn(
        &mut self,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> u32 {
        let mut line = String::from("env");
        for (k, v) in env {
            line.push_str(&format!(" {}", shell_quote(&format!("{k}={v}"))));
        }
        line.push_str(&format!(" {}", shell_quote(&program.to_string_lossy())));
        for a in args {
            line.push_str(&format!(" {}", shell_quote(a)));
        }
        line.push_str(&format!(
            " >>{} 2>&1 </dev/null & echo $!\n",
            shell_quote(&log.to_string_lossy())
        ));
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        let mut pid = String::new();
        self.stdout.read_line(&mut pid).unwrap();
        pid.trim().parse().unwrap()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// Whether `pid` runs (a zombie does not).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_meta();
        for i in 0..self.extra_metas.len() {
            self.kill_extra_meta(i);
        }
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("==== {} (last 40 lines) ====", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// A FUSE mount of a cluster; unmounted when dropped (even when a test fails).
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    /// Its /metrics endpoint, when the cluster has metrics on.
    pub metrics: Option<String>,
}

impl Cluster {
    /// Mounts the cluster with the real `dfs-fuse` (background mode: it returns
    /// once the mount is ready).
    pub fn mount(&self, name: &str) -> Mount {
        self.mount_with(name, "cache_size=64M")
    }

    /// Mounts with the given mount options (`cache_size=` is also the mount's
    /// memory bound), plus allow_other, a log and the metrics endpoint.
    pub fn mount_with(&self, name: &str, options: &str) -> Mount {
        self.mount_via(name, options, &self.meta_addrs())
    }

    /// Mounts like `mount_with`, giving the mount only `meta_addrs`.
    pub fn mount_via(&self, name: &str, options: &str, meta_addrs: &str) -> Mount {
        self.try_mount(name, options, meta_addrs, "client")
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    /// Mounts with certificate `cert` (issued on first use: `client`, or a
    /// name of your choosing); the error is the mount command's stderr.
    pub fn mount_as(&self, name: &str, cert: &str) -> Result<Mount, String> {
        self.try_mount(name, "cache_size=64M", &self.meta_addrs(), cert)
    }

    fn try_mount(
        &self,
        name: &str,
        options: &str,
        meta_addrs: &str,
        cert: &str,
    ) -> Result<Mount, String> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let log = self.dir.path().join(format!("fuse-{name}.log"));
        let metrics = self
            .opts
            .metrics
            .then(|| format!("127.0.0.1:{}", free_port()));
        let mut options = format!(
            "{options},allow_other,log={},{}",
            log.display(),
            self.tls_mount_options(cert)
        );
        if let Some(m) = &metrics {
            options.push_str(&format!(",metrics={m}"));
        }
        // DFS_TEST_WRITEBACK=1 runs every mount with the kernel writeback cache.
        if std::env::var("DFS_TEST_WRITEBACK").is_ok_and(|v| v == "1") {
            options.push_str(",writeback_cache");
        }
        let out = Command::new(bin_dir().join("dfs-fuse"))
            .arg(meta_addrs)
            .arg(&path)
            .arg("-o")
            .arg(options)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Mount { path, log, metrics })
    }
}

impl Mount {
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The process id of the daemon serving this mount (the `-f` child).
    pub fn daemon_pid(&self) -> Option<u32> {
        let target = self.path.to_string_lossy().into_owned();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_daemon = args.first()?.ends_with(b"dfs-fuse")
                && args.contains(&b"-f".as_slice())
                && args.contains(&target.as_bytes());
            is_daemon.then_some(pid)
        })
    }

    /// Unmounts; returns whether a plain (non-lazy) unmount worked.
    pub fn unmount(&self) -> bool {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        ok
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "==== {} ====\n{}",
                self.log.display(),
                text.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        if is_mounted(&self.path) {
            self.unmount();
        }
    }
}

/// Whether anything is mounted at `path`.
/// A CA for one test cluster, in DIR/pki (none with DFS_TEST_INSECURE=1:
/// the whole suite then runs in plaintext, for debugging).
fn make_pki(dir: &Path) -> Option<PathBuf> {
    if std::env::var("DFS_TEST_INSECURE").is_ok_and(|v| v == "1") {
        return None;
    }
    let pki = dir.join("pki");
    dfs_auth::pki::init_ca(&pki, "test CA").unwrap();
    Some(pki)
}

/// Issues certificate `name` from the test CA. Its role is the name's
/// prefix: meta, node (node0, node1...), admin, or else client.
pub fn issue(pki: &Path, name: &str) {
    let role = [
        dfs_auth::Role::Meta,
        dfs_auth::Role::Node,
        dfs_auth::Role::Admin,
    ]
    .into_iter()
    .find(|r| name.starts_with(r.as_str()))
    .unwrap_or(dfs_auth::Role::Client);
    dfs_auth::pki::issue(pki, pki, role, name, &[], 30).unwrap();
}

pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// A plain HTTP/1.0 GET against 127.0.0.1; returns the body (panics unless 200).
pub fn http_get(addr: &str, path_and_query: &str) -> String {
    match try_http_get(addr, path_and_query) {
        Ok(body) => body,
        Err(head) => panic!("GET {path_and_query}: {head}"),
    }
}

/// `http_get` for a server that may not be ready: the response head unless 200.
pub fn try_http_get(addr: &str, path_and_query: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(body.to_string())
    } else {
        Err(head.to_string())
    }
}

/// The names in `dir`, sorted, as a listing shows them.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            let name = e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
            name.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Drops the kernel's page, dentry and inode caches (root): what a mount
/// answers next comes from its own caches or from meta.
pub fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
}

/// How many files `m` opened from a chunk map it held, without asking meta
/// (`dfs_fuse_open_maps_total{source="cache"}`).
pub fn opens_from_held_maps(m: &Mount) -> f64 {
    let page = http_get(
        m.metrics.as_ref().expect("mounted with metrics"),
        "/metrics",
    );
    metric_or_zero(&page, "dfs_fuse_open_maps_total{source=\"cache\"}")
}

/// The value of a series in a Prometheus text page, 0 when it is absent (a
/// labelled counter appears only once its label set has been counted).
pub fn metric_or_zero(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The value of an unlabelled counter or gauge in a Prometheus text page.
pub fn metric_value(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in the page"))
}

/// Runs a shell command line in `dir`; panics with its output unless it succeeds.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a Python script with ARGS; returns its output (asserting success).
pub fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses `dfs stat` chunk lines into (index, replica node ids, down flags).
pub fn stat_chunks(stat: &str) -> Vec<(u64, Vec<(u64, bool)>)> {
    stat.lines()
        .filter(|l| l.starts_with("chunk "))
        .map(|l| {
            let index = l.split_whitespace().nth(1).unwrap().parse().unwrap();
            let nodes = l.split("nodes=").nth(1).unwrap_or("");
            let replicas = nodes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|n| {
                    (
                        n.split('@').next().unwrap().parse().unwrap(),
                        n.ends_with("(down)"),
                    )
                })
                .collect();
            (index, replicas)
        })
        .collect()
}

/// Unmounts a node's small disk when the test ends.
pub struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Restarts node `i` on a tmpfs of `size` (same identity, no data), claiming
/// 1 TiB of capacity so that placement keeps choosing it.
pub fn onto_small_disk(c: &mut Cluster, i: usize, size: &str) -> SmallDisk {
    let data = c.node_data(i);
    let uuid = std::fs::read(data.join("node-uuid")).unwrap();
    assert!(c.stop_node(i));
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&data)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount a small tmpfs");
    let disk = SmallDisk(data.clone());
    std::fs::write(data.join("node-uuid"), uuid).unwrap();
    c.set_node_args(i, &["--capacity", "1099511627776"]);
    c.restart_node(i);
    disk
}

/// Sends `signal` (STOP, CONT, KILL...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

/// Sets a process's soft limit on open files (prlimit; the hard limit
/// stays, so it can be raised again). Returns the soft limit it had.
pub fn set_open_file_limit(pid: u32, soft: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let old = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    old
}

/// How many files a process has open now.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The admin URL of the test PostgreSQL server, if one is configured.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("DFS_TEST_POSTGRES_URL") {
        Ok(u) => Some(u),
        Err(_)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("DFS_REQUIRE_POSTGRES").is_some() =>
        {
            panic!("DFS_TEST_POSTGRES_URL is not set: PostgreSQL tests cannot be skipped here")
        }
        Err(_) => {
            eprintln!("SKIP: DFS_TEST_POSTGRES_URL not set (make test sets it)");
            None
        }
    }
}

/// Creates a fresh database on the test server and returns its URL.
pub fn fresh_postgres_db(admin: &str) -> String {
    let db = format!("dfs_e2e_{}", rand::random::<u64>());
    let out = Command::new("psql")
        .args([admin, "-qc", &format!("CREATE DATABASE {db}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}/{db}", admin.rsplit_once('/').unwrap().0)
}
