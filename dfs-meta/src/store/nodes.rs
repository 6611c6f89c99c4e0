//! The node registry, replica bookkeeping, and the reads repair and status need.

use super::db::{self, DbConn};

use super::rows::to_i64;
use super::tables::{node_from_row, NodeRecord};
use super::{in_tx, now_ms, Result, Store, StoreError};

/// A node as `status` shows it: its record and how many replicas meta places on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub record: NodeRecord,
    pub replicas: u64,
}

#[derive(Debug, Clone)]
pub struct RegisterArgs {
    pub uuid: String,
    /// The caller's certificate name (None: an insecure cluster). A node is
    /// bound to the first one it registers with; others are refused.
    pub cert_name: Option<String>,
    pub addr: String,
    pub zone: String,
    pub capacity: u64,
    pub used: u64,
    pub chunk_ids: Vec<u64>,
    /// Meta's clock when the node began listing its chunks (`ReportFence`):
    /// replicas recorded after it may be missing from the list and are kept.
    pub listed_after_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct HeartbeatInfo {
    pub node_id: u64,
    pub capacity: u64,
    pub used: u64,
    pub chunk_count: u64,
}

/// A chunk with fewer up replicas than wanted, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairItem {
    pub chunk_id: u64,
    /// (node id, address) of replicas on up nodes.
    pub live_holders: Vec<(u64, String)>,
    /// Node ids of replicas on nodes that are down.
    pub down_holders: Vec<u64>,
    /// Live holders that count toward redundancy (not draining). A draining
    /// holder is still a source for copies.
    pub good: usize,
    /// The chunk as its writer stored it (meta's record).
    pub stored_len: u64,
    pub crc32c: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterCounts {
    pub files: u64,
    pub directories: u64,
    pub chunks: u64,
    pub logical_bytes: u64,
    pub under_replicated: u64,
    pub lost: u64,
    pub gc_pending: u64,
}

impl Store {
    /// Registers (or re-registers) a node and reconciles the chunks it reports
    /// with the chunk map. Returns its id and the chunk ids it should delete.
    pub async fn register_node(&self, args: RegisterArgs) -> Result<(u64, Vec<u64>)> {
        if args.uuid.is_empty() || args.addr.is_empty() {
            return Err(StoreError::Invalid(
                "node uuid and address are required".into(),
            ));
        }
        in_tx!(self, |tx| {
            if self.backend == super::Backend::Postgres && args.chunk_ids.len() > 10_000 {
                // Statistics a bulk change left stale (a node's first report
                // adds a million rows) make the planner scan the whole table
                // for each batch of the reconcile: 66 s instead of seconds.
                db::query("ANALYZE replicas").execute(&mut tx).await?;
            }
            let now = now_ms();
            let existing = db::query("SELECT id, cert_name FROM nodes WHERE uuid = $1")
                .bind(&args.uuid)
                .fetch_optional(&mut tx)
                .await?;
            let id = match existing {
                Some(row) => {
                    let bound: Option<String> = row.try_get(1)?;
                    if let (Some(bound), Some(name)) = (&bound, &args.cert_name) {
                        if bound != name {
                            return Err(StoreError::NotPermitted(format!(
                                "node {} belongs to certificate {bound:?}, not {name:?}",
                                args.uuid
                            )));
                        }
                    }
                    row.try_get::<i64, _>(0)?
                }
                None => {
                    let id = super::tables::next_id(&mut tx, "node").await?;
                    db::query(
                        "INSERT INTO nodes (id, uuid, addr, zone, capacity, used, chunk_count, last_heartbeat_ms)
                         VALUES ($1, $2, '', '', 0, 0, 0, 0)",
                    )
                    .bind(id)
                    .bind(&args.uuid)
                    .execute(&mut tx)
                    .await?;
                    id
                }
            };
            if let Some(name) = &args.cert_name {
                db::query("UPDATE nodes SET cert_name = $2 WHERE id = $1 AND cert_name IS NULL")
                    .bind(id)
                    .bind(name)
                    .execute(&mut tx)
                    .await?;
            }
            db::query(
                "UPDATE nodes SET addr = $2, zone = $3, capacity = $4, used = $5, chunk_count = $6, last_heartbeat_ms = $7 WHERE id = $1",
            )
            .bind(id)
            .bind(&args.addr)
            .bind(&args.zone)
            .bind(to_i64(args.capacity, "capacity")?)
            .bind(to_i64(args.used, "used")?)
            .bind(args.chunk_ids.len() as i64)
            .bind(now)
            .execute(&mut tx)
            .await?;
            let delete = super::reconcile::reconcile(
                &mut tx,
                id,
                &args.chunk_ids,
                args.listed_after_ms,
                now,
            )
            .await?;
            Ok((id as u64, delete))
        })
    }

    /// Refuses a caller whose certificate is not the one node `node_id` is
    /// bound to (an unknown node passes: it is told to register).
    pub async fn check_node_certificate(&self, node_id: u64, cert_name: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        let row = db::query("SELECT cert_name FROM nodes WHERE id = $1")
            .bind(to_i64(node_id, "node id")?)
            .fetch_optional(&mut conn)
            .await?;
        let bound: Option<String> = match row {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        match bound {
            Some(bound) if bound != cert_name => Err(StoreError::NotPermitted(format!(
                "node {node_id} belongs to certificate {bound:?}, not {cert_name:?}"
            ))),
            _ => Ok(()),
        }
    }

    /// Records a heartbeat. Returns None for a node meta does not know (it must
    /// register again), else the chunk ids it should delete: those queued
    /// before `queued_before_ms` (the caller's grace period and durability
    /// watermark).
    pub async fn heartbeat(
        &self,
        hb: HeartbeatInfo,
        queued_before_ms: i64,
    ) -> Result<Option<Vec<u64>>> {
        in_tx!(self, |tx| {
            let id = to_i64(hb.node_id, "node id")?;
            let updated = db::query(
                "UPDATE nodes SET capacity = $2, used = $3, chunk_count = $4, last_heartbeat_ms = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(to_i64(hb.capacity, "capacity")?)
            .bind(to_i64(hb.used, "used")?)
            .bind(to_i64(hb.chunk_count, "chunk count")?)
            .bind(now_ms())
            .execute(&mut tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(None);
            }
            // Up to 1,000 queued deletions leave the queue in one statement.
            let ids = db::query(
                "DELETE FROM gc_replicas WHERE node_id = $1 AND chunk_id IN
                   (SELECT chunk_id FROM gc_replicas WHERE node_id = $1 AND queued_ms < $2
                    ORDER BY chunk_id LIMIT 1000)
                 RETURNING chunk_id",
            )
            .bind(id)
            .bind(queued_before_ms)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0).map(|v| v as u64))
            .collect::<Result<Vec<_>, _>>()?;
            let mut ids = ids;
            ids.sort_unstable();
            Ok(Some(ids))
        })
    }

    /// Chunk files a node installed and lost since its last heartbeat
    /// (`reconcile::apply_changes`), in one transaction.
    pub async fn apply_chunk_changes(
        &self,
        node_id: u64,
        added: &[u64],
        removed: &[u64],
    ) -> Result<()> {
        if added.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let node = to_i64(node_id, "node id")?;
        in_tx!(self, |tx| super::reconcile::apply_changes(
            &mut tx,
            node,
            added,
            removed,
            now_ms()
        )
        .await)
    }

    /// A node now holds `chunk_id` (repair copied it there). A chunk that was
    /// deleted meanwhile is queued for deletion on that node instead.
    pub async fn replica_added(&self, chunk_id: u64, node_ids: &[u64]) -> Result<()> {
        in_tx!(self, |tx| {
            let chunk = to_i64(chunk_id, "chunk id")?;
            let exists = db::query("SELECT 1 FROM chunks WHERE id = $1")
                .bind(chunk)
                .fetch_optional(&mut tx)
                .await?
                .is_some();
            for node in node_ids {
                let node = to_i64(*node, "node id")?;
                let table = if exists { "replicas" } else { "gc_replicas" };
                let present = db::query(&format!(
                    "SELECT 1 FROM {table} WHERE chunk_id = $1 AND node_id = $2"
                ))
                .bind(chunk)
                .bind(node)
                .fetch_optional(&mut tx)
                .await?
                .is_some();
                if !present && exists {
                    db::query(
                        "INSERT INTO replicas (chunk_id, node_id, added_ms) VALUES ($1, $2, $3)",
                    )
                    .bind(chunk)
                    .bind(node)
                    .bind(now_ms())
                    .execute(&mut tx)
                    .await?;
                } else if !present {
                    queue_deletion(&mut tx, chunk, node).await?;
                }
            }
            Ok(())
        })
    }

    /// A replica's node confirmed a checksum failure (and moved the file
    /// aside): it stops counting as a copy, so repair makes a new one, but it
    /// is kept, quarantined, until the chunk has its full count of good
    /// copies again (`release_quarantine`). Only corruption comes here:
    /// a replica that cannot be read now is unavailable, not bad.
    pub async fn quarantine_replica(&self, chunk_id: u64, node_id: u64) -> Result<()> {
        in_tx!(self, |tx| {
            let chunk = to_i64(chunk_id, "chunk id")?;
            let node = to_i64(node_id, "node id")?;
            let held = db::query("DELETE FROM replicas WHERE chunk_id = $1 AND node_id = $2")
                .bind(chunk)
                .bind(node)
                .execute(&mut tx)
                .await?
                .rows_affected();
            if held > 0 {
                db::query(
                    "INSERT INTO quarantined_replicas (chunk_id, node_id, since_ms) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(chunk)
                .bind(node)
                .bind(now_ms())
                .execute(&mut tx)
                .await?;
            }
            Ok(())
        })
    }

    /// Stops recording `node_id`'s replica of `chunk_id` (it did not confirm
    /// an fsync) and queues its file for deletion, but only while the chunk
    /// keeps at least `keep` live good replicas without it, checked in the
    /// same transaction. EBUSY otherwise.
    pub async fn forget_replica(
        &self,
        chunk_id: u64,
        node_id: u64,
        keep: u32,
        live_cutoff_ms: i64,
    ) -> Result<()> {
        in_tx!(self, |tx| {
            let chunk = to_i64(chunk_id, "chunk id")?;
            let node = to_i64(node_id, "node id")?;
            let others = good_replicas(&mut tx, chunk, live_cutoff_ms, Some(node)).await?;
            if others < i64::from(keep) {
                return Err(StoreError::Busy(format!(
                    "chunk {chunk_id} would keep {others} good replicas, fewer than {keep}"
                )));
            }
            replica_to_garbage(&mut tx, chunk, node).await?;
            Ok(())
        })
    }

    /// Deletes quarantined replicas whose chunk has its full count of live
    /// good copies again, or is gone. Returns how many.
    pub async fn release_quarantine(&self, live_cutoff_ms: i64) -> Result<usize> {
        let replication = i64::from(self.replication);
        let rows: Vec<(i64, i64)> = {
            let mut conn = self.conn().await?;
            db::query(
                "SELECT chunk_id, node_id FROM quarantined_replicas ORDER BY chunk_id LIMIT 1000",
            )
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_>>()?
        };
        let mut released = 0;
        for (chunk, node) in rows {
            let done = in_tx!(self, |tx| {
                let exists = db::query("SELECT 1 FROM chunks WHERE id = $1")
                    .bind(chunk)
                    .fetch_optional(&mut tx)
                    .await?
                    .is_some();
                let good = good_replicas(&mut tx, chunk, live_cutoff_ms, None).await?;
                if exists && good < replication {
                    return Ok(false);
                }
                db::query("DELETE FROM quarantined_replicas WHERE chunk_id = $1 AND node_id = $2")
                    .bind(chunk)
                    .bind(node)
                    .execute(&mut tx)
                    .await?;
                queue_deletion(&mut tx, chunk, node).await?;
                Ok(true)
            })?;
            released += usize::from(done);
        }
        Ok(released)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        let mut conn = self.conn().await?;
        let rows = db::query(
            "SELECT n.id, n.uuid, n.addr, n.zone, n.capacity, n.used, n.chunk_count, n.last_heartbeat_ms, n.draining,
                    (SELECT COUNT(*) FROM replicas r WHERE r.node_id = n.id) AS replicas
             FROM nodes n ORDER BY n.id",
        )
        .fetch_all(&mut conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeInfo {
                    record: node_from_row(row)?,
                    replicas: row.try_get::<i64, _>("replicas")? as u64,
                })
            })
            .collect()
    }

    pub async fn cluster_counts(&self, live_cutoff_ms: i64) -> Result<ClusterCounts> {
        let mut conn = self.conn().await?;
        // Files waiting for the purge are gone to users; their chunks still count.
        let row = db::query(
            "SELECT
               (SELECT COUNT(*) FROM inodes WHERE kind = 1
                  AND ino NOT IN (SELECT ino FROM deleted_inodes)),
               (SELECT COUNT(*) FROM inodes WHERE kind = 2),
               (SELECT COUNT(*) FROM chunks),
               (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM inodes WHERE kind = 1
                  AND ino NOT IN (SELECT ino FROM deleted_inodes)),
               (SELECT COUNT(*) FROM gc_replicas)",
        )
        .fetch_one(&mut conn)
        .await?;
        let live = live_replica_counts(&mut conn, live_cutoff_ms).await?;
        let replication = u64::from(self.replication);
        Ok(ClusterCounts {
            files: row.try_get::<i64, _>(0)? as u64,
            directories: row.try_get::<i64, _>(1)? as u64,
            chunks: row.try_get::<i64, _>(2)? as u64,
            logical_bytes: row.try_get::<i64, _>(3)? as u64,
            gc_pending: row.try_get::<i64, _>(4)? as u64,
            under_replicated: live.iter().filter(|c| c.good < replication).count() as u64,
            lost: live.iter().filter(|c| c.live == 0).count() as u64,
        })
    }

    /// Chunks with fewer than the wanted number of replicas on up nodes
    /// (at most `limit`, lowest redundancy first).
    pub async fn under_replicated(
        &self,
        live_cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<RepairItem>> {
        let mut conn = self.conn().await?;
        let counts = live_replica_counts(&mut conn, live_cutoff_ms).await?;
        short_chunks(&mut conn, &counts, self.replication, live_cutoff_ms, limit).await
    }

    /// One repair round's view, from one scan of every chunk's live replica
    /// count: chunks needing copies (as `under_replicated`) and chunks with
    /// copies to spare (as `over_replicated`).
    pub async fn replica_imbalance(
        &self,
        live_cutoff_ms: i64,
        limit: usize,
    ) -> Result<(Vec<RepairItem>, Vec<ExtraReplicas>)> {
        let mut conn = self.conn().await?;
        let counts = live_replica_counts(&mut conn, live_cutoff_ms).await?;
        let short =
            short_chunks(&mut conn, &counts, self.replication, live_cutoff_ms, limit).await?;
        let extra =
            extra_chunks(&mut conn, &counts, self.replication, live_cutoff_ms, limit).await?;
        Ok((short, extra))
    }
}

/// The chunks of `counts` with fewer live replicas than `replication`, lowest
/// redundancy first, with their live and down holders.
async fn short_chunks(
    conn: &mut DbConn,
    counts: &[LiveCount],
    replication: u32,
    live_cutoff_ms: i64,
    limit: usize,
) -> Result<Vec<RepairItem>> {
    let mut short: Vec<LiveCount> = counts
        .iter()
        .copied()
        .filter(|c| c.good < u64::from(replication))
        .collect();
    short.sort_by_key(|c| (c.good, c.chunk_id));
    short.truncate(limit);
    let mut items = Vec::with_capacity(short.len());
    for count in short {
        let rows = db::query(
            "SELECT n.id, n.addr, n.last_heartbeat_ms, n.draining FROM replicas r
             JOIN nodes n ON n.id = r.node_id WHERE r.chunk_id = $1",
        )
        .bind(count.chunk_id as i64)
        .fetch_all(&mut *conn)
        .await?;
        let recorded = db::query("SELECT stored_len, crc32c FROM chunks WHERE id = $1")
            .bind(count.chunk_id as i64)
            .fetch_one(&mut *conn)
            .await?;
        let mut item = RepairItem {
            chunk_id: count.chunk_id,
            live_holders: Vec::new(),
            down_holders: Vec::new(),
            good: 0,
            stored_len: recorded.try_get::<i64, _>(0)? as u64,
            crc32c: recorded.try_get::<i64, _>(1)? as u32,
        };
        for row in rows {
            let id = row.try_get::<i64, _>(0)? as u64;
            if row.try_get::<i64, _>(2)? >= live_cutoff_ms {
                item.live_holders.push((id, row.try_get(1)?));
                item.good += usize::from(row.try_get::<i64, _>(3)? == 0);
            } else {
                item.down_holders.push(id);
            }
        }
        items.push(item);
    }
    Ok(items)
}

/// A chunk with more live replicas than the cluster wants.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraReplicas {
    pub chunk_id: u64,
    /// Live holders: (node id, free bytes).
    pub live_holders: Vec<(u64, u64)>,
    /// Live holders that are draining: their replicas go first.
    pub draining_holders: Vec<u64>,
}

impl Store {
    /// Chunks holding more live replicas than the replication factor (a node
    /// came back after repair had already copied its chunks elsewhere).
    pub async fn over_replicated(
        &self,
        live_cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<ExtraReplicas>> {
        let mut conn = self.conn().await?;
        let counts = live_replica_counts(&mut conn, live_cutoff_ms).await?;
        extra_chunks(&mut conn, &counts, self.replication, live_cutoff_ms, limit).await
    }

    /// Drops `node_id`'s replica of `chunk_id` (its node deletes the file on its
    /// next heartbeat), but only while the chunk keeps the full count of live
    /// good replicas (on nodes that are not draining) without it, checked in
    /// the same transaction: the last-copy guard. Returns whether it dropped one.
    pub async fn drop_extra_replica(
        &self,
        chunk_id: u64,
        node_id: u64,
        live_cutoff_ms: i64,
    ) -> Result<bool> {
        let replication = i64::from(self.replication);
        in_tx!(self, |tx| {
            let chunk = to_i64(chunk_id, "chunk id")?;
            let node = to_i64(node_id, "node id")?;
            let others = good_replicas(&mut tx, chunk, live_cutoff_ms, Some(node)).await?;
            if others < replication {
                return Ok(false);
            }
            replica_to_garbage(&mut tx, chunk, node).await
        })
    }
}

/// The chunks of `counts` with more live replicas than `replication`, with
/// their live holders and each holder's free space.
async fn extra_chunks(
    conn: &mut DbConn,
    counts: &[LiveCount],
    replication: u32,
    live_cutoff_ms: i64,
    limit: usize,
) -> Result<Vec<ExtraReplicas>> {
    // Only chunks whose good copies already make the full count.
    let replication = u64::from(replication);
    let mut extra: Vec<u64> = counts
        .iter()
        .filter(|c| c.live > replication && c.good >= replication)
        .map(|c| c.chunk_id)
        .collect();
    extra.sort_unstable();
    extra.truncate(limit);
    let mut items = Vec::with_capacity(extra.len());
    for chunk in extra {
        let rows = db::query(
            "SELECT n.id, n.capacity, n.used, n.draining FROM replicas r JOIN nodes n ON n.id = r.node_id
                     WHERE r.chunk_id = $1 AND n.last_heartbeat_ms >= $2 ORDER BY n.id",
        )
        .bind(chunk as i64)
        .bind(live_cutoff_ms)
        .fetch_all(&mut *conn)
        .await?;
        let live_holders = rows
            .iter()
            .map(|row| {
                let capacity = row.try_get::<i64, _>(1)?.max(0) as u64;
                let used = row.try_get::<i64, _>(2)?.max(0) as u64;
                Ok((
                    row.try_get::<i64, _>(0)? as u64,
                    capacity.saturating_sub(used),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let draining_holders = rows
            .iter()
            .filter(|row| row.try_get::<i64, _>(3).is_ok_and(|d| d != 0))
            .map(|row| Ok(row.try_get::<i64, _>(0)? as u64))
            .collect::<Result<Vec<_>>>()?;
        items.push(ExtraReplicas {
            chunk_id: chunk,
            live_holders,
            draining_holders,
        });
    }
    Ok(items)
}

/// Moves `node`'s replica of `chunk` to that node's garbage (deleted on its
/// next heartbeat). Returns false when the node held no such replica.
async fn replica_to_garbage(conn: &mut DbConn, chunk: i64, node: i64) -> Result<bool> {
    let removed = db::query("DELETE FROM replicas WHERE chunk_id = $1 AND node_id = $2")
        .bind(chunk)
        .bind(node)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Ok(false);
    }
    queue_deletion(conn, chunk, node).await?;
    Ok(true)
}

/// Replicas of `chunk` that count toward its redundancy (on live nodes that
/// are not draining), leaving out `except`'s: what the last-copy guard
/// checks, in the caller's transaction, before a replica is forgotten.
pub(crate) async fn good_replicas(
    conn: &mut DbConn,
    chunk: i64,
    live_cutoff_ms: i64,
    except: Option<i64>,
) -> Result<i64> {
    Ok(db::query(
        "SELECT COUNT(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
         WHERE r.chunk_id = $1 AND n.last_heartbeat_ms >= $2 AND n.draining = 0
           AND r.node_id <> $3",
    )
    .bind(chunk)
    .bind(live_cutoff_ms)
    .bind(except.unwrap_or(-1))
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?)
}

/// Queues `node`'s copy of `chunk` for deletion (handed out by `heartbeat`
/// after the grace period, once durable).
pub(crate) async fn queue_deletion(conn: &mut DbConn, chunk: i64, node: i64) -> Result<()> {
    db::query(
        "INSERT INTO gc_replicas (chunk_id, node_id, queued_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(chunk)
    .bind(node)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Replicas of one chunk on up nodes.
#[derive(Debug, Clone, Copy)]
struct LiveCount {
    chunk_id: u64,
    /// On every up node (readable).
    live: u64,
    /// On up nodes that are not draining (what redundancy counts).
    good: u64,
}

/// The live replica counts of every chunk.
async fn live_replica_counts(conn: &mut DbConn, cutoff_ms: i64) -> Result<Vec<LiveCount>> {
    db::query(
        "SELECT c.id,
           (SELECT COUNT(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
             WHERE r.chunk_id = c.id AND n.last_heartbeat_ms >= $1),
           (SELECT COUNT(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
             WHERE r.chunk_id = c.id AND n.last_heartbeat_ms >= $1 AND n.draining = 0)
         FROM chunks c",
    )
    .bind(cutoff_ms)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(LiveCount {
            chunk_id: r.try_get::<i64, _>(0)? as u64,
            live: r.try_get::<i64, _>(1)? as u64,
            good: r.try_get::<i64, _>(2)? as u64,
        })
    })
    .collect()
}
