//! Sessions: the clients meta knows. A session holds a lease that its client
//! renews; orphans (files unlinked while open), chunk allocations of writes in
//! flight and locks belong to it and are released when it closes or its lease
//! runs out, never by a fixed timer while the client lives.
//!
//! Each session also remembers the mutations it made, by request id, so a
//! retry after a lost reply gets the first outcome instead of running twice
//! (`replayed` / `record`, called inside the mutation's own transaction).

use super::db::{self, DbConn};

use super::chunks::delete_or_queue;
use super::rows::to_i64;
use super::tables::{get_inode, is_orphan, next_id};
use super::{in_tx, now_ms, Result, Store};

/// What a client says about itself when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct SessionArgs {
    pub host: String,
    pub mountpoint: String,
    pub pid: u32,
    pub version: String,
    pub kind: String,
    /// The certificate name that opened it ("" without TLS): only it, or an
    /// admin, may act in the session.
    pub owner: String,
}

/// A session as `dfs sessions` lists it.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: u64,
    pub args: SessionArgs,
    pub since_ms: i64,
    pub renewed_ms: i64,
    pub expires_ms: i64,
    pub open_files: u64,
    pub locks: u64,
    pub orphans: u64,
}

/// Whether session `id` is in the store (not ended, or not yet cleaned up).
pub(crate) async fn exists(conn: &mut DbConn, id: u64) -> Result<bool> {
    Ok(db::query("SELECT 1 FROM sessions WHERE id = $1")
        .bind(to_i64(id, "session")?)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Session `holder` holds orphan `ino` open (0: a client without a session).
pub(crate) async fn hold_orphan(conn: &mut DbConn, ino: u64, holder: u64) -> Result<()> {
    let (ino, holder) = (to_i64(ino, "inode")?, to_i64(holder, "session")?);
    let held = db::query("SELECT 1 FROM orphan_holders WHERE ino = $1 AND session_id = $2")
        .bind(ino)
        .bind(holder)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !held {
        db::query("INSERT INTO orphan_holders (ino, session_id) VALUES ($1, $2)")
            .bind(ino)
            .bind(holder)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Session `holder` lets go of orphan `ino`; the orphan is deleted once no
/// holder is left.
pub(crate) async fn drop_orphan_holder(conn: &mut DbConn, ino: u64, holder: u64) -> Result<()> {
    let key = to_i64(ino, "inode")?;
    db::query("DELETE FROM orphan_holders WHERE ino = $1 AND session_id = $2")
        .bind(key)
        .bind(to_i64(holder, "session")?)
        .execute(&mut *conn)
        .await?;
    let orphan = is_orphan(conn, ino).await?;
    let others: i64 = db::query("SELECT COUNT(*) FROM orphan_holders WHERE ino = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if orphan && others == 0 {
        db::query("DELETE FROM orphans WHERE ino = $1")
            .bind(key)
            .defer_row(&mut *conn, key)
            .await?;
        if let Some(inode) = get_inode(conn, ino).await? {
            if inode.nlink == 0 {
                delete_or_queue(conn, &inode).await?;
            }
        }
    }
    Ok(())
}

/// Releases everything a session holds and forgets it.
async fn release_session(conn: &mut DbConn, id: u64) -> Result<()> {
    let key = to_i64(id, "session")?;
    let held: Vec<i64> = db::query("SELECT ino FROM orphan_holders WHERE session_id = $1")
        .bind(key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    for ino in held {
        drop_orphan_holder(conn, ino as u64, id).await?;
    }
    // The chunk ids of its unfinished writes: a node that stored one
    // reports it as unknown, and it is collected.
    for table in ["chunk_allocations", "locks", "session_requests"] {
        db::query(&format!("DELETE FROM {table} WHERE session_id = $1"))
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    db::query("DELETE FROM sessions WHERE id = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Opens a session whose lease runs `lease_ms` from now.
    pub async fn open_session(&self, args: &SessionArgs, lease_ms: i64) -> Result<u64> {
        in_tx!(self, |tx| {
            let id = next_id(&mut tx, "session").await?;
            let now = now_ms();
            db::query(
                "INSERT INTO sessions (id, host, mountpoint, pid, version, kind, since_ms, renewed_ms, expires_ms, cert_name)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
            )
            .bind(id)
            .bind(args.host.clone())
            .bind(args.mountpoint.clone())
            .bind(i64::from(args.pid))
            .bind(args.version.clone())
            .bind(args.kind.clone())
            .bind(now)
            .bind(now + lease_ms)
            .bind(args.owner.clone())
            .execute(&mut tx)
            .await?;
            Ok(id as u64)
        })
    }

    /// Extends a live session's lease; forgets the request records below
    /// `replied_below`. Returns the new expiry, or None if the session
    /// expired (or never was).
    pub async fn renew_session(
        &self,
        id: u64,
        open_files: u64,
        replied_below: u64,
        lease_ms: i64,
    ) -> Result<Option<i64>> {
        let key = to_i64(id, "session")?;
        in_tx!(self, |tx| {
            let now = now_ms();
            let renewed = db::query(
                "UPDATE sessions SET renewed_ms = $2, expires_ms = $3, open_files = $4 WHERE id = $1 AND expires_ms >= $2",
            )
            .bind(key)
            .bind(now)
            .bind(now + lease_ms)
            .bind(i64::try_from(open_files).unwrap_or(i64::MAX))
            .execute(&mut tx)
            .await?
            .rows_affected();
            if renewed == 0 {
                return Ok(None);
            }
            db::query("DELETE FROM session_requests WHERE session_id = $1 AND request_id < $2")
                .bind(key)
                .bind(i64::try_from(replied_below).unwrap_or(i64::MAX))
                .execute(&mut tx)
                .await?;
            Ok(Some(now + lease_ms))
        })
    }

    /// A session's lease expiry (ms) and owner, if it exists.
    pub async fn session_lease(&self, id: u64) -> Result<Option<(i64, String)>> {
        let mut conn = self.conn().await?;
        db::query("SELECT expires_ms, cert_name FROM sessions WHERE id = $1")
            .bind(to_i64(id, "session")?)
            .fetch_optional(&mut conn)
            .await?
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
            .transpose()
    }

    /// A meta server starts: what was alive when meta last heard from it
    /// stays alive. Node heartbeats and session leases are moved forward by
    /// the time no meta was answering (now minus the newest heartbeat), so
    /// nodes need not all report in at once before writes can be placed and
    /// clients keep their sessions (locks, open unlinked files) through a
    /// restart; a node or session that was already stale stays as stale.
    pub async fn carry_over_restart(&self, now: i64) -> Result<i64> {
        in_tx!(self, |tx| {
            let newest: Option<i64> = db::query("SELECT MAX(last_heartbeat_ms) FROM nodes")
                .fetch_one(&mut tx)
                .await?
                .try_get(0)?;
            let gap = newest.map_or(0, |n| (now - n).max(0));
            if gap > 0 {
                db::query("UPDATE nodes SET last_heartbeat_ms = last_heartbeat_ms + $1")
                    .bind(gap)
                    .execute(&mut tx)
                    .await?;
                db::query("UPDATE sessions SET expires_ms = expires_ms + $1")
                    .bind(gap)
                    .execute(&mut tx)
                    .await?;
            }
            Ok(gap)
        })
    }

    /// A client closes its session: everything it holds is released.
    pub async fn close_session(&self, id: u64) -> Result<()> {
        in_tx!(self, |tx| release_session(&mut tx, id).await)
    }

    /// Releases every session whose lease ran out before `now_ms`; returns their ids.
    pub async fn expire_sessions(&self, now_ms: i64) -> Result<Vec<u64>> {
        let expired: Vec<i64> = {
            let mut conn = self.conn().await?;
            db::query("SELECT id FROM sessions WHERE expires_ms < $1")
                .bind(now_ms)
                .fetch_all(&mut conn)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()?
        };
        for id in &expired {
            in_tx!(self, |tx| {
                // Renewed meanwhile (by another meta): keep it.
                let still = db::query("SELECT 1 FROM sessions WHERE id = $1 AND expires_ms < $2")
                    .bind(*id)
                    .bind(now_ms)
                    .fetch_optional(&mut tx)
                    .await?
                    .is_some();
                if still {
                    release_session(&mut tx, *id as u64).await?;
                }
                Ok(())
            })?;
        }
        Ok(expired.into_iter().map(|id| id as u64).collect())
    }

    /// Every session, oldest first.
    pub async fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut conn = self.conn().await?;
        let rows = db::query(
            "SELECT s.id, s.host, s.mountpoint, s.pid, s.version, s.kind, s.since_ms, s.renewed_ms, s.expires_ms, s.open_files, s.cert_name,
                    (SELECT COUNT(*) FROM locks l WHERE l.session_id = s.id),
                    (SELECT COUNT(*) FROM orphan_holders h WHERE h.session_id = s.id)
             FROM sessions s ORDER BY s.id",
        )
        .fetch_all(&mut conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRecord {
                    id: r.try_get::<i64, _>(0)? as u64,
                    args: SessionArgs {
                        host: r.try_get(1)?,
                        mountpoint: r.try_get(2)?,
                        pid: r.try_get::<i64, _>(3)? as u32,
                        version: r.try_get(4)?,
                        kind: r.try_get(5)?,
                        owner: r.try_get(10)?,
                    },
                    since_ms: r.try_get(6)?,
                    renewed_ms: r.try_get(7)?,
                    expires_ms: r.try_get(8)?,
                    open_files: r.try_get::<i64, _>(9)? as u64,
                    locks: r.try_get::<i64, _>(11)? as u64,
                    orphans: r.try_get::<i64, _>(12)? as u64,
                })
            })
            .collect()
    }
}
