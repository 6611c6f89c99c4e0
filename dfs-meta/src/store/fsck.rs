//! `dfs fsck`: every chunk of every file (or of one subtree) checked against
//! the replication factor, with the path of each file whose data is at risk.

use std::collections::HashMap;

use super::db::{self, DbConn};
use dfs_proto::ROOT_INO;

use super::rows::to_i64;
use super::{Result, Store, StoreError};

/// What is wrong with one chunk, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChunkHealth {
    /// No replica recorded at all: the data is gone.
    Lost,
    /// Replicas recorded, none on a live node: unreadable until one returns.
    Unavailable,
    /// A node confirmed a checksum failure on a replica (quarantined).
    Corrupt,
    /// Fewer live good replicas than wanted.
    UnderReplicated,
    /// More live replicas than wanted (only space is lost).
    OverReplicated,
}

impl ChunkHealth {
    pub fn name(self) -> &'static str {
        match self {
            ChunkHealth::Lost => "lost",
            ChunkHealth::Unavailable => "unavailable",
            ChunkHealth::Corrupt => "corrupt",
            ChunkHealth::UnderReplicated => "under-replicated",
            ChunkHealth::OverReplicated => "over-replicated",
        }
    }

    /// Whether it puts data at risk (fsck's exit status).
    pub fn at_risk(self) -> bool {
        self != ChunkHealth::OverReplicated
    }
}

/// One chunk that is not healthy.
#[derive(Debug, Clone)]
pub struct ChunkProblem {
    pub ino: u64,
    pub path: String,
    pub index: u64,
    pub chunk_id: u64,
    pub health: ChunkHealth,
    pub live: u64,
    pub recorded: u64,
    pub corrupt: u64,
}

#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub files: u64,
    pub chunks: u64,
    pub healthy: u64,
    /// Chunks per health, by `ChunkHealth::name`.
    pub counts: HashMap<&'static str, u64>,
    pub orphans: u64,
    pub abandoned_allocations: u64,
    /// The problems, worst first, at most `limit`.
    pub problems: Vec<ChunkProblem>,
    pub truncated: bool,
}

/// Classifies a chunk from its live good, recorded and quarantined replicas.
pub fn chunk_health(
    live: u64,
    recorded: u64,
    corrupt: u64,
    replication: u64,
) -> Option<ChunkHealth> {
    Some(if recorded == 0 {
        ChunkHealth::Lost
    } else if live == 0 {
        ChunkHealth::Unavailable
    } else if corrupt > 0 {
        ChunkHealth::Corrupt
    } else if live < replication {
        ChunkHealth::UnderReplicated
    } else if live > replication {
        ChunkHealth::OverReplicated
    } else {
        return None;
    })
}

impl Store {
    /// Checks every chunk of the files below `root` (an inode; ROOT_INO for
    /// all). Reads only; a consistent view is not needed for a report.
    pub async fn fsck(&self, root: u64, live_cutoff_ms: i64, limit: usize) -> Result<FsckReport> {
        let replication = u64::from(self.replication);
        let mut conn = self.conn().await?;
        let rows = db::query(
            "SELECT f.ino, f.idx, f.chunk_id,
               (SELECT COUNT(*) FROM replicas r JOIN nodes n ON n.id = r.node_id
                 WHERE r.chunk_id = f.chunk_id AND n.last_heartbeat_ms >= $1) AS live,
               (SELECT COUNT(*) FROM replicas r WHERE r.chunk_id = f.chunk_id) AS recorded,
               (SELECT COUNT(*) FROM quarantined_replicas q WHERE q.chunk_id = f.chunk_id) AS corrupt
             FROM file_chunks f ORDER BY f.ino, f.idx",
        )
        .bind(live_cutoff_ms)
        .fetch_all(&mut conn)
        .await?;
        let mut report = FsckReport::default();
        let mut paths = PathCache::default();
        let mut last_ino = None;
        for row in &rows {
            let ino = row.try_get::<i64, _>(0)? as u64;
            let Some(path) = paths.path_under(&mut conn, ino, root).await? else {
                continue;
            };
            if last_ino != Some(ino) {
                report.files += 1;
                last_ino = Some(ino);
            }
            report.chunks += 1;
            let count = |i: usize| -> Result<u64> { Ok(row.try_get::<i64, _>(i)?.max(0) as u64) };
            let (live, recorded, corrupt) = (count(3)?, count(4)?, count(5)?);
            let Some(health) = chunk_health(live, recorded, corrupt, replication) else {
                report.healthy += 1;
                continue;
            };
            *report.counts.entry(health.name()).or_default() += 1;
            report.problems.push(ChunkProblem {
                ino,
                path,
                index: row.try_get::<i64, _>(1)? as u64,
                chunk_id: row.try_get::<i64, _>(2)? as u64,
                health,
                live,
                recorded,
                corrupt,
            });
        }
        report.problems.sort_by_key(|p| (p.health, p.ino, p.index));
        report.truncated = report.problems.len() > limit;
        report.problems.truncate(limit);
        let scalar = |sql: &'static str| db::query(sql);
        report.orphans = scalar("SELECT COUNT(*) FROM orphans")
            .fetch_one(&mut conn)
            .await?
            .try_get::<i64, _>(0)? as u64;
        report.abandoned_allocations = scalar(
            "SELECT COUNT(*) FROM chunk_allocations WHERE allocated_ms < $1 AND session_id = 0",
        )
        .bind(super::now_ms() - super::tables::ALLOCATION_TTL_MS)
        .fetch_one(&mut conn)
        .await?
        .try_get::<i64, _>(0)? as u64;
        Ok(report)
    }
}

/// Paths of inodes, built from their parents' entries with each directory's
/// path remembered (one name per inode: a hard-linked file shows one of its).
#[derive(Default)]
struct PathCache {
    /// Directory -> (its full path, whether it is the root of the check or below it).
    dirs: HashMap<u64, (String, bool)>,
}

impl PathCache {
    /// The full path of `ino` if it lies below `root` (an open, unlinked file
    /// has no name: `<orphan INO>`, counted only when checking everything).
    async fn path_under(
        &mut self,
        conn: &mut DbConn,
        ino: u64,
        root: u64,
    ) -> Result<Option<String>> {
        let Some((parent, name)) = entry_of(conn, ino).await? else {
            return Ok((root == ROOT_INO).then(|| format!("<orphan {ino}>")));
        };
        let (dir, under) = self.dir_path(conn, parent, root).await?;
        Ok(under.then(|| join(&dir, &name)))
    }

    async fn dir_path(&mut self, conn: &mut DbConn, dir: u64, root: u64) -> Result<(String, bool)> {
        let mut chain = Vec::new();
        let mut cur = dir;
        let (mut path, mut under) = loop {
            if let Some(known) = self.dirs.get(&cur) {
                break known.clone();
            }
            if cur == ROOT_INO {
                break (String::new(), root == ROOT_INO);
            }
            let Some((parent, name)) = entry_of(conn, cur).await? else {
                return Err(StoreError::Corrupt(format!("directory {cur} has no entry")));
            };
            chain.push((cur, name));
            if chain.len() > 100_000 {
                return Err(StoreError::Corrupt("directory loop".into()));
            }
            cur = parent;
        };
        // Walk back down, remembering each directory on the way.
        for (ino, name) in chain.into_iter().rev() {
            path = join(&path, &name);
            under = under || ino == root;
            self.dirs.insert(ino, (path.clone(), under));
        }
        Ok((path, under))
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

/// One (parent, name) entry of `ino`, if it has a name.
async fn entry_of(conn: &mut DbConn, ino: u64) -> Result<Option<(u64, String)>> {
    let row = db::query("SELECT parent, name FROM dentries WHERE ino = $1 LIMIT 1")
        .bind(to_i64(ino, "inode")?)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        let name: Vec<u8> = r.try_get(1)?;
        Ok((
            r.try_get::<i64, _>(0)? as u64,
            String::from_utf8_lossy(&name).into_owned(),
        ))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_judged_worst_first() {
        assert_eq!(chunk_health(0, 0, 0, 3), Some(ChunkHealth::Lost));
        assert_eq!(chunk_health(0, 2, 0, 3), Some(ChunkHealth::Unavailable));
        assert_eq!(chunk_health(2, 2, 1, 3), Some(ChunkHealth::Corrupt));
        assert_eq!(chunk_health(2, 3, 0, 3), Some(ChunkHealth::UnderReplicated));
        assert_eq!(chunk_health(4, 4, 0, 3), Some(ChunkHealth::OverReplicated));
        assert_eq!(chunk_health(3, 3, 0, 3), None);
        assert!(!ChunkHealth::OverReplicated.at_risk());
    }
}
