//! fsck's look at the nodes' disks: every live node lists its chunk ids, and
//! the ones meta does not know are strays (`Store::stray_chunks`). A node
//! that cannot list in time is named, not guessed about.

use std::time::Duration;

use dfs_auth::ClientTls;
use dfs_proto::pb;

use crate::store::{Store, StoreError};

/// How long one node may take to list its chunks.
const LIST_DEADLINE: Duration = Duration::from_secs(30);

/// One chunk file meta does not know.
#[derive(Debug, Clone)]
pub struct Stray {
    pub node_id: u64,
    pub addr: String,
    pub chunk_id: u64,
}

#[derive(Debug, Default)]
pub struct StrayScan {
    pub strays: Vec<Stray>,
    /// Live nodes that did not list their chunks (down since, or too slow).
    pub unlisted: Vec<String>,
}

/// Lists every live node's chunks and keeps the strays; with `queue`, their
/// deletion is queued now instead of at the node's next full report.
pub async fn scan(
    store: &Store,
    live_cutoff_ms: i64,
    queue: bool,
    tls: Option<&ClientTls>,
) -> Result<StrayScan, StoreError> {
    let nodes = store.list_nodes().await?;
    let mut scan = StrayScan::default();
    for node in nodes
        .iter()
        .map(|n| &n.record)
        .filter(|n| n.last_heartbeat_ms >= live_cutoff_ms)
    {
        let listed = tokio::time::timeout(LIST_DEADLINE, list(&node.addr, tls))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timed out")));
        let ids = match listed {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(node = node.id, addr = %node.addr, error = %e, "node did not list its chunks");
                scan.unlisted.push(node.addr.clone());
                continue;
            }
        };
        for chunk_id in store.stray_chunks(node.id, &ids, queue).await? {
            scan.strays.push(Stray {
                node_id: node.id,
                addr: node.addr.clone(),
                chunk_id,
            });
        }
    }
    Ok(scan)
}

async fn list(addr: &str, tls: Option<&ClientTls>) -> Result<Vec<u64>, tonic::Status> {
    let mut stream = crate::node_client::connect(addr, tls)
        .await?
        .list_chunks(pb::Empty {})
        .await?
        .into_inner();
    let mut ids = Vec::new();
    while let Some(page) = stream.message().await? {
        ids.extend(page.chunk_ids);
    }
    Ok(ids)
}
