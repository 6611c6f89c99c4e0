//! Row-level pieces every other store module builds on, and that depend on
//! nothing but `db` and `rows`: id counters, inode and node rows, the origin
//! of a request and its record. Modules above use these in one direction
//! (namespace -> chunks -> tables, sessions -> chunks, nodes -> reconcile).

use std::sync::LazyLock;

use super::db::{self, DbConn};
use super::rows::{inode_columns_as, inode_from_row, to_i64, Inode};
use super::{Result, StoreError};

pub(crate) async fn get_inode(conn: &mut DbConn, ino: u64) -> Result<Option<Inode>> {
    let Ok(key) = i64::try_from(ino) else {
        return Ok(None);
    };
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM inodes WHERE ino = $1",
            inode_columns_as("inodes", "")
        )
    });
    db::query(&SQL)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| inode_from_row(&row))
        .transpose()
}

/// The UPDATE that stores `inode`'s changeable attributes (mode, owner,
/// size, times, content version, flags) in its row: a setattr's, a
/// commit's. The caller runs or defers it.
pub(crate) fn store_attrs(inode: &Inode) -> Result<db::Query<'static>> {
    Ok(db::query(
        "UPDATE inodes SET mode = $2, uid = $3, gid = $4, size = $5, atime_s = $6, atime_ns = $7,
         mtime_s = $8, mtime_ns = $9, ctime_s = $10, ctime_ns = $11, version = $12, flags = $13 WHERE ino = $1",
    )
    .bind(to_i64(inode.ino, "inode")?)
    .bind(i64::from(inode.mode))
    .bind(i64::from(inode.uid))
    .bind(i64::from(inode.gid))
    .bind(inode.size as i64)
    .bind(inode.atime.sec)
    .bind(i64::from(inode.atime.nsec))
    .bind(inode.mtime.sec)
    .bind(i64::from(inode.mtime.nsec))
    .bind(inode.ctime.sec)
    .bind(i64::from(inode.ctime.nsec))
    .bind(inode.version as i64)
    .bind(i64::from(inode.flags)))
}

pub(crate) async fn require_inode(conn: &mut DbConn, ino: u64) -> Result<Inode> {
    get_inode(conn, ino)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("inode {ino}")))
}

/// Whether `ino` is an open file without a name (or an unnamed O_TMPFILE).
pub(crate) async fn is_orphan(conn: &mut DbConn, ino: u64) -> Result<bool> {
    let Ok(key) = i64::try_from(ino) else {
        return Ok(false);
    };
    Ok(db::query("SELECT 1 FROM orphans WHERE ino = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Takes the next value of a named counter (inode and chunk ids).
pub(crate) async fn next_id(conn: &mut DbConn, counter: &str) -> Result<i64> {
    next_ids(conn, counter, 1).await
}

/// Takes `n` ids of `counter` and returns the last (the first is last - n + 1).
pub(crate) async fn next_ids(conn: &mut DbConn, counter: &str, n: i64) -> Result<i64> {
    let row = db::query("UPDATE counters SET value = value + $2 WHERE name = $1 RETURNING value")
        .bind(counter)
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>(0)?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    pub uuid: String,
    pub addr: String,
    pub zone: String,
    pub capacity: u64,
    pub used: u64,
    pub chunk_count: u64,
    pub last_heartbeat_ms: i64,
    /// Takes no new chunks; its chunks are copied elsewhere (`dfs node drain`).
    pub draining: bool,
}

/// Nodes whose last heartbeat is at or after `cutoff_ms`.
pub(crate) async fn live_nodes(conn: &mut DbConn, cutoff_ms: i64) -> Result<Vec<NodeRecord>> {
    db::query(
        "SELECT id, uuid, addr, zone, capacity, used, chunk_count, last_heartbeat_ms, draining FROM nodes WHERE last_heartbeat_ms >= $1 ORDER BY id",
    )
    .bind(cutoff_ms)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(node_from_row)
    .collect()
}

pub(crate) fn node_from_row(row: &db::Row) -> Result<NodeRecord> {
    Ok(NodeRecord {
        id: row.try_get::<i64, _>("id")? as u64,
        uuid: row.try_get("uuid")?,
        addr: row.try_get("addr")?,
        zone: row.try_get("zone")?,
        capacity: row.try_get::<i64, _>("capacity")? as u64,
        used: row.try_get::<i64, _>("used")? as u64,
        chunk_count: row.try_get::<i64, _>("chunk_count")? as u64,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
        draining: row.try_get::<i64, _>("draining")? != 0,
    })
}

/// Chunk allocations made outside a session and older than this are
/// abandoned writes; their chunks are garbage.
pub(crate) const ALLOCATION_TTL_MS: i64 = 3_600_000;

/// Who made a request: its session and its request id within it (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    pub session: u64,
    pub request: u64,
}

impl Origin {
    /// A request outside any session (nothing to replay or hold).
    pub const NONE: Origin = Origin {
        session: 0,
        request: 0,
    };

    pub(crate) fn key(self) -> Option<(i64, i64)> {
        match (i64::try_from(self.session), i64::try_from(self.request)) {
            (Ok(s), Ok(r)) if s > 0 && r > 0 => Some((s, r)),
            _ => None,
        }
    }
}

/// The outcome a mutation recorded under this request id, if it ran already.
pub(crate) async fn replayed(conn: &mut DbConn, origin: Origin) -> Result<Option<i64>> {
    let Some((session, request)) = origin.key() else {
        return Ok(None);
    };
    Ok(
        db::query("SELECT result FROM session_requests WHERE session_id = $1 AND request_id = $2")
            .bind(session)
            .bind(request)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?,
    )
}

/// Records that this request's mutation ran (in its transaction), with the
/// inode it made or 0.
pub(crate) async fn record(conn: &mut DbConn, origin: Origin, result: i64) -> Result<()> {
    let Some((session, request)) = origin.key() else {
        return Ok(());
    };
    db::query("INSERT INTO session_requests (session_id, request_id, result) VALUES ($1, $2, $3)")
        .bind(session)
        .bind(request)
        .bind(result)
        .defer_row(&mut *conn, db::row_key(&(session, request)))
        .await?;
    Ok(())
}
