//! fsync(2)'s promise: every replica meta records for the file's chunks is
//! on stable storage. A replica that cannot confirm in time (its node died,
//! stalled or failed the sync) is replaced by a new durable copy where a node
//! is free, and meta stops recording it; if no copy can be made and the chunk
//! would keep fewer durable replicas than a degraded write may commit with,
//! fsync returns the error instead.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dfs_proto::pb;

use crate::error::{FsError, FsResult};
use crate::io::Io;

/// How long one node may take to sync the chunks asked of it: generous for
/// a slow disk, short enough that a stalled node does not hang fsync.
fn sync_deadline(chunks: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(100 * chunks as u64)
}

/// Has every replica of `chunks` fsync them; replaces or forgets the ones
/// that do not confirm (see the module comment).
pub async fn sync_replicas<'a>(
    io: &Io,
    chunks: impl Iterator<Item = &'a pb::ChunkRef> + Clone,
) -> FsResult<()> {
    let mut by_node: HashMap<String, Vec<u64>> = HashMap::new();
    for c in chunks.clone() {
        for r in &c.replicas {
            by_node.entry(r.addr.clone()).or_default().push(c.chunk_id);
        }
    }
    let calls = by_node.into_iter().map(|(addr, ids)| {
        let deadline = sync_deadline(ids.len());
        let call = io.chunks.sync(addr.clone(), ids, deadline);
        async move { (addr, call.await.is_ok()) }
    });
    let synced: HashSet<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|(addr, ok)| ok.then_some(addr))
        .collect();
    for chunk in chunks {
        let failed: Vec<&pb::NodeRef> = chunk
            .replicas
            .iter()
            .filter(|r| !synced.contains(&r.addr))
            .collect();
        if !failed.is_empty() {
            replace(io, chunk, &synced, &failed).await?;
        }
    }
    Ok(())
}

/// Makes new durable copies of `chunk` for its `failed` replicas (as many
/// as nodes allow), then has meta forget the failed ones.
async fn replace(
    io: &Io,
    chunk: &pb::ChunkRef,
    synced: &HashSet<String>,
    failed: &[&pb::NodeRef],
) -> FsResult<()> {
    tracing::warn!(
        chunk = chunk.chunk_id,
        failed = ?failed.iter().map(|r| &r.addr).collect::<Vec<_>>(),
        "replicas did not confirm fsync: replacing them"
    );
    let placement = io
        .files
        .place_chunk(pb::PlaceChunkRequest {
            chunk_id: chunk.chunk_id,
            count: failed.len() as u32,
            exclude_node_ids: chunk.replicas.iter().map(|r| r.node_id).collect(),
            batch: 0,
        })
        .await;
    if let Ok(placement) = placement {
        // Read from replicas that just synced (a stalled one would hang the read).
        let good = pb::ChunkRef {
            replicas: chunk
                .replicas
                .iter()
                .filter(|r| synced.contains(&r.addr))
                .cloned()
                .collect(),
            ..chunk.clone()
        };
        let data = io.chunk_bytes(&good).await?;
        let stored = io
            .chunks
            .copy(
                chunk.chunk_id,
                data,
                chunk.crc32c,
                placement.targets,
                placement.token,
            )
            .await;
        if !stored.is_empty() {
            io.files
                .replica_added(pb::ReplicaAddedRequest {
                    chunk_id: chunk.chunk_id,
                    node_ids: stored,
                })
                .await?;
        }
    }
    for replica in failed {
        io.files
            .forget_replica(pb::ForgetReplicaRequest {
                chunk_id: chunk.chunk_id,
                node_id: replica.node_id,
            })
            .await
            .map_err(|e| {
                FsError::new(
                    libc::EIO,
                    format!("chunk {} could not be made durable: {e}", chunk.chunk_id),
                )
            })?;
    }
    Ok(())
}
