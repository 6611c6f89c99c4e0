//! `dfs-node`: parses the command line and hands over to `dfs_node::run`.

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "dfs-node", version, about = "dfs storage node")]
struct Args {
    /// Address to serve the chunk service on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
    /// Metadata server address (HOST:PORT).
    #[arg(long, env = "DFS_META", default_value = "127.0.0.1:7000")]
    meta: String,
    /// Directory for chunk files (created if missing).
    #[arg(long)]
    data: std::path::PathBuf,
    /// Failure zone (rack, host, room); replicas spread over zones when there are enough.
    #[arg(long, default_value = "")]
    zone: String,
    /// Address clients and other nodes reach this node at (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Address for the Prometheus /metrics endpoint (off when not given).
    #[arg(long)]
    metrics: Option<String>,
    /// Bytes to offer instead of the disk's free space.
    #[arg(long)]
    capacity: Option<u64>,
    /// Scrubber speed: bytes of chunks verified per second.
    #[arg(long, default_value_t = 16 << 20)]
    scrub_bytes_per_sec: u64,
    /// Seconds between two full scrub passes.
    #[arg(long, default_value_t = 24 * 3600)]
    scrub_pause_secs: u64,
    /// Connections served at once; more wait to be accepted until one closes.
    #[arg(long, default_value_t = dfs_common::incoming::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Empty chunk files kept made ahead of the writes that need them, so a
    /// write does not wait for the file system to allocate an inode (0: off).
    #[arg(long, default_value_t = dfs_node::DEFAULT_SPARES_AHEAD)]
    spares_ahead: usize,
    #[command(flatten)]
    tls: dfs_auth::TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dfs_common::logging::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let advertise = match args.advertise {
        Some(a) => a,
        None if local.ip().is_unspecified() => {
            anyhow::bail!(
                "--listen {} is a wildcard address: give --advertise HOST:PORT",
                args.listen
            )
        }
        None => local.to_string(),
    };
    let config = dfs_node::Config {
        data_dir: args.data,
        meta_addr: args.meta,
        advertise,
        zone: args.zone,
        metrics_addr: args.metrics,
        capacity: args.capacity,
        scrub: dfs_node::scrub::ScrubConfig {
            bytes_per_sec: args.scrub_bytes_per_sec,
            pause: std::time::Duration::from_secs(args.scrub_pause_secs),
        },
        tls: args.tls.files("node"),
        max_connections: args.max_connections,
        spares_ahead: args.spares_ahead,
    };
    let (trigger, shutdown) = dfs_common::shutdown::channel();
    tokio::spawn(dfs_common::shutdown::on_signals(trigger));
    dfs_node::run(config, listener, shutdown).await?;
    Ok(())
}
