//! `dfs-meta`: parses the command line and hands over to `dfs_meta::run`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "dfs-meta", version, about = "dfs metadata server")]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Metadata store: sqlite://PATH (created if missing) or postgres://USER:PASS@HOST/DB.
    #[arg(long, env = "DFS_META_STORE", default_value = "sqlite://dfs-meta.db")]
    store: String,
    /// Address for the Prometheus /metrics endpoint (off when not given).
    #[arg(long)]
    metrics: Option<String>,
    /// Chunk size in bytes for a NEW store (an existing store keeps its own).
    #[arg(long, default_value_t = 4 << 20)]
    chunk_size: u32,
    /// Replicas per chunk for a NEW store.
    #[arg(long, default_value_t = 3)]
    replication: u32,
    /// Fewest replicas a write may commit with while nodes are down.
    #[arg(long, default_value_t = 2)]
    min_write_replicas: u32,
    /// Seconds without a heartbeat after which a node counts as down.
    #[arg(long, default_value_t = 10)]
    dead_after_secs: u64,
    /// Hours after which a file unlinked while open, and never released by its
    /// client, is deleted.
    #[arg(long, default_value_t = 24)]
    orphan_ttl_hours: u64,
    /// Seconds a replica that became garbage is kept before its node deletes
    /// it (readers holding the old chunk map go on meanwhile)
    #[arg(long, default_value_t = 10)]
    gc_grace_secs: u64,
    /// Seconds a client session lives without renewal (a killed mount's
    /// locks and open unlinked files are released after this).
    #[arg(long, default_value_t = 30)]
    session_lease_secs: u64,
    /// Heartbeat interval nodes are told to use, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Exports file: what each client certificate may do with files (see
    /// README, Security). Without it every client certificate may do everything.
    #[arg(long)]
    exports: Option<std::path::PathBuf>,
    /// Connections served at once; more wait to be accepted until one closes.
    #[arg(long, default_value_t = dfs_common::incoming::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    #[command(flatten)]
    tls: dfs_auth::TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dfs_common::logging::init();
    let args = Args::parse();
    let config = dfs_meta::Config {
        store_url: args.store,
        metrics_addr: args.metrics,
        format: dfs_meta::FormatOptions {
            chunk_size: args.chunk_size,
            replication: args.replication,
        },
        min_write_replicas: args.min_write_replicas,
        dead_after: Duration::from_secs(args.dead_after_secs.max(1)),
        orphan_ttl: Duration::from_secs(args.orphan_ttl_hours.max(1) * 3600),
        gc_grace: Duration::from_secs(args.gc_grace_secs),
        session_lease: Duration::from_secs(args.session_lease_secs.clamp(1, 3600)),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.clamp(100, 60_000)),
        repair_interval: Duration::from_millis(args.heartbeat_ms.clamp(100, 2_000)),
        tls: args.tls.files("meta"),
        max_connections: args.max_connections,
        exports: std::sync::Arc::new(match &args.exports {
            Some(path) => dfs_meta::exports::Exports::load(path).map_err(anyhow::Error::msg)?,
            None => Default::default(),
        }),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let (trigger, shutdown) = dfs_common::shutdown::channel();
    tokio::spawn(dfs_common::shutdown::on_signals(trigger));
    dfs_meta::run(config, listener, shutdown).await?;
    Ok(())
}
