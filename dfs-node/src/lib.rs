//! dfs-node: a storage node. It keeps checksummed chunk files on local disk
//! (`chunk_store`), serves and pipelines chunk writes (`service`), and talks to
//! meta: registration, heartbeats, garbage deletion and repair copies (`heartbeat`).

pub mod chunk_store;
mod disk_space;
pub mod heartbeat;
pub mod metrics;
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
}

/// Who this node is: a uuid kept in its data directory (so a restarted node is
/// the same node) and the id meta gave it.
pub struct NodeIdentity {
    pub uuid: String,
    pub advertise: String,
    pub zone: String,
    node_id: AtomicU64,
}

impl NodeIdentity {
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
    });
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
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(
            ChunkServer::new(service)
                .max_decoding_message_size(dfs_client::channels::MAX_MESSAGE)
                .max_encoding_message_size(dfs_client::channels::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            dfs_common::incoming::nodelay_incoming(listener),
            shutdown.wait(),
        )
        .await?;
    let _ = link_task.await;
    let _ = scrub_task.await;
    tracing::info!("dfs-node stopped");
    Ok(())
}
