//! Fresh chunk ids and their target nodes, fetched from meta a batch at a
//! time: a writer of many small files then asks meta once per batch instead
//! of once per file.
//!
//! Ids belong to the session they were allocated in (meta releases a
//! session's unused ids when it ends), so a batch is dropped when the session
//! changes. A placement is used within `FRESH` of being handed out, so a node
//! that filled up or began draining meanwhile gets few chunks from it; a
//! target that fails is replaced by the write path as with any placement.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_proto::pb;

use crate::meta::MetaChannel;
use crate::ClientError;

/// How long a placement is used after meta chose it.
const FRESH: Duration = Duration::from_secs(5);

/// One chunk id and where to write it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub chunk_id: u64,
    pub targets: Vec<pb::NodeRef>,
    pub replication: u32,
    pub min_replicas: u32,
    /// Lets this client write the chunk to `targets`.
    pub token: Option<pb::ChunkToken>,
}

struct Batch {
    session: u64,
    placed: Instant,
    ready: VecDeque<Placement>,
}

/// A pool of placements; cheap to clone (clones share it).
#[derive(Clone)]
pub struct Placements {
    batch: u32,
    /// The channel whose session the ids belong to (None: no session).
    channel: Option<MetaChannel>,
    pool: Arc<Mutex<Option<Batch>>>,
}

impl Placements {
    /// Placements fetched `batch` at a time (1: one per chunk, no pool).
    pub fn new(batch: u32, channel: Option<MetaChannel>) -> Placements {
        Placements {
            batch: batch.max(1),
            channel,
            pool: Arc::new(Mutex::new(None)),
        }
    }

    fn session(&self) -> u64 {
        self.channel.as_ref().map_or(0, MetaChannel::session_id)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Option<Batch>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh chunk id and its targets.
    pub async fn take(&self, meta: &mut crate::Meta) -> Result<Placement, ClientError> {
        let session = self.session();
        {
            let mut pool = self.pool();
            if let Some(batch) = pool.as_mut() {
                if batch.session == session && batch.placed.elapsed() < FRESH {
                    if let Some(p) = batch.ready.pop_front() {
                        return Ok(p);
                    }
                }
            }
        }
        let reply = meta
            .place_chunk(pb::PlaceChunkRequest {
                chunk_id: 0,
                count: 0,
                exclude_node_ids: vec![],
                batch: self.batch,
            })
            .await?
            .into_inner();
        let first = Placement {
            chunk_id: reply.chunk_id,
            targets: reply.targets,
            replication: reply.replication,
            min_replicas: reply.min_replicas,
            token: reply.token,
        };
        let ready: VecDeque<Placement> = reply
            .more
            .into_iter()
            .map(|m| Placement {
                chunk_id: m.chunk_id,
                targets: m.targets,
                replication: reply.replication,
                min_replicas: reply.min_replicas,
                token: m.token,
            })
            .collect();
        if !ready.is_empty() {
            *self.pool() = Some(Batch {
                session,
                placed: Instant::now(),
                ready,
            });
        }
        Ok(first)
    }
}
