//! The node's side of the conversation with meta: register with a full chunk
//! report, heartbeat, and carry out what the replies ask (delete garbage
//! chunks, copy chunks to other nodes for repair).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_client::chunk_io::write_chain;
use dfs_client::Channels;
use dfs_common::shutdown::Shutdown;
use dfs_proto::pb;
use prost::bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use crate::chunk_store::ChunkStore;
use crate::metrics::NodeMetrics;
use crate::{disk_space, NodeIdentity};

/// How often a node sends its full chunk list again, so meta and node agree on
/// what exists even when a delete or a report was lost: every 4 to 6 minutes,
/// at random, so nodes started together do not all report in the same second.
fn next_full_report() -> Duration {
    Duration::from_secs(240 + rand::random::<u64>() % 121)
}
/// Repair copies one node makes at once.
const PARALLEL_REPAIRS: usize = 4;

pub struct MetaLink {
    pub meta: dfs_client::Meta,
    pub store: Arc<ChunkStore>,
    pub identity: Arc<NodeIdentity>,
    pub metrics: Arc<NodeMetrics>,
    pub capacity_override: Option<u64>,
    /// Where deletions and repair copies go (`Worker`).
    pub work: mpsc::UnboundedSender<Work>,
}

impl MetaLink {
    fn capacity(&self) -> (u64, u64) {
        let used = self.store.used_bytes();
        let free = disk_space::available(self.store.root()).unwrap_or(0);
        self.metrics.disk_free_bytes.set(free as i64);
        let capacity = match self.capacity_override {
            Some(c) => c,
            None => used + free,
        };
        self.metrics.capacity_bytes.set(capacity as i64);
        self.metrics.used_bytes.set(used as i64);
        self.metrics.chunks.set(self.store.chunk_count() as i64);
        self.metrics
            .spare_files
            .set(self.store.spare_files() as i64);
        (capacity, used)
    }

    async fn register(&mut self) -> Result<Duration, tonic::Status> {
        // Meta's clock before the listing: what it records later is kept
        // even when the list misses it.
        let fence = self
            .meta
            .report_fence(pb::Empty {})
            .await?
            .into_inner()
            .fence_ms;
        // The full list covers every change so far.
        self.store.take_changes();
        let store = self.store.clone();
        let chunk_ids = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(tonic::Status::from)?;
        let (capacity, used) = self.capacity();
        let first = pb::RegisterNodeRequest {
            uuid: self.identity.uuid.clone(),
            addr: self.identity.advertise.clone(),
            zone: self.identity.zone.clone(),
            capacity_bytes: capacity,
            used_bytes: used,
            chunk_ids: Vec::new(),
            listed_after_ms: fence,
        };
        let reply = self
            .meta
            .register_node(tokio_stream::iter(registration_pages(first, chunk_ids)))
            .await?
            .into_inner();
        self.identity.set_node_id(reply.node_id);
        self.identity.set_token_key(reply.token_key);
        tracing::info!(
            node_id = reply.node_id,
            garbage = reply.delete_chunk_ids.len(),
            "registered with meta"
        );
        self.hand_over(Work::Delete(reply.delete_chunk_ids));
        Ok(Duration::from_millis(u64::from(
            reply.heartbeat_interval_ms.clamp(100, 60_000),
        )))
    }

    /// Queues work for the worker; the heartbeat loop never waits for it.
    fn hand_over(&self, work: Work) {
        if matches!(&work, Work::Delete(ids) if ids.is_empty()) {
            return;
        }
        if self.work.send(work).is_err() {
            tracing::warn!("the node's work queue is closed");
        }
    }

    /// Registers, then heartbeats until shutdown; re-registers when meta asks or
    /// when a full report is due. Survives meta being down.
    pub async fn run(mut self, shutdown: Shutdown) {
        'register: while !shutdown.is_requested() {
            let interval = match self.register().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "cannot register with meta; retrying");
                    if sleep_or_stop(Duration::from_secs(1), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let registered_at = Instant::now();
            let full_report_after = next_full_report();
            loop {
                if sleep_or_stop(interval, &shutdown).await {
                    return;
                }
                if registered_at.elapsed() > full_report_after {
                    continue 'register;
                }
                let (capacity, used) = self.capacity();
                let changes = self.store.take_changes();
                let beat = pb::HeartbeatRequest {
                    node_id: self.identity.node_id(),
                    capacity_bytes: capacity,
                    used_bytes: used,
                    chunk_count: self.store.chunk_count(),
                    added_chunk_ids: changes.added.iter().copied().collect(),
                    removed_chunk_ids: changes.removed.iter().copied().collect(),
                };
                let reply = match self.meta.heartbeat(beat).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "heartbeat failed");
                        self.store.restore_changes(changes);
                        continue;
                    }
                };
                if reply.reregister {
                    continue 'register;
                }
                self.hand_over(Work::Delete(reply.delete_chunk_ids));
                for command in reply.replicate {
                    self.hand_over(Work::Copy(command));
                }
            }
        }
    }
}

/// What heartbeat replies ask of the node. It is done apart from the
/// heartbeat loop, so heartbeats never wait behind deletions or repair
/// copies: a late heartbeat makes meta count a busy node as down.
pub enum Work {
    Delete(Vec<u64>),
    Copy(pb::ReplicateCommand),
}

/// Carries out queued work: deletions in order, repair copies up to
/// `PARALLEL_REPAIRS` at once.
pub struct Worker {
    pub meta: dfs_client::Meta,
    pub store: Arc<ChunkStore>,
    pub channels: Channels,
    pub identity: Arc<NodeIdentity>,
    pub metrics: Arc<NodeMetrics>,
}

impl Worker {
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<Work>) {
        let repairs = Arc::new(Semaphore::new(PARALLEL_REPAIRS));
        while let Some(work) = queue.recv().await {
            match work {
                Work::Delete(ids) => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.delete(&ids)).await {
                        Ok(Ok(n)) => tracing::debug!(deleted = n, "garbage chunks deleted"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "deleting chunks failed"),
                        Err(e) => tracing::warn!(error = %e, "delete task failed"),
                    }
                }
                Work::Copy(command) => {
                    let Ok(permit) = repairs.clone().acquire_owned().await else {
                        return;
                    };
                    let copier = Copier {
                        meta: self.meta.clone(),
                        store: self.store.clone(),
                        channels: self.channels.clone(),
                        metrics: self.metrics.clone(),
                        node_id: self.identity.node_id(),
                    };
                    tokio::spawn(async move {
                        copier.copy(command).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Returns true when shutdown came first.
async fn sleep_or_stop(d: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => shutdown.is_requested(),
        _ = shutdown.clone().wait() => true,
    }
}

struct Copier {
    meta: dfs_client::Meta,
    store: Arc<ChunkStore>,
    channels: Channels,
    metrics: Arc<NodeMetrics>,
    node_id: u64,
}

impl Copier {
    /// Copies a local chunk to the targets (durably) and tells meta where it
    /// landed, or that it landed nowhere: meta then plans the copy again at
    /// once (a target that died) instead of after the in-flight timeout.
    async fn copy(mut self, command: pb::ReplicateCommand) {
        let id = command.chunk_id;
        let stored = self.try_copy(&command).await;
        let added = pb::ReplicaAddedRequest {
            chunk_id: id,
            node_ids: stored.clone(),
        };
        match self.meta.replica_added(added).await {
            Ok(_) if stored.is_empty() => {}
            Ok(_) => tracing::info!(chunk = id, to = ?stored, "repair copy done"),
            Err(e) => {
                tracing::warn!(chunk = id, error = %e.message(), "could not report a repair copy")
            }
        }
    }

    /// The copy itself; returns the nodes that stored it.
    async fn try_copy(&mut self, command: &pb::ReplicateCommand) -> Vec<u64> {
        let id = command.chunk_id;
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || {
            let (len, crc) = store.describe(id)?;
            let mut data = Vec::with_capacity(len as usize);
            store.read(id, 0, len, |p| {
                data.extend_from_slice(p);
                true
            })?;
            Ok::<_, crate::chunk_store::ChunkError>((Bytes::from(data), crc))
        })
        .await;
        let corrupt = match local {
            // The copy must be what the writer stored (meta's record): a
            // different one is not the committed content.
            Ok(Ok((data, crc)))
                if data.len() as u64 == command.stored_len && crc == command.crc32c =>
            {
                let outcome =
                    write_chain(&self.channels, id, &data, crc, true, &command.targets, None).await;
                for f in &outcome.failed {
                    tracing::warn!(chunk = id, node = f.node_id, error = %f.reason, "repair copy failed");
                }
                self.metrics
                    .repair_bytes
                    .inc_by(data.len() as u64 * outcome.stored.len() as u64);
                return outcome.stored;
            }
            Ok(Ok(_)) => "local copy differs from the committed checksum".to_string(),
            // Quarantined by the store.
            Ok(Err(e @ crate::chunk_store::ChunkError::Corrupt { .. })) => e.to_string(),
            other => {
                // Unavailable for now (EMFILE, EIO...): planned again.
                tracing::warn!(chunk = id, result = ?other.err(), "repair source cannot read its copy now");
                return Vec::new();
            }
        };
        tracing::error!(chunk = id, reason = %corrupt, "repair source is corrupt");
        let report = pb::BadReplicaRequest {
            chunk_id: id,
            node_id: self.node_id,
        };
        if let Err(e) = self.meta.report_bad_replica(report).await {
            tracing::warn!(error = %e.message(), "could not report the bad chunk");
        }
        Vec::new()
    }
}

/// Chunk ids per registration message (about 1 MiB).
const REGISTER_PAGE: usize = 128 * 1024;

/// A registration as messages: `first` with the first page of `chunk_ids`,
/// then one message per further page.
fn registration_pages(
    first: pb::RegisterNodeRequest,
    chunk_ids: Vec<u64>,
) -> Vec<pb::RegisterNodeRequest> {
    let mut pages = chunk_ids.chunks(REGISTER_PAGE);
    let mut messages = vec![pb::RegisterNodeRequest {
        chunk_ids: pages.next().map(<[u64]>::to_vec).unwrap_or_default(),
        ..first
    }];
    messages.extend(pages.map(|page| pb::RegisterNodeRequest {
        chunk_ids: page.to_vec(),
        ..Default::default()
    }));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_paged_and_names_the_node_first() {
        let first = pb::RegisterNodeRequest {
            uuid: "u".into(),
            ..Default::default()
        };
        let ids: Vec<u64> = (0..REGISTER_PAGE as u64 * 2 + 5).collect();
        let pages = registration_pages(first.clone(), ids.clone());
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[0].uuid, "u");
        assert!(pages[1..].iter().all(|p| p.uuid.is_empty()));
        let back: Vec<u64> = pages.iter().flat_map(|p| p.chunk_ids.clone()).collect();
        assert_eq!(back, ids);
        assert_eq!(registration_pages(first, Vec::new()).len(), 1);
    }
}
