//! The chunk map: which immutable chunks make up a file, and where they live.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::db::{self, DbConn};

use super::ids::Counter;
use super::rows::{
    inode_columns_as, inode_from_prefixed, to_i64, FileKind, Inode, OwnerChanges, Timespec,
};
use super::tables::{live_nodes, require_inode, store_attrs, NodeRecord, Origin};
use super::{in_tx, in_tx_once, now_ms, Result, Store, StoreError};
use crate::placement::{self, Candidate};

/// One chunk of a file as a reader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkEntry {
    pub index: u64,
    pub chunk_id: u64,
    pub stored_len: u64,
    pub crc32c: u32,
    pub valid_len: u64,
    /// (node id, address, node currently up), in the order readers should
    /// try them (`reading_order`).
    pub replicas: Vec<(u64, String, bool)>,
}

/// Up nodes first; among them, each chunk starts at another one (by its id),
/// so a file's readers spread over its nodes instead of all asking the
/// node that happens to come first, and a chunk is always read from the
/// same node while its replicas stay (that node's page cache keeps it).
fn reading_order(chunk_id: u64, replicas: &mut [(u64, String, bool)]) {
    replicas.sort_by_key(|r| (!r.2, r.0));
    let up = replicas.iter().take_while(|r| r.2).count();
    if up > 1 {
        replicas[..up].rotate_left((chunk_id % up as u64) as usize);
    }
}

#[derive(Debug, Clone)]
pub struct ChunkMap {
    pub inode: Inode,
    pub chunk_size: u32,
    pub chunks: Vec<ChunkEntry>,
}

/// A chunk a client has written to nodes and now commits to a file.
#[derive(Debug, Clone)]
pub struct CommitChunk {
    pub index: u64,
    pub chunk_id: u64,
    pub stored_len: u64,
    pub crc32c: u32,
    pub valid_len: u64,
    pub node_ids: Vec<u64>,
    /// The chunk at this index the writer started from (None: no chunk);
    /// `Some` asks for the check (`commit_write`). Outer None: no check.
    pub base: Option<Option<u64>>,
}

#[derive(Debug, Clone)]
pub struct Placement {
    pub chunk_id: u64,
    /// More fresh ids of a batch, for the same targets.
    pub more_ids: Vec<u64>,
    pub targets: Vec<NodeRecord>,
}

/// Fresh chunk ids one PlaceChunk may allocate.
pub const MAX_PLACE_BATCH: u32 = 64;

impl Store {
    /// The file's attributes and chunk map in one consistent read.
    pub async fn get_chunks(&self, ino: u64, live_cutoff_ms: i64) -> Result<ChunkMap> {
        // One query: the inode (evaluated once, in its own SELECT) with its
        // chunks and their replicas, a row per replica.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT f.idx, f.chunk_id, c.stored_len, c.crc32c, f.valid_len, n.id, n.addr,
                        n.last_heartbeat_ms, i.*
                 FROM (SELECT {} FROM inodes WHERE ino = $1) i
                 LEFT JOIN file_chunks f ON f.ino = i.i_ino
                 LEFT JOIN chunks c ON c.id = f.chunk_id
                 LEFT JOIN replicas r ON r.chunk_id = f.chunk_id
                 LEFT JOIN nodes n ON n.id = r.node_id
                 ORDER BY f.idx, n.id",
                inode_columns_as("inodes", "i_")
            )
        });
        let Ok(key) = i64::try_from(ino) else {
            return Err(StoreError::NotFound(format!("inode {ino}")));
        };
        let mut conn = self.conn().await?;
        let rows = db::query(&SQL).bind(key).fetch_all(&mut conn).await?;
        let Some(first) = rows.first() else {
            return Err(StoreError::NotFound(format!("inode {ino}")));
        };
        let inode = inode_from_prefixed(first, "i_")?;
        if inode.kind == FileKind::Directory {
            return Err(StoreError::IsDir);
        }
        let mut chunks: Vec<ChunkEntry> = Vec::new();
        for row in rows {
            // No chunk (an empty file), or a map entry without its chunk row.
            let Some(stored_len) = row.try_get::<Option<i64>, _>(2)? else {
                continue;
            };
            let index = row.try_get::<i64, _>(0)? as u64;
            if chunks.last().map(|c| c.index) != Some(index) {
                chunks.push(ChunkEntry {
                    index,
                    chunk_id: row.try_get::<i64, _>(1)? as u64,
                    stored_len: stored_len as u64,
                    crc32c: row.try_get::<i64, _>(3)? as u32,
                    valid_len: row.try_get::<i64, _>(4)? as u64,
                    replicas: Vec::new(),
                });
            }
            let node: Option<i64> = row.try_get(5)?;
            if let (Some(node), Some(entry)) = (node, chunks.last_mut()) {
                let addr: String = row.try_get(6)?;
                let beat: i64 = row.try_get(7)?;
                entry
                    .replicas
                    .push((node as u64, addr, beat >= live_cutoff_ms));
            }
        }
        for c in &mut chunks {
            reading_order(c.chunk_id, &mut c.replicas);
        }
        Ok(ChunkMap {
            inode,
            chunk_size: self.chunk_size,
            chunks,
        })
    }

    /// Chooses `count` target nodes for a chunk, allocating a fresh chunk id when
    /// `chunk_id` is 0 (held by `session` until committed, or until the
    /// session ends). Fails with NoSpace when no node qualifies.
    pub async fn place_chunk(
        &self,
        chunk_id: u64,
        count: u32,
        exclude: &[u64],
        live_cutoff_ms: i64,
        session: u64,
    ) -> Result<Placement> {
        self.place_chunks(chunk_id, count, exclude, live_cutoff_ms, session, 1)
            .await
    }

    /// `place_chunk`, allocating `batch` fresh ids (for the same targets)
    /// when `chunk_id` is 0.
    pub async fn place_chunks(
        &self,
        chunk_id: u64,
        count: u32,
        exclude: &[u64],
        live_cutoff_ms: i64,
        session: u64,
        batch: u32,
    ) -> Result<Placement> {
        let count = count.clamp(1, 16) as usize;
        let nodes = {
            let mut conn = self.conn().await?;
            live_nodes(&mut conn, live_cutoff_ms).await?
        };
        // A draining node takes no new chunk.
        let candidates: Vec<Candidate> = nodes
            .iter()
            .filter(|n| !n.draining)
            .map(|n| Candidate {
                node_id: n.id,
                zone: n.zone.clone(),
                free_bytes: n.capacity.saturating_sub(n.used),
            })
            .collect();
        let exclude: HashSet<u64> = exclude.iter().copied().collect();
        let chosen = placement::choose(&candidates, count, &exclude, u64::from(self.chunk_size));
        if chosen.is_empty() {
            return Err(StoreError::NoSpace(format!(
                "no storage node can take a chunk ({} up, {} excluded)",
                nodes.len(),
                exclude.len()
            )));
        }
        let targets = chosen
            .iter()
            .filter_map(|id| nodes.iter().find(|n| n.id == *id).cloned())
            .collect();
        let chunk_ids = if chunk_id == 0 {
            let batch = i64::from(batch.clamp(1, MAX_PLACE_BATCH));
            let ids = self.take_ids(Counter::Chunk, batch).await?;
            let (first, last) = (*ids.start(), *ids.end());
            in_tx!(self, |tx| {
                // One multi-row INSERT: ids first..=last.
                let rows = (0..batch)
                    .map(|i| format!("(${}, $1, $2)", i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO chunk_allocations (id, allocated_ms, session_id) VALUES {rows}"
                );
                let mut q = db::query(&sql)
                    .bind(now_ms())
                    .bind(to_i64(session, "session")?);
                for id in first..=last {
                    q = q.bind(id);
                }
                q.execute(&mut tx).await?;
                Ok((first..=last).map(|id| id as u64).collect::<Vec<_>>())
            })?
        } else {
            vec![chunk_id]
        };
        let (chunk_id, more_ids) = match chunk_ids.split_first() {
            Some((first, more)) => (*first, more.to_vec()),
            None => (chunk_id, Vec::new()),
        };
        Ok(Placement {
            chunk_id,
            more_ids,
            targets,
        })
    }

    /// Makes written chunks part of a file and sets its size, in one transaction.
    /// Replaced chunks and chunks past the new size go to garbage collection.
    pub async fn commit_write(
        &self,
        ino: u64,
        size: u64,
        chunks: &[CommitChunk],
        mtime: Option<Timespec>,
        origin: Origin,
    ) -> Result<Inode> {
        self.commit_write_with(ino, size, chunks, mtime, OwnerChanges::NONE, origin)
            .await
    }

    /// `commit_write`, also applying `attrs`: the chmod, chown and utimes a
    /// writer made while this commit's data was its own (in the same
    /// transaction, so the data and its attributes appear together).
    pub async fn commit_write_with(
        &self,
        ino: u64,
        size: u64,
        chunks: &[CommitChunk],
        mtime: Option<Timespec>,
        attrs: OwnerChanges,
        origin: Origin,
    ) -> Result<Inode> {
        let commit = CommitArgs {
            ino,
            size,
            chunks,
            mtime,
            attrs,
        };
        Ok(self.commit(commit, origin).await?.inode)
    }

    /// `commit_write_with`, its arguments as one value; also returns the
    /// file's chunk map when the commit made all of it.
    pub async fn commit(&self, commit: CommitArgs<'_>, origin: Origin) -> Result<Committed> {
        commit.validate(self.chunk_size)?;
        in_tx_once!(
            self,
            origin,
            |tx| commit_in(&mut tx, &commit, self.chunk_size).await,
            replay
                | _prev
                | Ok(Committed {
                    inode: require_inode(&mut tx, commit.ino).await?,
                    chunks: None
                }),
            made | _out | 0
        )
    }

    /// Punches a hole: the file's chunks at indices `from..to` leave its map
    /// (they read as zeros and store nothing), in one transaction. The size
    /// stays; the content version, mtime and ctime move.
    pub async fn punch_chunks(
        &self,
        ino: u64,
        from: u64,
        to: u64,
        origin: Origin,
    ) -> Result<Inode> {
        let from = to_i64(from, "chunk index")?;
        let to = to_i64(to, "chunk index")?;
        in_tx_once!(
            self,
            origin,
            |tx| {
                let now = Timespec::now();
                let mut inode = require_regular(&mut tx, ino).await?;
                inode.require_unpinned("punch hole")?;
                release_chunks(&mut tx, ino, from, to).await?;
                inode.version += 1;
                inode.mtime = now;
                inode.ctime = now;
                db::query(
                "UPDATE inodes SET version = $2, mtime_s = $3, mtime_ns = $4, ctime_s = $3, ctime_ns = $4 WHERE ino = $1",
            )
            .bind(to_i64(ino, "inode")?)
            .bind(inode.version as i64)
            .bind(now.sec)
            .bind(i64::from(now.nsec))
            .execute(&mut tx)
            .await?;
                Ok(inode)
            },
            replay | _prev | require_inode(&mut tx, ino).await,
            made | _out | 0
        )
    }
}

/// A commit of written chunks to file `ino` (see `Store::commit_write_with`).
pub struct CommitArgs<'a> {
    pub ino: u64,
    pub size: u64,
    pub chunks: &'a [CommitChunk],
    pub mtime: Option<Timespec>,
    pub attrs: OwnerChanges,
}

impl CommitArgs<'_> {
    /// Refuses a commit that cannot fit the file, before any transaction.
    pub(super) fn validate(&self, chunk_size: u32) -> Result<()> {
        if self.size > dfs_proto::MAX_FILE_SIZE {
            return Err(StoreError::FileTooBig(self.size));
        }
        let cs = u64::from(chunk_size);
        for c in self.chunks {
            let end = c
                .index
                .checked_mul(cs)
                .and_then(|s| s.checked_add(c.valid_len));
            if c.stored_len > cs || c.valid_len > c.stored_len || end.is_none_or(|e| e > self.size)
            {
                return Err(StoreError::Invalid(format!(
                    "chunk {} at index {} does not fit the file",
                    c.chunk_id, c.index
                )));
            }
            let unique: HashSet<_> = c.node_ids.iter().collect();
            if c.node_ids.is_empty() || unique.len() != c.node_ids.len() {
                return Err(StoreError::Invalid(format!(
                    "chunk {} replica list",
                    c.chunk_id
                )));
            }
        }
        Ok(())
    }
}

/// What a commit left: the file, and its whole chunk map when the commit's
/// chunks are all the file has (then no read after the commit is needed).
#[derive(Debug, Clone)]
pub struct Committed {
    pub inode: Inode,
    pub chunks: Option<Vec<ChunkEntry>>,
}

/// `commit` in transaction `tx`: the file as it leaves it.
pub(super) async fn commit_in(
    tx: &mut DbConn,
    commit: &CommitArgs<'_>,
    chunk_size: u32,
) -> Result<Committed> {
    let (inode, found, others) = commit_reads(tx, commit.ino, commit.chunks).await?;
    let inode = committed_inode(inode, &found, commit, chunk_size)?;
    write_commit(tx, commit, &found).await?;
    let key = to_i64(inode.ino, "inode")?;
    store_attrs(&inode)?.defer_row(tx, key).await?;
    let chunks = (others == Some(0)).then(|| committed_map(commit.chunks, &found));
    Ok(Committed { inode, chunks })
}

/// Checks commit `commit` against what its reads `found` and returns the
/// file `inode` as the commit leaves it. Writes nothing.
pub(super) fn committed_inode(
    mut inode: Inode,
    found: &[CommitFound],
    commit: &CommitArgs<'_>,
    chunk_size: u32,
) -> Result<Inode> {
    let CommitArgs {
        ino,
        size,
        chunks,
        mtime,
        attrs,
    } = *commit;
    let cs = u64::from(chunk_size);
    let now = Timespec::now();
    inode.require_mutable("write")?;
    if !attrs.is_empty() {
        inode.require_unpinned("setattr")?;
    }
    // Another client committed over a chunk this writer started
    // from: nothing changes, the writer merges and tries again.
    for (c, f) in chunks.iter().zip(found) {
        if c.base.is_some_and(|base| base != f.current) {
            return Err(StoreError::Conflict(format!(
                "chunk {} of inode {ino} changed since it was read",
                c.index
            )));
        }
    }
    // Only truncate makes a file smaller: a commit made from an
    // older size keeps what other clients appended meanwhile.
    let size = size.max(inode.size);
    if inode.append_only() {
        // Only growth at the end: no shrinking, and no chunk below
        // the one the old end of file is in may be replaced.
        let first_open = inode.size / cs;
        if size < inode.size || chunks.iter().any(|c| c.index < first_open) {
            return Err(StoreError::NotPermitted(
                "write: the file is append-only".into(),
            ));
        }
    }
    for (c, f) in chunks.iter().zip(found) {
        if !f.allocated {
            return Err(StoreError::AllocationGone(format!(
                "chunk {} was not allocated, is already committed, or its writer's session ended",
                c.chunk_id
            )));
        }
        if f.known_nodes() != c.node_ids.len() {
            return Err(StoreError::Invalid(format!(
                "chunk {}: unknown node in {:?}",
                c.chunk_id, c.node_ids
            )));
        }
    }
    // No chunk lies past `size`: the file's chunks lay within
    // its old size, and each committed one ends within the new.
    inode.size = size;
    inode.version += 1;
    inode.mtime = mtime.unwrap_or(now);
    inode.ctime = now;
    attrs.apply(&mut inode);
    Ok(inode)
}

/// The chunk writes of a checked commit (deferred writes only).
pub(super) async fn write_commit(
    tx: &mut DbConn,
    commit: &CommitArgs<'_>,
    found: &[CommitFound],
) -> Result<()> {
    for (c, f) in commit.chunks.iter().zip(found) {
        commit_chunk_in(tx, commit.ino, c, f.current).await?;
    }
    Ok(())
}

/// The map of a file whose chunks are exactly `chunks` (committed, their
/// nodes as `found` read them): what `get_chunks` would read back. The
/// nodes just took the chunk's write, so they count as up.
pub(super) fn committed_map(chunks: &[CommitChunk], found: &[CommitFound]) -> Vec<ChunkEntry> {
    let mut map: Vec<ChunkEntry> = chunks
        .iter()
        .zip(found)
        .map(|(c, f)| {
            let mut replicas: Vec<(u64, String, bool)> = c
                .node_ids
                .iter()
                .zip(&f.addrs)
                .map(|(id, addr)| (*id, addr.clone().unwrap_or_default(), true))
                .collect();
            reading_order(c.chunk_id, &mut replicas);
            ChunkEntry {
                index: c.index,
                chunk_id: c.chunk_id,
                stored_len: c.stored_len,
                crc32c: c.crc32c,
                valid_len: c.valid_len,
                replicas,
            }
        })
        .collect();
    map.sort_by_key(|c| c.index);
    map
}

/// The inode of a regular file (data changes reach no other kind).
async fn require_regular(tx: &mut DbConn, ino: u64) -> Result<Inode> {
    regular(require_inode(tx, ino).await?)
}

/// `inode` if it is a regular file.
fn regular(inode: Inode) -> Result<Inode> {
    match inode.kind {
        FileKind::Regular => Ok(inode),
        FileKind::Directory => Err(StoreError::IsDir),
        _ => Err(StoreError::Invalid("data change on a special file".into())),
    }
}

/// What a commit of chunk `c` finds in the store.
pub(super) struct CommitFound {
    /// The chunk at its index now.
    current: Option<u64>,
    /// Its id is allocated and not yet committed.
    allocated: bool,
    /// The address of each of its nodes, in its order (None: no such node).
    addrs: Vec<Option<String>>,
}

impl CommitFound {
    /// How many of its nodes are registered.
    fn known_nodes(&self) -> usize {
        self.addrs.iter().flatten().count()
    }
}

/// The file a commit goes to (a regular file), what `commit_chunk_in`
/// needs to know about each chunk, and how many chunks the file has at
/// other indices (known when the commit has chunks): the inode and the first
/// chunk in one query, each further chunk in one more.
async fn commit_reads(
    tx: &mut DbConn,
    ino: u64,
    chunks: &[CommitChunk],
) -> Result<(Inode, Vec<CommitFound>, Option<i64>)> {
    let Some((first, more)) = chunks.split_first() else {
        return Ok((require_regular(tx, ino).await?, Vec::new(), None));
    };
    let key = to_i64(ino, "inode")?;
    // Chunks of the file at indices this commit does not write.
    let written = db::placeholders(2, chunks.len());
    let sql = format!(
        "SELECT {}, {}, (SELECT COUNT(*) FROM file_chunks WHERE ino = $1 AND idx NOT IN ({written})) AS others
         FROM inodes WHERE ino = $1",
        inode_columns_as("inodes", "i_"),
        check_columns(0, 2 + chunks.len(), first, true),
    );
    let mut q = db::query(&sql).bind(key);
    for c in chunks {
        q = q.bind(to_i64(c.index, "chunk index")?);
    }
    let Some(row) = bind_checks(q, first, true)?
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Err(StoreError::NotFound(format!("inode {ino}")));
    };
    let inode = regular(inode_from_prefixed(&row, "i_")?)?;
    let others = row.try_get::<i64, _>("others")?;
    let mut found = vec![checked(&row, 0, first, true)?];
    for c in more {
        // (A SELECT without FROM always returns its one row.)
        let sql = format!("SELECT {}", check_columns(0, 2, c, true));
        let q = bind_checks(db::query(&sql).bind(key), c, true)?;
        let row = q
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a commit check returned no row".into()))?;
        found.push(checked(&row, 0, c, true)?);
    }
    Ok((inode, found, Some(others)))
}

/// The columns reading what a commit checks of chunk `c`, the `k`th of the
/// query, its parameters numbered from `$first` (bound by `bind_checks`):
/// whether its id is allocated, the address of each of its nodes, and with
/// `current` the chunk at its index of the file `$1` now.
pub(super) fn check_columns(k: usize, first: usize, c: &CommitChunk, current: bool) -> String {
    let mut columns =
        format!("(SELECT COUNT(*) FROM chunk_allocations WHERE id = ${first}) AS k{k}_allocated");
    for j in 0..c.node_ids.len() {
        let n = first + 1 + j;
        columns.push_str(&format!(
            ", (SELECT addr FROM nodes WHERE id = ${n}) AS k{k}_node{j}"
        ));
    }
    if current {
        let n = first + 1 + c.node_ids.len();
        columns.push_str(&format!(
            ", (SELECT chunk_id FROM file_chunks WHERE ino = $1 AND idx = ${n}) AS k{k}_current"
        ));
    }
    columns
}

/// Binds the parameters of `check_columns` for `c`, in order.
pub(super) fn bind_checks<'q>(
    mut q: db::Query<'q>,
    c: &CommitChunk,
    current: bool,
) -> Result<db::Query<'q>> {
    q = q.bind(to_i64(c.chunk_id, "chunk id")?);
    for node in &c.node_ids {
        q = q.bind(to_i64(*node, "node id")?);
    }
    if current {
        q = q.bind(to_i64(c.index, "chunk index")?);
    }
    Ok(q)
}

/// What `check_columns` read of chunk `c` (the `k`th); without
/// `current`, no chunk is at its index (a file made in this transaction).
pub(super) fn checked(
    row: &db::Row,
    k: usize,
    c: &CommitChunk,
    current: bool,
) -> Result<CommitFound> {
    let current = match current {
        true => row
            .try_get::<Option<i64>, _>(format!("k{k}_current").as_str())?
            .map(|id| id as u64),
        false => None,
    };
    let addrs = (0..c.node_ids.len())
        .map(|j| row.try_get::<Option<String>, _>(format!("k{k}_node{j}").as_str()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(CommitFound {
        current,
        allocated: row.try_get::<i64, _>(format!("k{k}_allocated").as_str())? > 0,
        addrs,
    })
}

/// Puts chunk `c` (checked by `commit_check`) at its index of the file,
/// releasing `current`, the chunk there before. Deferred writes only.
async fn commit_chunk_in(
    tx: &mut DbConn,
    ino: u64,
    c: &CommitChunk,
    current: Option<u64>,
) -> Result<()> {
    let id = to_i64(c.chunk_id, "chunk id")?;
    let index = to_i64(c.index, "chunk index")?;
    if current.is_some() {
        release_chunks(tx, ino, index, index.saturating_add(1)).await?;
    }
    db::query("DELETE FROM chunk_allocations WHERE id = $1")
        .bind(id)
        .defer(&mut *tx)
        .await?;
    db::query("INSERT INTO chunks (id, stored_len, crc32c) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(c.stored_len as i64)
        .bind(i64::from(c.crc32c))
        .defer(&mut *tx)
        .await?;
    let rows = (0..c.node_ids.len())
        .map(|i| format!("($1, ${}, $2)", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO replicas (chunk_id, node_id, added_ms) VALUES {rows}");
    let mut q = db::query(&sql).bind(id).bind(super::now_ms());
    for node in &c.node_ids {
        q = q.bind(to_i64(*node, "node id")?);
    }
    q.defer(&mut *tx).await?;
    db::query("INSERT INTO file_chunks (ino, idx, chunk_id, valid_len) VALUES ($1, $2, $3, $4)")
        .bind(to_i64(ino, "inode")?)
        .bind(index)
        .bind(id)
        .bind(c.valid_len as i64)
        .defer(&mut *tx)
        .await?;
    Ok(())
}

/// Cuts a file's chunk map to `size`: chunks wholly past it are released, the
/// chunk it ends in keeps only the bytes below it (the rest reads as zeros).
pub(crate) async fn truncate_map(
    tx: &mut DbConn,
    ino: u64,
    size: u64,
    chunk_size: u32,
) -> Result<()> {
    let cs = u64::from(chunk_size);
    let first_gone = size.div_ceil(cs);
    release_chunks(tx, ino, to_i64(first_gone, "chunk index")?, i64::MAX).await?;
    if !size.is_multiple_of(cs) {
        let last = size / cs;
        db::query(
            "UPDATE file_chunks SET valid_len = $3 WHERE ino = $1 AND idx = $2 AND valid_len > $3",
        )
        .bind(to_i64(ino, "inode")?)
        .bind(last as i64)
        .bind((size - last * cs) as i64)
        .defer_row(&mut *tx, to_i64(ino, "inode")?)
        .await?;
    }
    Ok(())
}

/// Drops the file's chunks at indices `from..to` and queues their replicas
/// for deletion on the nodes (deferred writes: one round trip on PostgreSQL,
/// sent with the caller's next ones).
async fn release_chunks(tx: &mut DbConn, ino: u64, from: i64, to: i64) -> Result<()> {
    let ino = to_i64(ino, "inode")?;
    let filter = "ino = $1 AND idx >= $2 AND idx < $3";
    let args = [ino, from, to].map(db::Value::Int);
    release_where(tx, filter, &args, Some(ino)).await
}

/// Drops the chunks of the `file_chunks` rows matching `filter` (a condition
/// on its columns with parameters `$1..` bound to `args`), their replicas
/// queued for deletion on the nodes. `file`: the rows are all of that one
/// file (whose chunks are its own), so the writes go with other files'.
async fn release_where(
    tx: &mut DbConn,
    filter: &str,
    args: &[db::Value],
    file: Option<i64>,
) -> Result<()> {
    async fn defer(tx: &mut DbConn, q: db::Query<'_>, file: Option<i64>) -> Result<()> {
        match file {
            Some(key) => q.defer_row(tx, key).await?,
            None => q.defer(tx).await?,
        }
        Ok(())
    }
    let selected = format!("SELECT chunk_id FROM file_chunks WHERE {filter}");
    let now = args.len() + 1;
    let queue = format!(
        "INSERT INTO gc_replicas (chunk_id, node_id, queued_ms)
         SELECT chunk_id, node_id, CAST(${now} AS BIGINT) FROM replicas WHERE chunk_id IN ({selected})
         UNION SELECT chunk_id, node_id, CAST(${now} AS BIGINT) FROM quarantined_replicas WHERE chunk_id IN ({selected})
         ON CONFLICT DO NOTHING"
    );
    defer(tx, with_args(&queue, args).bind(super::now_ms()), file).await?;
    for statement in [
        format!("DELETE FROM replicas WHERE chunk_id IN ({selected})"),
        format!("DELETE FROM quarantined_replicas WHERE chunk_id IN ({selected})"),
        format!("DELETE FROM chunks WHERE id IN ({selected})"),
        format!("DELETE FROM file_chunks WHERE {filter}"),
    ] {
        defer(tx, with_args(&statement, args), file).await?;
    }
    Ok(())
}

/// Tables besides `inodes` whose rows belong to one inode, deleted with it.
const INODE_PARTS: [&str; 4] = ["xattrs", "orphans", "orphan_holders", "locks"];

pub(crate) async fn delete_inode(conn: &mut DbConn, ino: u64) -> Result<()> {
    truncate_map(conn, ino, 0, 1).await?;
    let key = to_i64(ino, "inode")?;
    for table in INODE_PARTS.iter().chain(&["inodes"]) {
        db::query(&format!("DELETE FROM {table} WHERE ino = $1"))
            .bind(key)
            .defer_row(&mut *conn, key)
            .await?;
    }
    Ok(())
}

/// Whether deleting `inode` has chunks to release: then it is queued
/// (`queue_deletion`) rather than deleted in the caller's transaction.
pub(crate) fn may_hold_data(inode: &Inode) -> bool {
    inode.kind == FileKind::Regular && inode.size > 0
}

/// `inode` lost its last name and holder: a file with data is queued for
/// the purge, anything else deleted now (as cheap as queueing it).
pub(crate) async fn delete_or_queue(conn: &mut DbConn, inode: &Inode) -> Result<()> {
    if may_hold_data(inode) {
        queue_deletion(conn, inode.ino).await
    } else {
        delete_inode(conn, inode.ino).await
    }
}

/// A file lost its last name and no one holds it open: it waits in
/// `deleted_inodes` for `purge_deleted`, which deletes its rows, chunks and
/// replicas in batches. Deleting them here wrote about ten more pages to
/// the WAL per unlink (the chunk, its file map entry, three replicas and
/// their index entries, three queued deletions and theirs) than the two
/// this writes. Until the purge the inode stays readable by number, with
/// no links, as an open unlinked file's is.
pub(crate) async fn queue_deletion(conn: &mut DbConn, ino: u64) -> Result<()> {
    let key = to_i64(ino, "inode")?;
    db::query("INSERT INTO deleted_inodes (ino, since_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(key)
        .bind(now_ms())
        .defer_row(&mut *conn, key)
        .await?;
    Ok(())
}

/// Deletes up to `limit` files queued by `queue_deletion`: their rows and
/// chunk maps, their replicas queued for the nodes' garbage collection.
/// Returns how many left the queue. One that has a link again (it should
/// not: `link` refuses queued files) only leaves the queue.
pub(crate) async fn purge_deleted(conn: &mut DbConn, limit: i64) -> Result<usize> {
    let queued = db::query(
        "SELECT d.ino, i.nlink FROM deleted_inodes d LEFT JOIN inodes i ON i.ino = d.ino
         ORDER BY d.ino LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut all = Vec::with_capacity(queued.len());
    let mut dead = Vec::with_capacity(queued.len());
    for row in &queued {
        let ino: i64 = row.try_get(0)?;
        all.push(ino);
        if row.try_get::<Option<i64>, _>(1)? == Some(0) {
            dead.push(ino);
        }
    }
    if !dead.is_empty() {
        let (dead_ones, args) = db::one_of(conn, "ino", &dead);
        // The inodes first: a commit to one of them in flight on PostgreSQL
        // conflicts here, so either the purge runs again and sees its chunks,
        // or the commit runs again and finds no inode.
        let sql = format!("DELETE FROM inodes WHERE {dead_ones}");
        with_args(&sql, &args).execute(&mut *conn).await?;
        release_where(conn, &dead_ones, &args, None).await?;
        for table in INODE_PARTS {
            let sql = format!("DELETE FROM {table} WHERE {dead_ones}");
            with_args(&sql, &args).defer(&mut *conn).await?;
        }
    }
    if !all.is_empty() {
        let (queued, args) = db::one_of(conn, "ino", &all);
        let sql = format!("DELETE FROM deleted_inodes WHERE {queued}");
        with_args(&sql, &args).execute(&mut *conn).await?;
    }
    Ok(all.len())
}

/// `sql` with `args` bound to `$1..`.
fn with_args<'q>(sql: &'q str, args: &[db::Value]) -> db::Query<'q> {
    args.iter().fold(db::query(sql), |q, a| q.bind(a.clone()))
}

#[cfg(test)]
mod tests {
    use super::reading_order;

    fn order(chunk_id: u64, replicas: &[(u64, bool)]) -> Vec<u64> {
        let mut r: Vec<(u64, String, bool)> = replicas
            .iter()
            .map(|&(n, up)| (n, format!("node{n}"), up))
            .collect();
        reading_order(chunk_id, &mut r);
        r.iter().map(|r| r.0).collect()
    }

    #[test]
    fn readers_of_consecutive_chunks_start_at_different_up_nodes() {
        let nodes = [(3, true), (1, true), (2, true)];
        let firsts: Vec<u64> = (10..13).map(|id| order(id, &nodes)[0]).collect();
        let mut distinct = firsts.clone();
        distinct.sort();
        assert_eq!(distinct, vec![1, 2, 3], "{firsts:?}");
        assert_eq!(order(10, &nodes), order(10, &nodes), "stable per chunk");
    }

    #[test]
    fn down_nodes_come_last_whatever_the_chunk() {
        for id in 0..6 {
            let o = order(id, &[(1, false), (2, true), (3, true)]);
            assert_eq!(o[2], 1, "chunk {id}: {o:?}");
        }
        assert_eq!(order(7, &[(1, false), (2, true)]), vec![2, 1]);
    }
}
