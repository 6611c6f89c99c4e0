//! dfs-node: a storage node. It keeps checksummed chunk files on local disk
//! (`chunk_store`), serves and pipelines chunk writes (`service`), and talks to
//! meta: registration, heartbeats, garbage deletion and repair copies (`heartbeat`).

pub mod capability;
pub mod chunk_store;
mod disk_space;
pub mod heartbeat;
pub mod metrics;
mod recycle;
pub mod scrub;
pub mod service;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dfs_client::Channels;
use dfs_common::shutdown::Shutdown;
use dfs_proto::pb::chunk_server::ChunkServer;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub meta_addr: String,
    /// Address other nodes and clients use to reach this node.
    pub advertise: String,
    pub zone: String,
    pub metrics_addr: Option<String>,
    /// Capacity to offer instead of the disk's free space (tests, shared disks).
    pub capacity: Option<u64>,
    pub scrub: scrub::ScrubConfig,
    /// Certificates for mutual TLS (None: plaintext, no authentication).
    pub tls: Option<dfs_auth::TlsFiles>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Empty chunk files kept made ahead (`recycle.rs`; 0: none).
    pub spares_ahead: usize,
}

/// Empty chunk files a node keeps made ahead unless told otherwise.
pub const DEFAULT_SPARES_AHEAD: usize = 4096;

/// Keeps empty chunk files made ahead (`recycle.rs`) on a thread of the
/// lowest CPU priority, so the file system's inode allocation happens in
/// idle time instead of on a write's path. A failure (no inodes left, a
/// broken disk) pauses it; the writes then make their own files.
fn make_spares(store: Arc<chunk_store::ChunkStore>, ahead: usize, shutdown: Shutdown) {
    let made = std::thread::Builder::new()
        .name("dfs-node-spares".into())
        .spawn(move || {
            lowest_priority();
            while !shutdown.is_requested() {
                let pause = match store.make_spares(ahead, 16) {
                    Ok(0) => std::time::Duration::from_millis(200),
                    Ok(_) => std::time::Duration::ZERO,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not make spare chunk files");
                        std::time::Duration::from_secs(10)
                    }
                };
                std::thread::sleep(pause);
            }
        });
    if let Err(e) = made {
        tracing::warn!(error = %e, "no thread to make spare chunk files");
    }
}

/// Puts the calling thread at nice 19 (on Linux, PRIO_PROCESS 0 is the
/// calling thread); where that fails it runs at the usual priority.
#[allow(unsafe_code)]
fn lowest_priority() {
    // SAFETY: setpriority only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a thread's priority");
    }
}

/// Who this node is: a uuid kept in its data directory (so a restarted node is
/// the same node) and the id meta gave it.
pub struct NodeIdentity {
    pub uuid: String,
    pub advertise: String,
    pub zone: String,
    node_id: AtomicU64,
    /// The key meta signs chunk tokens with (from registration).
    token_key: std::sync::RwLock<Option<std::sync::Arc<Vec<u8>>>>,
}

impl NodeIdentity {
    pub fn token_key(&self) -> Option<std::sync::Arc<Vec<u8>>> {
        self.token_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_token_key(&self, key: Vec<u8>) {
        if key.is_empty() {
            return;
        }
        *self.token_key.write().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(key));
    }

    pub fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::Relaxed)
    }

    fn set_node_id(&self, id: u64) {
        self.node_id.store(id, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chunk store: {0}")]
    Store(#[from] chunk_store::ChunkError),
    #[error("meta address: {0}")]
    Meta(#[from] dfs_client::ClientError),
    #[error(transparent)]
    Metrics(#[from] dfs_common::metrics_http::MetricsError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("certificates: {0}")]
    Tls(#[from] dfs_auth::AuthError),
}

/// The roles each Chunk method serves. Chunks move between clients and
/// nodes (writes, reads, forwarding, repair copies); only meta lists a
/// node's chunks, and deletions come only from meta (with heartbeats; the
/// DeleteChunks call is meta's too).
pub fn policy(method: &str) -> &'static [dfs_auth::Role] {
    use dfs_auth::Role::{Admin, Client, Meta, Node};
    match method {
        "WriteChunk" | "ReadChunk" => &[Client, Admin, Node],
        "SyncChunks" => &[Client, Admin, Node, Meta],
        "NodeInfo" => &[Client, Admin, Node, Meta],
        "ListChunks" | "DeleteChunks" | "CheckChunk" => &[Meta],
        _ => &[],
    }
}

fn load_uuid(dir: &std::path::Path) -> Result<String, RunError> {
    let path = dir.join("node-uuid");
    let err = |source| RunError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // A new (or emptied) data directory: a new node. Written atomically.
    let uuid = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join("node-uuid.tmp");
    std::fs::write(&tmp, format!("{uuid}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(uuid)
}

/// Serves chunks on `listener` and keeps in touch with meta until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let uuid = load_uuid(&config.data_dir)?;
    let dir = config.data_dir.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || chunk_store::ChunkStore::open(&dir))
            .await
            .map_err(|e| RunError::DataDir {
                path: config.data_dir.clone(),
                source: std::io::Error::other(e),
            })??,
    );
    if config.spares_ahead > 0 {
        make_spares(store.clone(), config.spares_ahead, shutdown.clone());
    }
    let metrics = Arc::new(metrics::NodeMetrics::new());
    if let Some(addr) = &config.metrics_addr {
        dfs_common::metrics_http::serve(addr, metrics.registry.clone(), shutdown.clone().wait())
            .await?;
    }
    let identity = Arc::new(NodeIdentity {
        uuid,
        advertise: config.advertise.clone(),
        zone: config.zone.clone(),
        node_id: AtomicU64::new(0),
        token_key: Default::default(),
    });
    // This node's certificate for every connection it makes (meta, other
    // nodes) and for the clients it serves.
    let server_tls = match &config.tls {
        Some(files) => {
            dfs_client::channels::use_tls(Some(files.client()?));
            Some(files.server()?)
        }
        None => {
            tracing::warn!(
                "running without TLS: anyone who reaches the port may read and write chunks"
            );
            dfs_client::channels::use_tls(None);
            None
        }
    };
    let channels = Channels::new();
    // Several metas (HOST:PORT,HOST:PORT) fail over; a call no meta answers
    // is given up after a few seconds (the next heartbeat tries again).
    let meta = dfs_client::meta::connect_lazy(
        &dfs_client::meta::parse_addrs(&config.meta_addr),
        std::time::Duration::from_secs(5),
    )?
    .client();
    let scrubber = scrub::Scrubber {
        store: store.clone(),
        meta: meta.clone(),
        identity: identity.clone(),
        metrics: metrics.clone(),
        config: config.scrub,
    };
    let scrub_task = tokio::spawn(scrubber.run(shutdown.clone()));
    let (work, queue) = tokio::sync::mpsc::unbounded_channel();
    let worker = heartbeat::Worker {
        meta: meta.clone(),
        store: store.clone(),
        channels: channels.clone(),
        identity: identity.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(worker.run(queue));
    let link = heartbeat::MetaLink {
        meta,
        store: store.clone(),
        identity: identity.clone(),
        metrics: metrics.clone(),
        capacity_override: config.capacity,
        work,
    };
    let link_task = tokio::spawn(link.run(shutdown.clone()));
    tracing::info!(addr = %config.advertise, chunks = store.chunk_count(), data = %config.data_dir.display(), "dfs-node serving");
    let service = service::ChunkService::new(store, channels, identity, metrics);
    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // Chunk pieces (512 KiB) arrive in a few large DATA frames instead
        // of 16 KiB ones: 6% less node CPU per GiB written (bench/NOTES.md).
        .max_frame_size(Some(1 << 20))
        .concurrency_limit_per_connection(1024)
        .timeout(dfs_common::incoming::CALL_DEADLINE)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    let enforce = server_tls.is_some();
    let chunks = ChunkServer::new(service)
        .max_decoding_message_size(dfs_client::channels::MAX_MESSAGE)
        .max_encoding_message_size(dfs_client::channels::MAX_MESSAGE);
    server
        .add_service(dfs_auth::Authorized::new(chunks, policy, enforce))
        .serve_with_incoming_shutdown(
            dfs_common::incoming::limited_incoming(listener, config.max_connections, server_tls),
            shutdown.wait(),
        )
        .await?;
    let _ = link_task.await;
    let _ = scrub_task.await;
    tracing::info!("dfs-node stopped");
    Ok(())
}
