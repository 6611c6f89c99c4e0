//! One lazily connected gRPC channel per node address, shared by all requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dfs_auth::{ClientTls, Role};
use dfs_proto::pb::chunk_client::ChunkClient;
use tonic::transport::{Channel, Endpoint};

use crate::ClientError;

/// Largest chunk-service message either side accepts: data travels in pieces
/// of at most 1 MiB, and nothing else is large.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest message to meta (a node's registration lists its chunk ids) and
/// from meta (a very large file's chunk map), as meta accepts and sends.
pub const MAX_META_REQUEST: usize = 16 << 20;
pub const MAX_META_REPLY: usize = 64 << 20;

/// How this process connects to servers: mutual TLS, or plaintext for a
/// cluster run `--insecure`. Set once at startup (`use_tls`).
static TLS: OnceLock<Option<ClientTls>> = OnceLock::new();

/// Sets this process's client certificates (None: plaintext). Call once,
/// before the first connection; later calls change nothing.
pub fn use_tls(tls: Option<ClientTls>) {
    let _ = TLS.set(tls);
}

/// A channel endpoint to the server of `role` at `addr`.
pub fn endpoint(addr: &str, role: Role) -> Result<Endpoint, ClientError> {
    let bad = |_| ClientError::BadAddress(addr.to_string());
    let endpoint = match TLS.get() {
        Some(Some(tls)) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(bad)?
            .tls_config(tls.to(role))
            .map_err(|e| ClientError::BadAddress(format!("{addr}: {e}")))?,
        _ => Endpoint::from_shared(format!("http://{addr}")).map_err(bad)?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20)))
}

/// How long a node that kept a write waiting is passed over by new writes.
const SLOW_FOR: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    /// Nodes that recently kept a write waiting past its patience, and when.
    slow: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Channels {
    pub fn new() -> Channels {
        Channels::default()
    }

    /// A node kept a write waiting (stalled, or a hung disk): new writes
    /// pass it over for a while instead of each waiting for it again.
    pub fn mark_slow(&self, node_id: u64) {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.insert(node_id, Instant::now());
    }

    /// The node answered a write: it is not passed over any more.
    pub fn mark_answering(&self, node_id: u64) {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.remove(&node_id);
    }

    pub fn is_slow(&self, node_id: u64) -> bool {
        let slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.get(&node_id).is_some_and(|t| t.elapsed() < SLOW_FOR)
    }

    /// A chunk-service client for the node at `addr`.
    pub fn chunk(&self, addr: &str) -> Result<ChunkClient<Channel>, ClientError> {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = endpoint(addr, Role::Node)?.connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ChunkClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}
