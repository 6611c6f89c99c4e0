//! dfs-meta: the metadata server. The namespace, chunk map and node registry
//! live in SQL (`store`); `service` is the thin gRPC adapter; `repair` plans
//! re-replication of chunks that lost copies.

pub mod auth;
pub mod convert;
pub mod exports;
pub mod failpoints;
pub mod grants;
pub mod hex;
pub mod leader;
pub mod metrics;
pub mod node_client;
pub mod placement;
pub mod presence;
pub mod purge;
pub mod repair;
pub mod request;
pub mod service;
pub mod sessions;
pub mod store;
pub mod strays;
pub mod view;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use dfs_common::shutdown::Shutdown;
use dfs_proto::pb::meta_server::MetaServer;
use tokio::net::TcpListener;

pub use store::{FormatOptions, Store};

/// Everything `run` needs; the binary fills it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub store_url: String,
    pub metrics_addr: Option<String>,
    pub format: FormatOptions,
    /// Fewest replicas a write may commit with when not enough nodes are up.
    pub min_write_replicas: u32,
    pub heartbeat_interval: Duration,
    /// A node silent this long is down: its replicas stop counting.
    pub dead_after: Duration,
    pub repair_interval: Duration,
    /// Orphans (unlinked while open) not released within this time are deleted:
    /// their client is gone.
    pub orphan_ttl: Duration,
    /// A replica that became garbage is deleted on its node only this long
    /// after, and once the change is durable: readers still holding the old
    /// chunk map go on reading it meanwhile.
    pub gc_grace: Duration,
    /// A session not renewed within this is over: its locks, orphans and
    /// chunk allocations are released.
    pub session_lease: Duration,
    /// Certificates for mutual TLS (None: plaintext, no authentication).
    pub tls: Option<dfs_auth::TlsFiles>,
    /// What each client certificate may do with files.
    pub exports: Arc<exports::Exports>,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_url: "sqlite://dfs-meta.db".into(),
            metrics_addr: None,
            format: FormatOptions::default(),
            min_write_replicas: 2,
            heartbeat_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(10),
            repair_interval: Duration::from_secs(2),
            orphan_ttl: Duration::from_secs(24 * 3600),
            gc_grace: Duration::from_secs(10),
            session_lease: Duration::from_secs(30),
            tls: None,
            exports: Default::default(),
            max_connections: dfs_common::incoming::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the metadata store: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Metrics(#[from] dfs_common::metrics_http::MetricsError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot read the listener address: {0}")]
    Io(#[from] std::io::Error),
    #[error("certificates: {0}")]
    Tls(#[from] dfs_auth::AuthError),
}

/// Largest request meta reads: a node's registration lists its chunk ids
/// (1,000,000 take about 5 MB); nothing else comes near.
const MAX_REQUEST: usize = 16 << 20;
/// Largest reply meta sends (a chunk map of a very large file, a listing page).
const MAX_REPLY: usize = 64 << 20;
/// Calls in progress on one connection (a mount multiplexes all of its own
/// on one: FUSE requests, lock waits, the invalidation stream).
const MAX_CALLS_PER_CONNECTION: usize = 1024;

/// Serves the metadata API on `listener` until `shutdown` fires, then stops the
/// repair worker and closes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let store = Store::open(&config.store_url, config.format).await?;
    let metrics = Arc::new(metrics::MetaMetrics::new());
    store.metrics().register(&metrics.registry);
    if let Some(addr) = &config.metrics_addr {
        dfs_common::metrics_http::serve(addr, metrics.registry.clone(), shutdown.clone().wait())
            .await?;
    }
    let gap = store.carry_over_restart(store::now_ms()).await?;
    if gap > 0 {
        tracing::info!(
            gap_ms = gap,
            "node heartbeats and session leases moved over the downtime"
        );
    }
    let repairer = Arc::new(repair::Repairer::new(
        store.clone(),
        config.clone(),
        metrics.clone(),
    ));
    let leadership = Arc::new(leader::Leadership::default());
    let leading = tokio::spawn(leader::run(
        store.clone(),
        leadership.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let worker = tokio::spawn(repair::run_worker(
        repairer.clone(),
        leadership.clone(),
        shutdown.clone(),
    ));
    let purging = tokio::spawn(purge::run(
        store.clone(),
        leadership.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let sessions = Arc::new(sessions::Sessions::new(store.clone(), config.session_lease));
    let expiry = tokio::spawn(sessions::run_expiry(
        sessions.clone(),
        leadership,
        metrics.clone(),
        shutdown.clone(),
    ));
    let (watchers, bridge) = match store.backend() {
        store::Backend::Postgres => {
            let presence = Arc::new(presence::Presence::shared());
            let (w, task) = watch::bridged(
                config.store_url.clone(),
                presence.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            let holding = tokio::spawn(presence::run(
                store.clone(),
                presence,
                w.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            (w, Some((task, holding)))
        }
        store::Backend::Sqlite => (Arc::new(watch::Watchers::local(metrics.clone())), None),
    };
    {
        // Open watch streams would hold the graceful shutdown forever.
        let (watchers, shutdown) = (watchers.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.wait().await;
            watchers.drop_all("meta stopping");
        });
    }
    let (server_tls, client_tls) = match &config.tls {
        Some(files) => (Some(files.server()?), Some(files.client()?)),
        None => {
            tracing::warn!("running without TLS: anyone who reaches the port may do anything");
            (None, None)
        }
    };
    let service = service::MetaService::new(
        store.clone(),
        config.clone(),
        repairer,
        metrics,
        sessions,
        watchers,
    )
    .with_node_tls(client_tls);
    let local = listener.local_addr()?;
    tracing::info!(%local, store = %redact(&config.store_url), chunk_size = store.chunk_size(),
        replication = store.replication(), "dfs-meta serving");
    let enforce = server_tls.is_some();
    let incoming =
        dfs_common::incoming::limited_incoming(listener, config.max_connections, server_tls);
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .timeout(dfs_common::incoming::CALL_DEADLINE)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    let meta = MetaServer::new(service)
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_REPLY);
    let mut server = server;
    server
        .add_service(dfs_auth::Authorized::new(meta, auth::policy, enforce))
        .serve_with_incoming_shutdown(incoming, shutdown.wait())
        .await?;
    let _ = worker.await;
    let _ = expiry.await;
    let _ = purging.await;
    let _ = leading.await;
    if let Some((bridge, holding)) = bridge {
        let _ = bridge.await;
        let _ = holding.await;
    }
    store.close().await;
    tracing::info!("dfs-meta stopped");
    Ok(())
}

/// Hides a password in a store URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_password() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
