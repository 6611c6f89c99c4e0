//! Taking a node out of service: drain (no new chunks; repair copies its
//! chunks elsewhere, then trims its replicas), undrain, and remove (refused
//! while any chunk still depends on the node).

use super::db::{self, DbConn};

use super::rows::to_i64;
use super::tables::NodeRecord;
use super::{in_tx, Result, Store, StoreError};

/// A node's part in the cluster's redundancy.
#[derive(Debug, Clone)]
pub struct NodeUsage {
    pub record: NodeRecord,
    /// Replicas meta records on the node.
    pub replicas: u64,
    /// Chunks with a replica on the node and fewer than the full count of
    /// live good replicas elsewhere: they depend on it.
    pub dependent_chunks: u64,
}

impl Store {
    /// The node named by `spec`: its id, or its address.
    pub async fn find_node(&self, spec: &str) -> Result<NodeRecord> {
        let mut conn = self.conn().await?;
        let id: i64 = spec.parse().unwrap_or(-1);
        let row = db::query(
            "SELECT id, uuid, addr, zone, capacity, used, chunk_count, last_heartbeat_ms, draining
             FROM nodes WHERE id = $1 OR addr = $2 ORDER BY id LIMIT 1",
        )
        .bind(id)
        .bind(spec)
        .fetch_optional(&mut conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {spec}")))?;
        super::tables::node_from_row(&row)
    }

    /// Marks a node draining (or not): placement skips it, repair counts its
    /// replicas as copies to make elsewhere, and trimming drops them once
    /// the chunk has its full count without them.
    pub async fn set_draining(&self, node_id: u64, draining: bool) -> Result<()> {
        in_tx!(self, |tx| {
            let updated = db::query("UPDATE nodes SET draining = $2 WHERE id = $1")
                .bind(to_i64(node_id, "node id")?)
                .bind(i64::from(draining))
                .execute(&mut tx)
                .await?
                .rows_affected();
            if updated == 0 {
                return Err(StoreError::NotFound(format!("node {node_id}")));
            }
            Ok(())
        })
    }

    pub async fn node_usage(&self, node_id: u64, live_cutoff_ms: i64) -> Result<NodeUsage> {
        let record = self.find_node(&node_id.to_string()).await?;
        let mut conn = self.conn().await?;
        let (replicas, dependent_chunks) =
            usage(&mut conn, node_id, live_cutoff_ms, self.replication).await?;
        Ok(NodeUsage {
            record,
            replicas,
            dependent_chunks,
        })
    }

    /// Forgets a node for good. Refused while any chunk depends on it; its
    /// remaining replicas (extra copies) are forgotten with it.
    pub async fn remove_node(&self, node_id: u64, live_cutoff_ms: i64) -> Result<()> {
        let replication = self.replication;
        in_tx!(self, |tx| {
            let (_, dependent) = usage(&mut tx, node_id, live_cutoff_ms, replication).await?;
            if dependent > 0 {
                return Err(StoreError::Busy(format!(
                    "{dependent} chunks still depend on node {node_id}: drain it first"
                )));
            }
            let node = to_i64(node_id, "node id")?;
            for table in ["replicas", "quarantined_replicas", "gc_replicas"] {
                db::query(&format!("DELETE FROM {table} WHERE node_id = $1"))
                    .bind(node)
                    .execute(&mut tx)
                    .await?;
            }
            let removed = db::query("DELETE FROM nodes WHERE id = $1")
                .bind(node)
                .execute(&mut tx)
                .await?
                .rows_affected();
            if removed == 0 {
                return Err(StoreError::NotFound(format!("node {node_id}")));
            }
            Ok(())
        })
    }
}

/// (replicas on the node, chunks that depend on it).
async fn usage(
    conn: &mut DbConn,
    node_id: u64,
    live_cutoff_ms: i64,
    replication: u32,
) -> Result<(u64, u64)> {
    let node = to_i64(node_id, "node id")?;
    let row = db::query(
        "SELECT COUNT(*),
           COALESCE(SUM(CASE WHEN (SELECT COUNT(*) FROM replicas o JOIN nodes n ON n.id = o.node_id
                   WHERE o.chunk_id = r.chunk_id AND o.node_id <> $1
                     AND n.last_heartbeat_ms >= $2 AND n.draining = 0) < $3
                 THEN 1 ELSE 0 END), 0)
         FROM replicas r WHERE r.node_id = $1",
    )
    .bind(node)
    .bind(live_cutoff_ms)
    .bind(i64::from(replication))
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        row.try_get::<i64, _>(0)?.max(0) as u64,
        row.try_get::<i64, _>(1)?.max(0) as u64,
    ))
}
