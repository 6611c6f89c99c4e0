//! A node's full chunk report against the chunk map, in batches: a node with
//! a million chunks registers in seconds, not one query per chunk.

use std::collections::{HashMap, HashSet};

use super::db::{self, placeholders, DbConn};

use super::tables::ALLOCATION_TTL_MS;
use super::Result;

/// Ids per `IN (...)` list, and rows per multi-row INSERT: well under
/// SQLite's and PostgreSQL's limits on bound parameters.
const BATCH: usize = 900;

/// Matches a node's report against the map: reported chunks the map
/// references become replicas again, unless their deletion on this node is
/// queued (then they are deleted); unknown ones are garbage (unless a write
/// still in flight allocated them); and replicas the node no longer has are
/// forgotten, but only those recorded before it began listing
/// (`listed_after_ms`): a chunk committed meanwhile may be missing from the
/// list. Returns the chunk ids the node should delete.
pub(crate) async fn reconcile(
    tx: &mut DbConn,
    node: i64,
    reported: &[u64],
    listed_after_ms: i64,
    now: i64,
) -> Result<Vec<u64>> {
    // Allocations of a session live as long as it does; only those made
    // outside any session expire by age.
    db::query("DELETE FROM chunk_allocations WHERE allocated_ms < $1 AND session_id = 0")
        .bind(now - ALLOCATION_TTL_MS)
        .execute(&mut *tx)
        .await?;
    // Every replica meta records on the node, with when it was recorded.
    let recorded: HashMap<i64, i64> =
        db::query("SELECT chunk_id, added_ms FROM replicas WHERE node_id = $1")
            .bind(node)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect::<Result<_>>()?;
    let queued_for_deletion: HashSet<i64> =
        db::query("SELECT chunk_id FROM gc_replicas WHERE node_id = $1")
            .bind(node)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
    let mut delete = Vec::new();
    let mut reported_set = HashSet::with_capacity(reported.len());
    let mut unknown = Vec::new();
    for &chunk in reported {
        match i64::try_from(chunk) {
            Ok(id) if reported_set.insert(id) && !recorded.contains_key(&id) => {
                if queued_for_deletion.contains(&id) {
                    // Trimmed or released while the node was away: still garbage.
                    delete.push(chunk);
                } else {
                    unknown.push(id);
                }
            }
            Ok(_) => {}
            Err(_) => delete.push(chunk),
        }
    }
    let referenced = existing(tx, "chunks", &unknown).await?;
    let in_flight = existing(tx, "chunk_allocations", &unknown).await?;
    let mut back = Vec::new();
    unknown.sort_unstable();
    for id in unknown {
        if referenced.contains(&id) {
            back.push(id);
        } else if !in_flight.contains(&id) {
            delete.push(id as u64);
        }
    }
    for batch in back.chunks(BATCH / 3) {
        let values: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO replicas (chunk_id, node_id, added_ms) VALUES {}",
            values.join(", ")
        );
        let mut query = db::query(&sql);
        for id in batch {
            query = query.bind(*id).bind(node).bind(now);
        }
        query.execute(&mut *tx).await?;
    }
    let mut gone: Vec<i64> = recorded
        .iter()
        .filter(|(id, added)| **added < listed_after_ms && !reported_set.contains(*id))
        .map(|(id, _)| *id)
        .collect();
    // In id order, each batch touches neighbouring index pages (SQLite: a
    // million deletions in hash order took 9.8 s, in id order 5 s).
    gone.sort_unstable();
    forget(tx, node, &gone).await?;
    // Deletions queued for this node are covered by this report: the chunks
    // it reported are in `delete`, the others it no longer has.
    db::query("DELETE FROM gc_replicas WHERE node_id = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    delete.sort_unstable();
    Ok(delete)
}

/// Applies a heartbeat's chunk changes (between full reports): a chunk file
/// that is gone is no longer a replica; a new one that the map references
/// and does not record on the node becomes one (unless its deletion there is
/// queued). New files nothing references yet are writes in flight: left to
/// their commit, or to the next full report.
pub(crate) async fn apply_changes(
    tx: &mut DbConn,
    node: i64,
    added: &[u64],
    removed: &[u64],
    now: i64,
) -> Result<()> {
    let removed: Vec<i64> = removed
        .iter()
        .filter_map(|id| i64::try_from(*id).ok())
        .collect();
    forget(tx, node, &removed).await?;
    let mut added: Vec<i64> = added
        .iter()
        .filter_map(|id| i64::try_from(*id).ok())
        .collect();
    added.sort_unstable();
    added.dedup();
    for batch in added.chunks(BATCH) {
        let sql = format!(
            "INSERT INTO replicas (chunk_id, node_id, added_ms)
             SELECT c.id, $1, $2 FROM chunks c WHERE c.id IN ({})
               AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.chunk_id = c.id AND r.node_id = $1)
               AND NOT EXISTS (SELECT 1 FROM gc_replicas g WHERE g.chunk_id = c.id AND g.node_id = $1)",
            placeholders(3, batch.len())
        );
        let mut query = db::query(&sql).bind(node).bind(now);
        for id in batch {
            query = query.bind(*id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Forgets `node`'s replicas of `ids`: the node no longer has those files.
async fn forget(tx: &mut DbConn, node: i64, ids: &[i64]) -> Result<()> {
    for batch in ids.chunks(BATCH) {
        let sql = format!(
            "DELETE FROM replicas WHERE node_id = $1 AND chunk_id IN ({})",
            placeholders(2, batch.len())
        );
        let mut query = db::query(&sql).bind(node);
        for id in batch {
            query = query.bind(*id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Which of `ids` are present as `id` in `table`.
pub(crate) async fn existing(tx: &mut DbConn, table: &str, ids: &[i64]) -> Result<HashSet<i64>> {
    let mut found = HashSet::new();
    for batch in ids.chunks(BATCH) {
        let sql = format!(
            "SELECT id FROM {table} WHERE id IN ({})",
            placeholders(1, batch.len())
        );
        let mut query = db::query(&sql);
        for id in batch {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *tx).await? {
            found.insert(row.try_get::<i64, _>(0)?);
        }
    }
    Ok(found)
}
