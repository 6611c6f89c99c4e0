//! What a client confined to an exported subtree may reach. Inode numbers
//! are not secrets (they are small and sequential), so every inode and
//! chunk such a client names is checked against its export's root: the
//! inode must lie below it through one of its names, or be an orphan (open,
//! unlinked) that the client's own session holds.

use dfs_proto::ROOT_INO;

use super::db;
use super::rows::to_i64;
use super::{Result, Store};

impl Store {
    /// Whether `ino` is directory `root` or lies below it (through any of its
    /// hard links), or is an orphan `session` holds open.
    pub async fn reaches(&self, root: u64, ino: u64, session: u64) -> Result<bool> {
        // Everything is below the real root, and orphans are anyone's.
        if ino == root || root == ROOT_INO {
            return Ok(true);
        }
        let (root, ino) = (to_i64(root, "inode")?, to_i64(ino, "inode")?);
        let mut conn = self.conn().await?;
        // Up the tree from `ino` by every parent, stopping at `root`; UNION
        // drops repeats, so the walk ends even on a damaged tree.
        let row = db::query(
            "WITH RECURSIVE up(ino) AS (
                 SELECT CAST($1 AS BIGINT)
                 UNION
                 SELECT d.parent FROM dentries d JOIN up ON d.ino = up.ino WHERE up.ino <> $2
             )
             SELECT (SELECT COUNT(*) FROM up WHERE ino = $2)
                  + (SELECT COUNT(*) FROM orphan_holders WHERE ino = $1 AND session_id = $3)",
        )
        .bind(ino)
        .bind(root)
        .bind(to_i64(session, "session")?)
        .fetch_one(&mut conn)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Whether chunk `chunk_id` is part of a file `reaches` allows, or was
    /// handed out to a write of `session` not yet committed.
    pub async fn chunk_reaches(&self, root: u64, chunk_id: u64, session: u64) -> Result<bool> {
        let key = to_i64(chunk_id, "chunk")?;
        let mut conn = self.conn().await?;
        let file = db::query("SELECT ino FROM file_chunks WHERE chunk_id = $1")
            .bind(key)
            .fetch_optional(&mut conn)
            .await?;
        if let Some(row) = file {
            let ino = row.try_get::<i64, _>(0)? as u64;
            drop(conn);
            return self.reaches(root, ino, session).await;
        }
        let allocated_by = db::query("SELECT session_id FROM chunk_allocations WHERE id = $1")
            .bind(key)
            .fetch_optional(&mut conn)
            .await?
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()?;
        Ok(session != 0 && allocated_by == Some(session as i64))
    }
}
