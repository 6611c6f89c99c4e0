//! Chunk files on a node that meta does not know: no chunk row references
//! them, no write in flight allocated them, and their deletion on that node
//! is not queued. They are garbage (chunk ids are never reused), deleted at
//! the node's next full report or, on request, queued for deletion now.

use std::collections::HashSet;

use super::db;
use super::nodes::queue_deletion;
use super::reconcile::existing;
use super::rows::to_i64;
use super::{Result, Store};

impl Store {
    /// Which of `ids` (listed by `node`) meta does not know. With `queue`,
    /// their deletion on the node is queued in the same transaction (handed
    /// out with its heartbeats, as any other).
    pub async fn stray_chunks(&self, node: u64, ids: &[u64], queue: bool) -> Result<Vec<u64>> {
        let node = to_i64(node, "node id")?;
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(*id).ok())
            .collect();
        let mut tx = self.begin().await?;
        let referenced = existing(&mut tx, "chunks", &ids).await?;
        let in_flight = existing(&mut tx, "chunk_allocations", &ids).await?;
        let queued: HashSet<i64> = db::query("SELECT chunk_id FROM gc_replicas WHERE node_id = $1")
            .bind(node)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        let strays: Vec<i64> = ids
            .into_iter()
            .filter(|id| {
                !referenced.contains(id) && !in_flight.contains(id) && !queued.contains(id)
            })
            .collect();
        if queue {
            for id in &strays {
                queue_deletion(&mut tx, *id, node).await?;
            }
        }
        tx.commit().await?;
        Ok(strays.into_iter().map(|id| id as u64).collect())
    }
}
