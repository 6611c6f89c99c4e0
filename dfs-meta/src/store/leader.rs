//! What several meta servers on one store share: which of them leads (runs
//! repair, trimming, garbage and session expiry), whether one is alone on
//! the store (`presence`), and the copy commands the leader plans for nodes
//! that may report to another meta.
//!
//! Leadership is a PostgreSQL advisory lock held by one dedicated connection:
//! if the leader dies, its connection goes and the lock with it, and another
//! meta takes it on its next try. On SQLite (one meta per store file) the
//! only server leads.

use super::db::{self, DbConn};

use super::rows::to_i64;
use super::{in_tx, now_ms, Backend, Result, Store};

/// The advisory lock id of leadership (migrations use another).
const LEADER_LOCK: i64 = 7_468_002;
/// The advisory lock every serving meta holds shared, and a meta alone on
/// the store also exclusively (the meta's `presence.rs`).
const PRESENCE_LOCK: i64 = 7_468_003;
/// The NOTIFY channel on which a meta waiting for its shared presence hold
/// asks the one holding it exclusively to give it up.
pub const JOIN_CHANNEL: &str = "dfs_meta_join";

/// Held while this server leads; dropping it (or losing its connection)
/// gives leadership up.
pub enum LeaderLock {
    Local,
    Postgres(DbConn),
}

impl LeaderLock {
    /// Whether the lock is still held (its connection answers).
    pub async fn check(&mut self) -> bool {
        match self {
            LeaderLock::Local => true,
            LeaderLock::Postgres(conn) => conn.ping().await.is_ok(),
        }
    }
}

/// A copy for a source node to make (see `pb::ReplicateCommand`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCommand {
    pub chunk_id: u64,
    pub targets: Vec<(u64, String)>,
    pub stored_len: u64,
    pub crc32c: u32,
}

impl Store {
    /// Takes leadership if no other server holds it. A follower keeps the
    /// connection it tried on in `spare`, for its next try.
    pub async fn try_lead(&self, spare: &mut Option<DbConn>) -> Result<Option<LeaderLock>> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(LeaderLock::Local));
        }
        let mut conn = match spare.take() {
            Some(conn) => conn,
            None => match self.pool.detached().await? {
                Some(conn) => conn,
                None => return Ok(Some(LeaderLock::Local)),
            },
        };
        if try_lock(&mut conn, "SELECT pg_try_advisory_lock($1)", LEADER_LOCK).await? {
            return Ok(Some(LeaderLock::Postgres(conn)));
        }
        *spare = Some(conn);
        Ok(None)
    }

    /// A connection of its own for the presence holds: none on SQLite,
    /// where a meta is always alone.
    pub async fn presence_connection(&self) -> Result<Option<DbConn>> {
        Ok(self.pool.detached().await?)
    }

    /// Takes the shared presence hold on `conn` unless a meta holds it
    /// exclusively.
    pub async fn try_hold_presence(&self, conn: &mut DbConn) -> Result<bool> {
        try_lock(
            conn,
            "SELECT pg_try_advisory_lock_shared($1)",
            PRESENCE_LOCK,
        )
        .await
    }

    /// Takes the exclusive presence hold on `conn` (which holds the shared
    /// one) if no other meta holds either: this meta is alone.
    pub async fn try_hold_alone(&self, conn: &mut DbConn) -> Result<bool> {
        try_lock(conn, "SELECT pg_try_advisory_lock($1)", PRESENCE_LOCK).await
    }

    /// Gives the exclusive presence hold up, keeping the shared one.
    pub async fn release_alone(&self, conn: &mut DbConn) -> Result<()> {
        db::query("SELECT pg_advisory_unlock($1)")
            .bind(PRESENCE_LOCK)
            .fetch_one(conn)
            .await?;
        Ok(())
    }

    /// Asks the meta alone on the store to make room (`JOIN_CHANNEL`).
    pub async fn announce_join(&self, conn: &mut DbConn) -> Result<()> {
        db::query("SELECT pg_notify($1, '')")
            .bind(JOIN_CHANNEL)
            .fetch_one(conn)
            .await?;
        Ok(())
    }

    /// Ends the database connection of a meta that holds the exclusive
    /// presence hold and does not give it up: how many were ended.
    pub async fn fence_alone(&self, conn: &mut DbConn) -> Result<u64> {
        let ended = db::query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND classid = 0 AND objid = CAST($1 AS oid) AND objsubid = 1
               AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid()",
        )
        .bind(PRESENCE_LOCK)
        .fetch_all(conn)
        .await?;
        Ok(ended.len() as u64)
    }

    /// Queues a copy for `source`'s next heartbeat (replacing an older one
    /// for the same chunk).
    pub async fn queue_repair(&self, source: u64, command: &RepairCommand) -> Result<()> {
        let node = to_i64(source, "node id")?;
        let chunk = to_i64(command.chunk_id, "chunk id")?;
        let targets = command
            .targets
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(",");
        in_tx!(self, |tx| {
            db::query("DELETE FROM repair_commands WHERE node_id = $1 AND chunk_id = $2")
                .bind(node)
                .bind(chunk)
                .execute(&mut tx)
                .await?;
            db::query(
                "INSERT INTO repair_commands (node_id, chunk_id, targets, stored_len, crc32c, queued_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(node)
            .bind(chunk)
            .bind(targets.clone())
            .bind(command.stored_len as i64)
            .bind(i64::from(command.crc32c))
            .bind(now_ms())
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    /// How many copies wait for `source`.
    pub async fn queued_repairs(&self, source: u64) -> Result<usize> {
        let mut conn = self.conn().await?;
        let n: i64 = db::query("SELECT COUNT(*) FROM repair_commands WHERE node_id = $1")
            .bind(to_i64(source, "node id")?)
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        Ok(n as usize)
    }

    /// Hands over (and forgets) up to `limit` copies queued for `node`.
    pub async fn take_repairs(&self, node: u64, limit: usize) -> Result<Vec<RepairCommand>> {
        let key = to_i64(node, "node id")?;
        in_tx!(self, |tx| {
            let rows = db::query(
                "SELECT chunk_id, targets, stored_len, crc32c FROM repair_commands
                 WHERE node_id = $1 ORDER BY queued_ms LIMIT $2",
            )
            .bind(key)
            .bind(limit as i64)
            .fetch_all(&mut tx)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let chunk: i64 = r.try_get(0)?;
                let targets: String = r.try_get(1)?;
                out.push(RepairCommand {
                    chunk_id: chunk as u64,
                    targets: targets
                        .split(',')
                        .filter_map(|t| {
                            let (id, addr) = t.split_once('@')?;
                            Some((id.parse().ok()?, addr.to_string()))
                        })
                        .collect(),
                    stored_len: r.try_get::<i64, _>(2)? as u64,
                    crc32c: r.try_get::<i64, _>(3)? as u32,
                });
                db::query("DELETE FROM repair_commands WHERE node_id = $1 AND chunk_id = $2")
                    .bind(key)
                    .bind(chunk)
                    .execute(&mut tx)
                    .await?;
            }
            Ok(out)
        })
    }
}

/// Runs one of PostgreSQL's `pg_try_advisory_lock*` functions (`sql`) on
/// advisory lock `lock`: whether it was taken.
async fn try_lock(conn: &mut DbConn, sql: &str, lock: i64) -> Result<bool> {
    Ok(db::query(sql)
        .bind(lock)
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}
