//! One open file in this mount, shared by every handle open on it, so writes
//! through one descriptor are seen at once through another.
//!
//! Written bytes collect per chunk in `dirty`. A full chunk (or the oldest one,
//! when too many are dirty) is uploaded in the background; uploaded chunks are
//! committed to meta in small batches and on flush. Reads see, in order: dirty
//! bytes, uploads in flight or not yet committed, the committed chunk map
//! (through the chunk cache), and zeros for holes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use dfs_client::buffers;
use dfs_client::chunk_io::UploadedChunk;
use dfs_client::commit::{commit_size, committed_chunks, Written};
use dfs_proto::{pb, zero_runs};
use prost::bytes::Bytes;
use tokio::task::JoinHandle;

use crate::deferred::{HeldCreate, Landing};
use crate::error::{FsError, FsResult};
use crate::io::{Io, Part, PendingRead, Piece};
use crate::memory::MemoryBudget;
use crate::metrics::FuseMetrics;

/// Dirty chunks kept before the oldest is uploaded early (bounds memory per file).
const MAX_DIRTY: usize = 4;
/// Uploads in flight per file.
const MAX_INFLIGHT: usize = 4;
/// Chunks a sequential reader has fetched ahead of it.
const PREFETCH_CHUNKS: u64 = 4;
/// Uploaded chunks committed together before flush.
const COMMIT_EVERY: usize = 4;

/// How far from the previous read's end a read still counts as part of a scan
/// (twice the kernel's largest readahead).
const SCAN_WINDOW: u64 = 2 << 20;
/// A first write into a new chunk this large (glibc's mmap threshold in the
/// mount) starts from a pooled whole-chunk buffer (`dfs_client::buffers`).
const LARGE_WRITE: usize = 128 * 1024;

/// What identifies a file's content as meta last reported it: any data change
/// (a commit bumps `version`; a truncate moves size and mtime) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentSignature {
    version: u64,
    size: u64,
    mtime: (i64, u32),
}

impl ContentSignature {
    pub fn of(attr: &pb::Attr) -> ContentSignature {
        let mtime = attr.mtime.as_ref().map_or((0, 0), |t| (t.sec, t.nsec));
        ContentSignature {
            version: attr.version,
            size: attr.size,
            mtime,
        }
    }
}

/// What a mount wrote into one chunk since its last commit of it.
#[derive(Debug, Clone, Default)]
struct ChunkEdit {
    /// The file's chunk at this index when the edit began (None: a hole).
    base: Option<u64>,
    /// Byte ranges written, within the chunk, sorted and merged.
    written: Vec<(usize, usize)>,
}

impl ChunkEdit {
    fn add(&mut self, from: usize, to: usize) {
        let (mut from, mut to) = (from, to);
        self.written.retain(|&(a, b)| {
            let apart = b < from || a > to;
            if !apart {
                from = from.min(a);
                to = to.max(b);
            }
            apart
        });
        let at = self.written.partition_point(|&(a, _)| a < from);
        self.written.insert(at, (from, to));
    }
}

type Upload = JoinHandle<Result<UploadedChunk, dfs_client::ClientError>>;

pub struct OpenFile {
    pub ino: u64,
    chunk_size: u64,
    /// Size as this mount sees it, unflushed writes included.
    pub size: u64,
    committed_size: u64,
    committed: HashMap<u64, pb::ChunkRef>,
    /// The content as of the last chunk map or commit from meta.
    signature: ContentSignature,
    /// Modification time as this mount sees it: the last local write, or
    /// meta's mtime as of the last chunk map or commit. Sent with commits, so
    /// the time a stat showed while the file was open is the one that stays.
    mtime: pb::Timespec,
    /// Inode flags (chattr) as of the last chunk map: opens check them.
    pub inode_flags: u32,
    dirty: BTreeMap<u64, Vec<u8>>,
    /// For each chunk this mount is changing: the chunk it started from and
    /// the byte ranges it wrote, until committed. A commit is accepted only
    /// if that chunk is still the file's; otherwise these ranges are merged
    /// into the current chunk (another mount's bytes elsewhere in it stay).
    edits: HashMap<u64, ChunkEdit>,
    inflight: BTreeMap<u64, (Bytes, Upload)>,
    uploaded: BTreeMap<u64, (UploadedChunk, Bytes)>,
    /// Something changed since the last commit (data or size).
    changed: bool,
    /// A failure in a drain nobody was waiting for, reported by the next flush.
    pending_error: Option<FsError>,
    /// Buffered bytes last added to the `dfs_fuse_dirty_bytes` gauge and the memory budget.
    reported_dirty: i64,
    metrics: Arc<FuseMetrics>,
    memory: Arc<MemoryBudget>,
    last_read_end: u64,
    /// Reads in a row that began near where the one before ended.
    near_reads: u32,
    /// The chunk the latest write ended in, and when (kept by a drain while
    /// the file is being written).
    last_write_index: Option<u64>,
    last_write_at: Option<std::time::Instant>,
    /// This mount holds the file's append lock on meta (`append.rs`).
    pub append_lock_held: bool,
    /// chmod, chown and utimes held for the next commit (`hold_attrs`).
    held_attrs: Option<HeldAttrs>,
    /// A file created early: meta may not have it yet, so everything that
    /// asks meta about it waits for this first (`deferred.rs`).
    landing: Option<Landing>,
    /// The early create, while its first commit may still carry it.
    held_create: Option<Arc<HeldCreate>>,
    /// Told this file's inode when the last reference to it goes
    /// (`with_drop_notice`).
    drop_notice: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
}

/// Attribute changes answered by this mount and sent with the next commit.
#[derive(Debug, Clone)]
struct HeldAttrs {
    changes: pb::AttrChanges,
    /// When the last of them was made: the file's ctime until the commit.
    ctime: pb::Timespec,
}

/// An attribute change `OpenFile::hold_attrs` may take.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<pb::Timespec>,
    pub mtime: Option<pb::Timespec>,
}

impl OpenFile {
    /// Opens with a fresh chunk map from meta (close-to-open consistency).
    pub async fn load(io: &Io, ino: u64) -> FsResult<OpenFile> {
        let ticket = io.coherence.ticket();
        let map = io.files.get_chunks(ino).await?;
        io.coherence.learned_map(ticket, &map);
        let attr = map.attr.unwrap_or(pb::Attr {
            ino,
            ..Default::default()
        });
        Ok(OpenFile::from_map(io, &attr, map.chunk_size, map.chunks))
    }

    /// The file from the chunk map this mount holds for it, when nothing
    /// changed it since meta gave the map (`Coherence::known_map`): an open
    /// without a round trip.
    pub fn cached(io: &Io, ino: u64) -> Option<OpenFile> {
        let (map, attr) = io.coherence.known_map(ino)?;
        Some(OpenFile::from_map(
            io,
            &attr,
            map.chunk_size,
            map.chunks.clone(),
        ))
    }

    /// A file this mount just created: empty, so no chunk map to fetch.
    /// `landing`: it was created early, and meta may not have it yet.
    pub fn created(
        io: &Io,
        attr: &pb::Attr,
        chunk_size: u32,
        landing: Option<Landing>,
    ) -> OpenFile {
        let mut file = OpenFile::from_map(io, attr, chunk_size, Vec::new());
        file.landing = landing;
        file
    }

    /// Its early create is held for its first commit to carry (`deferred.rs`).
    pub fn with_held_create(mut self, held: Arc<HeldCreate>) -> OpenFile {
        self.held_create = Some(held);
        self
    }

    /// `notice` hears this file's inode when it is dropped: a close is
    /// reported once nothing holds the file, whoever let go of it last (a
    /// handle's release, or a task that looked at it meanwhile).
    pub fn with_drop_notice(mut self, notice: tokio::sync::mpsc::UnboundedSender<u64>) -> OpenFile {
        self.drop_notice = Some(notice);
        self
    }

    /// Its drop tells nothing: the caller reports the close itself.
    pub fn forget_drop_notice(&mut self) {
        self.drop_notice = None;
    }

    /// Waits until meta has this file, if it was created early; fails (EIO)
    /// for good if meta refused the create.
    pub async fn landed(&mut self) -> FsResult<()> {
        if let Some(held) = &self.held_create {
            held.go();
        }
        if let Some(landing) = self.landing.as_mut() {
            landing.wait().await?;
            self.landing = None;
        }
        self.held_create = None;
        Ok(())
    }

    fn from_map(io: &Io, attr: &pb::Attr, chunk_size: u32, chunks: Vec<pb::ChunkRef>) -> OpenFile {
        OpenFile {
            ino: attr.ino,
            chunk_size: u64::from(chunk_size.max(1)),
            size: attr.size,
            committed_size: attr.size,
            committed: chunks.into_iter().map(|c| (c.index, c)).collect(),
            signature: ContentSignature::of(attr),
            mtime: attr.mtime.unwrap_or_default(),
            inode_flags: attr.flags,
            dirty: BTreeMap::new(),
            edits: HashMap::new(),
            inflight: BTreeMap::new(),
            uploaded: BTreeMap::new(),
            changed: false,
            pending_error: None,
            reported_dirty: 0,
            metrics: io.metrics.clone(),
            memory: io.memory.clone(),
            last_read_end: u64::MAX,
            near_reads: 0,
            last_write_index: None,
            last_write_at: None,
            append_lock_held: false,
            held_attrs: None,
            landing: None,
            held_create: None,
            drop_notice: None,
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size as u32
    }

    /// Re-reads the chunk map when nothing local is pending (a new open of a file
    /// another mount may have changed).
    pub async fn refresh(&mut self, io: &Io) -> FsResult<()> {
        self.landed().await?;
        if self.changed {
            return Ok(());
        }
        let mut fresh = OpenFile::load(io, self.ino).await?;
        self.size = fresh.size;
        self.committed_size = fresh.size;
        self.committed = std::mem::take(&mut fresh.committed);
        self.signature = fresh.signature;
        self.mtime = fresh.mtime;
        self.inode_flags = fresh.inode_flags;
        Ok(())
    }

    /// Reads the chunk map again because a chunk of this one is gone (the
    /// file changed elsewhere and the old chunk was deleted after meta's
    /// grace period): what this mount has not changed itself is then read
    /// from the new map.
    pub async fn reload_map(&mut self, io: &Io) -> FsResult<()> {
        self.landed().await?;
        if !self.changed {
            return self.refresh(io).await;
        }
        let mut fresh = OpenFile::load(io, self.ino).await?;
        self.committed = std::mem::take(&mut fresh.committed);
        Ok(())
    }

    /// Corrects attributes from meta with what this mount knows better: the
    /// size and times of writes it has not committed yet, and of its own
    /// commits or truncates when the reply left meta before they landed (an
    /// older content version). Without the latter, a stat racing with a close
    /// would show the old end of file, and an append after `lseek(SEEK_END)`
    /// would land on top of the last write.
    pub fn overlay(&self, attr: &mut pb::Attr) {
        if self.changed || attr.version < self.signature.version {
            attr.size = self.size;
            attr.version = attr.version.max(self.signature.version);
            attr.mtime = Some(self.mtime);
            raise_ctime(attr, self.mtime);
        }
        if let Some(held) = &self.held_attrs {
            let c = &held.changes;
            attr.mode = c.mode.unwrap_or(attr.mode);
            attr.uid = c.uid.unwrap_or(attr.uid);
            attr.gid = c.gid.unwrap_or(attr.gid);
            attr.atime = c.atime.or(attr.atime);
            raise_ctime(attr, held.ctime);
        }
    }

    /// Answers chmod, chown and utimes here and sends them with the next
    /// commit instead of one SetAttr round trip each (`tar x` makes three
    /// per file), when nobody can tell the difference: the file has never
    /// had committed content and this mount's data for it is pending, so
    /// other clients see an empty file until the commit brings the data and
    /// these attributes together. `current`: the file's attributes now.
    /// Refused (false, nothing held) for a chown to another owner or group
    /// (meta may map or refuse it by export), a file with inode flags or
    /// under an append lock, or when a commit is not certain to follow.
    pub fn hold_attrs(&mut self, current: &pb::Attr, change: AttrChange) -> bool {
        let owner_kept = change.uid.is_none_or(|u| u == current.uid)
            && change.gid.is_none_or(|g| g == current.gid);
        let nothing = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.atime.is_none()
            && change.mtime.is_none();
        if nothing
            || !owner_kept
            || !self.changed
            || self.committed_size != 0
            || self.inode_flags != 0
            || current.flags != 0
            || self.append_lock_held
        {
            return false;
        }
        let held = self.held_attrs.get_or_insert_with(|| HeldAttrs {
            changes: pb::AttrChanges::default(),
            ctime: pb::Timespec::default(),
        });
        let c = &mut held.changes;
        c.mode = change.mode.map(|m| m & 0o7777).or(c.mode);
        c.uid = change.uid.or(c.uid);
        c.gid = change.gid.or(c.gid);
        c.atime = change.atime.or(c.atime);
        held.ctime = now();
        if let Some(t) = change.mtime {
            self.mtime = t;
        }
        true
    }

    /// The held attribute changes, no longer held: the caller sends them.
    pub fn take_held_attrs(&mut self) -> Option<pb::AttrChanges> {
        self.held_attrs.take().map(|h| h.changes)
    }

    /// An mtime meta set (utimes while this mount's writes are pending):
    /// the commit carries it instead of the last write's time.
    pub fn set_mtime(&mut self, mtime: pb::Timespec) {
        if self.changed {
            self.mtime = mtime;
        }
    }

    /// Whether anything written or truncated here is not committed yet.
    pub fn has_changes(&self) -> bool {
        self.changed
    }

    pub fn signature(&self) -> ContentSignature {
        self.signature
    }

    pub async fn write(&mut self, io: &Io, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= dfs_proto::MAX_FILE_SIZE)
            .ok_or_else(|| FsError::new(libc::EFBIG, "write past the largest file size"))?;
        let cs = self.chunk_size;
        let mut pos = offset;
        while pos < end {
            let index = pos / cs;
            let within = (pos - index * cs) as usize;
            let take = ((cs - within as u64).min(end - pos)) as usize;
            let piece = &data[(pos - offset) as usize..(pos - offset) as usize + take];
            if !self.dirty.contains_key(&index) {
                let mut base = self.base_of(io, index).await?;
                if base.is_empty() && take >= LARGE_WRITE {
                    // A large writer fills whole chunks: a reused buffer
                    // spares the faults of a fresh mapping.
                    base = buffers::take(cs as usize);
                }
                self.dirty.insert(index, base);
                let from = self.committed.get(&index).map(|c| c.chunk_id);
                self.edits.entry(index).or_insert_with(|| ChunkEdit {
                    base: from,
                    written: Vec::new(),
                });
            }
            if let Some(edit) = self.edits.get_mut(&index) {
                edit.add(within, within + take);
            }
            if let Some(buf) = self.dirty.get_mut(&index) {
                if buf.len() < within + take {
                    zero_runs::zero_extend(buf, within + take);
                }
                buf[within..within + take].copy_from_slice(piece);
            }
            if self.dirty.get(&index).is_some_and(|b| b.len() as u64 == cs) {
                self.start_upload(io, index, false).await?;
            }
            pos += take as u64;
        }
        self.size = self.size.max(end);
        self.changed = true;
        self.mtime = now();
        if end > offset {
            self.last_write_index = Some((end - 1) / cs);
            self.last_write_at = Some(std::time::Instant::now());
        }
        while self.dirty.len() > MAX_DIRTY {
            let Some(&oldest) = self.dirty.keys().next() else {
                break;
            };
            self.start_upload(io, oldest, false).await?;
        }
        if self.uploaded.len() >= COMMIT_EVERY {
            self.commit(io, false).await?;
        }
        self.report_dirty(io);
        Ok(())
    }

    /// Brings the dirty-bytes gauge and the mount's memory budget up to date
    /// with this file's buffers; growing buffers push cached chunks out.
    fn report_dirty(&mut self, io: &Io) {
        let now = self.dirty.values().map(Vec::len).sum::<usize>()
            + self.inflight.values().map(|(d, _)| d.len()).sum::<usize>()
            + self.uploaded.values().map(|(_, d)| d.len()).sum::<usize>();
        let delta = now as i64 - self.reported_dirty;
        self.metrics.dirty_bytes.add(delta);
        self.memory.adjust_buffered(delta);
        self.reported_dirty = now as i64;
        if delta > 0 {
            io.cache.trim();
        }
    }

    /// Keeps an error from a drain no caller waited for, for the next flush.
    pub fn defer_error(&mut self, e: FsError) {
        self.pending_error.get_or_insert(e);
    }

    /// Whether a write reached this file in the last second (a writer that
    /// is still at it, between two writes).
    pub fn recently_written(&self) -> bool {
        self.last_write_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
    }

    /// Uploads and commits this file's buffered chunks (without its final
    /// size), freeing the buffers when the mount is short of memory. A file
    /// being written keeps the chunk its last write touched: uploading that
    /// partial chunk on every write would upload it again and again as it fills.
    pub async fn drain(&mut self, io: &Io, keep_current: bool) -> FsResult<()> {
        let keep = keep_current.then_some(self.last_write_index).flatten();
        self.upload_dirty(io, false, keep).await?;
        if !self.uploaded.is_empty() {
            self.commit(io, false).await?;
        }
        self.report_dirty(io);
        Ok(())
    }

    /// Uploads every dirty chunk but `keep` and waits for all uploads.
    async fn upload_dirty(&mut self, io: &Io, durable: bool, keep: Option<u64>) -> FsResult<()> {
        let indices: Vec<u64> = self
            .dirty
            .keys()
            .copied()
            .filter(|i| Some(*i) != keep)
            .collect();
        for index in indices {
            self.start_upload(io, index, durable).await?;
        }
        while !self.inflight.is_empty() {
            self.finish_one_upload().await?;
        }
        Ok(())
    }

    /// The bytes a chunk holds before a write touches it (without the zeros past
    /// its valid length).
    async fn base_of(&mut self, io: &Io, index: u64) -> FsResult<Vec<u8>> {
        if let Some((data, handle)) = self.inflight.remove(&index) {
            self.await_upload(index, data.clone(), handle).await?;
            return Ok(data.to_vec());
        }
        if let Some((_, data)) = self.uploaded.get(&index) {
            return Ok(data.to_vec());
        }
        let Some(mut chunk) = self.committed.get(&index).cloned() else {
            return Ok(Vec::new());
        };
        let data = match io.chunk_bytes(&chunk).await {
            Err(e) if e.is_chunk_gone() => {
                self.reload_map(io).await?;
                let Some(fresh) = self.committed.get(&index).cloned() else {
                    return Ok(Vec::new());
                };
                chunk = fresh;
                io.chunk_bytes(&chunk).await?
            }
            other => other?,
        };
        let valid = (chunk.valid_len as usize).min(data.len());
        Ok(data[..valid].to_vec())
    }

    /// Moves a dirty chunk to a background upload, waiting for room first.
    async fn start_upload(&mut self, io: &Io, index: u64, durable: bool) -> FsResult<()> {
        let Some(buf) = self.dirty.remove(&index) else {
            return Ok(());
        };
        while self.inflight.len() >= MAX_INFLIGHT {
            self.finish_one_upload().await?;
        }
        let data = buffers::freeze(buf);
        let handle = tokio::spawn(io.chunks.upload(data.clone(), durable));
        self.inflight.insert(index, (data, handle));
        Ok(())
    }

    async fn finish_one_upload(&mut self) -> FsResult<()> {
        let Some((index, (data, handle))) = self.inflight.pop_first() else {
            return Ok(());
        };
        self.await_upload(index, data, handle).await
    }

    /// Waits for one chunk's upload. A failed upload puts its bytes back among
    /// the dirty chunks: the error goes to the caller, and the next flush tries
    /// again, so nothing is lost silently (nor a size committed over missing data).
    async fn await_upload(&mut self, index: u64, data: Bytes, handle: Upload) -> FsResult<()> {
        let result = match handle.await {
            Ok(uploaded) => uploaded.map_err(FsError::from),
            Err(e) => Err(FsError::new(libc::EIO, e.to_string())),
        };
        match result {
            Ok(uploaded) => {
                self.uploaded.insert(index, (uploaded, data));
                Ok(())
            }
            Err(e) => {
                self.dirty.entry(index).or_insert_with(|| data.to_vec());
                Err(e)
            }
        }
    }

    /// Commits uploaded chunks. `final_size`: commit the size this mount sees;
    /// otherwise only as far as committed data reaches, so a crash never leaves
    /// a size covering data that was not written.
    async fn commit(&mut self, io: &Io, final_size: bool) -> FsResult<()> {
        if self.carry_create(io, final_size).await {
            return Ok(());
        }
        self.landed().await?;
        let mut attempt = 0;
        loop {
            match self.try_commit(io, final_size, None).await {
                // Another mount committed over a chunk this one started from.
                Err(e) if e.errno() == libc::ESTALE && attempt < 5 => {
                    attempt += 1;
                    self.merge_into_current(io).await?;
                }
                // The ids were released (this mount's session expired while
                // it was cut off): the data is still here, so it goes up again.
                Err(e) if e.errno() == libc::EKEYEXPIRED && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(ino = self.ino, error = %e, "uploading again under fresh chunk ids");
                    self.upload_again(io).await?;
                }
                Err(e) if e.errno() == libc::EKEYEXPIRED => {
                    return Err(FsError::new(libc::EIO, e.to_string()))
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// The file's first commit, carrying its early create if that is still
    /// held: true if done. If that call fails, the create goes alone (and
    /// decides the file's fate) and the commit is made after it as usual.
    async fn carry_create(&mut self, io: &Io, final_size: bool) -> bool {
        let Some(held) = self.held_create.clone() else {
            return false;
        };
        let Some(create) = held.carry() else {
            return false;
        };
        let sent = Instant::now();
        match self
            .try_commit(io, final_size, Some(create.request.clone()))
            .await
        {
            Ok(answer) => {
                create.answered(sent, Ok(answer));
                held.carried();
                self.landing = None;
                self.held_create = None;
                true
            }
            Err(e) => {
                tracing::debug!(ino = self.ino, error = %e,
                    "a commit carrying its file's create failed; the create goes alone");
                held.carry_failed(create);
                false
            }
        }
    }

    /// Uploads every uploaded-but-uncommitted chunk again, under fresh ids.
    async fn upload_again(&mut self, io: &Io) -> FsResult<()> {
        let indices: Vec<u64> = self.uploaded.keys().copied().collect();
        for index in indices {
            let Some((_, data)) = self.uploaded.get(&index) else {
                continue;
            };
            let data = data.clone();
            let uploaded = io.chunks.upload(data.clone(), false).await?;
            self.uploaded.insert(index, (uploaded, data));
        }
        Ok(())
    }

    /// After a conflict: for each uploaded chunk whose base is no longer the
    /// file's chunk, the bytes this mount wrote go on top of the current
    /// chunk, uploaded as a new chunk that is based on it.
    async fn merge_into_current(&mut self, io: &Io) -> FsResult<()> {
        let mut fresh = OpenFile::load(io, self.ino).await?;
        let current = std::mem::take(&mut fresh.committed);
        let indices: Vec<u64> = self.uploaded.keys().copied().collect();
        for index in indices {
            let Some(edit) = self.edits.get(&index).cloned() else {
                continue;
            };
            let now = current.get(&index);
            if now.map(|c| c.chunk_id) == edit.base {
                continue;
            }
            let mut merged = match now {
                Some(c) => {
                    let data = io.chunk_bytes(c).await?;
                    data[..(c.valid_len as usize).min(data.len())].to_vec()
                }
                None => Vec::new(),
            };
            let Some((_, ours)) = self.uploaded.get(&index) else {
                continue;
            };
            for &(from, to) in &edit.written {
                let to = to.min(ours.len());
                if from >= to {
                    continue;
                }
                if merged.len() < to {
                    zero_runs::zero_extend(&mut merged, to);
                }
                merged[from..to].copy_from_slice(&ours[from..to]);
            }
            let data = Bytes::from(merged);
            let uploaded = io.chunks.upload(data.clone(), false).await?;
            self.uploaded.insert(index, (uploaded, data));
            if let Some(e) = self.edits.get_mut(&index) {
                e.base = now.map(|c| c.chunk_id);
            }
        }
        self.committed = current;
        Ok(())
    }

    /// One commit; `create`: the file's early create, carried. Returns
    /// meta's answer to that (the directory's grant, inode numbers).
    async fn try_commit(
        &mut self,
        io: &Io,
        final_size: bool,
        create: Option<pb::CreateRequest>,
    ) -> FsResult<(u64, Option<pb::InoGrant>)> {
        // Meta never lets a commit shrink the file; a merged chunk may reach
        // past this mount's size (another mount appended).
        let written: Vec<Written<'_>> = self
            .uploaded
            .iter()
            .map(|(index, (chunk, _))| Written {
                index: *index,
                chunk,
                base: self.edits.get(index).map(|e| e.base),
            })
            .collect();
        let cs = self.chunk_size;
        let size = commit_size(
            cs,
            self.committed_size,
            &written,
            final_size.then_some(self.size),
        );
        let ticket = io.coherence.ticket().own();
        let request = pb::CommitWriteRequest {
            ino: self.ino,
            size,
            chunks: committed_chunks(cs, size, &written),
            mtime: Some(self.mtime),
            return_chunks: true,
            attrs: self.held_attrs.as_ref().map(|h| h.changes),
            create,
        };
        let map = io.files.commit_write(request).await;
        match map.as_ref().ok().filter(|m| m.attr.is_some()) {
            Some(map) => io.coherence.learned_map(ticket, map),
            None => io.coherence.forget_attr(self.ino),
        }
        io.coherence.mutated();
        let map = map?;
        self.held_attrs = None;
        self.committed = map.chunks.into_iter().map(|c| (c.index, c)).collect();
        for (index, (c, data)) in std::mem::take(&mut self.uploaded) {
            io.cache.insert(c.chunk_id, data);
            // Still being written here: later commits start from this chunk.
            if self.dirty.contains_key(&index) || self.inflight.contains_key(&index) {
                if let Some(edit) = self.edits.get_mut(&index) {
                    edit.base = Some(c.chunk_id);
                }
            } else {
                self.edits.remove(&index);
            }
        }
        let mut size = size;
        if let Some(attr) = &map.attr {
            self.signature = ContentSignature::of(attr);
            self.mtime = attr.mtime.unwrap_or(self.mtime);
            if attr.size > size {
                // Another mount's bytes reach further: the kernel's size is short.
                io.coherence.attrs_stale(self.ino);
            }
            size = size.max(attr.size);
        }
        if final_size {
            self.size = size;
        }
        self.committed_size = size;
        Ok((map.grant, map.inos))
    }

    /// Uploads and commits everything pending. With `durable`, also has every
    /// replica of every chunk of the file fsynced (fsync semantics).
    pub async fn flush(&mut self, io: &Io, durable: bool) -> FsResult<()> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        if !self.changed {
            // Nothing to carry it: the create goes now.
            if let Some(held) = &self.held_create {
                held.go();
            }
        }
        if durable && !self.changed {
            self.landed().await?;
        }
        if self.changed {
            // The upload goes while a create answered early may still be on
            // its way to meta; the commit waits for it (`commit`).
            self.upload_dirty(io, durable, None).await?;
            self.commit(io, true).await?;
            self.changed = false;
            self.report_dirty(io);
        }
        if durable {
            crate::durability::sync_replicas(io, self.committed.values()).await?;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` below the end of file (fallocate's
    /// PUNCH_HOLE and ZERO_RANGE), then commits, so every mount sees the
    /// result. Chunks the range covers wholly leave the chunk map (a hole
    /// that stores nothing); in the first and last chunk, if only partly
    /// covered, the bytes that hold data are overwritten with zeros.
    pub async fn zero_range(&mut self, io: &Io, offset: u64, len: u64) -> FsResult<()> {
        self.landed().await?;
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        // With everything committed, the chunk map is the whole content.
        self.flush(io, false).await?;
        let (cs, size) = (self.chunk_size, self.size);
        let (first, last) = (offset / cs, (end - 1) / cs);
        let whole = |i: u64| offset <= i * cs && end >= ((i + 1) * cs).min(size);
        let punch_from = if whole(first) { first } else { first + 1 };
        let punch_to = if whole(last) { last + 1 } else { last };
        if punch_from < punch_to {
            let reply = io
                .files
                .punch_hole(pb::PunchHoleRequest {
                    ino: self.ino,
                    first_index: punch_from,
                    end_index: punch_to,
                })
                .await;
            io.coherence.forget_attr(self.ino);
            io.coherence.mutated();
            let reply = reply?;
            self.committed
                .retain(|i, _| !(punch_from..punch_to).contains(i));
            if let Some(attr) = &reply.attr {
                self.signature = ContentSignature::of(attr);
                self.mtime = attr.mtime.unwrap_or(self.mtime);
            }
        }
        let mut edges = vec![first];
        if last != first {
            edges.push(last);
        }
        for index in edges.into_iter().filter(|i| !whole(*i)) {
            // Only the bytes the chunk holds: past its valid length it reads as zeros.
            let Some(valid) = self.committed.get(&index).map(|c| c.valid_len) else {
                continue;
            };
            let from = offset.max(index * cs);
            let to = end.min(index * cs + valid);
            if from < to {
                self.write(io, from, &vec![0; (to - from) as usize]).await?;
            }
        }
        self.flush(io, false).await
    }

    /// Makes the file at least `size` bytes long (fallocate without
    /// KEEP_SIZE); the new bytes read as zeros. Committed at once.
    pub async fn extend_to(&mut self, io: &Io, size: u64) -> FsResult<()> {
        self.landed().await?;
        if size > dfs_proto::MAX_FILE_SIZE {
            return Err(FsError::new(libc::EFBIG, "past the largest file size"));
        }
        if size > self.size {
            self.size = size;
            self.changed = true;
            self.mtime = now();
        }
        self.flush(io, false).await
    }

    /// lseek(2)'s SEEK_DATA (`hole` false) and SEEK_HOLE (`hole` true): the
    /// first offset at or after `offset` that holds data, or that is in a
    /// hole (the end of file counts as one). Data is known per chunk: a chunk
    /// in the map or in this mount's buffers holds data up to its valid
    /// length; the rest below the size reads as zeros and is a hole.
    pub fn seek_data_or_hole(&self, offset: u64, hole: bool) -> FsResult<u64> {
        let past_end = || FsError::new(libc::ENXIO, "offset at or past the end of file");
        if offset >= self.size {
            return Err(past_end());
        }
        let extents = self.data_extents();
        if hole {
            let mut pos = offset;
            for (start, end) in extents {
                if start > pos {
                    break;
                }
                pos = pos.max(end);
            }
            Ok(pos.min(self.size))
        } else {
            extents
                .into_iter()
                .find(|(_, end)| *end > offset)
                .map(|(start, _)| start.max(offset))
                .ok_or_else(past_end)
        }
    }

    /// The byte ranges that hold data, in order, merged, below the size.
    fn data_extents(&self) -> Vec<(u64, u64)> {
        let mut lens: BTreeMap<u64, u64> = self
            .committed
            .iter()
            .map(|(i, c)| (*i, c.valid_len))
            .collect();
        // A buffer starts from the committed bytes, so its length supersedes.
        let buffered = self.uploaded.iter().map(|(i, (_, d))| (*i, d.len()));
        let buffered = buffered.chain(self.inflight.iter().map(|(i, (d, _))| (*i, d.len())));
        let buffered = buffered.chain(self.dirty.iter().map(|(i, d)| (*i, d.len())));
        for (i, len) in buffered {
            lens.insert(i, len as u64);
        }
        let mut extents: Vec<(u64, u64)> = Vec::new();
        for (i, len) in lens {
            let start = i * self.chunk_size;
            let end = (start + len).min(self.size);
            if end <= start {
                continue;
            }
            match extents.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => extents.push((start, end)),
            }
        }
        extents
    }

    /// The first half of a read, done under the file's lock: copies what this
    /// file holds in its buffers and lists the committed chunk pieces still to
    /// fetch, so the (slow) fetches run without the lock (`Io::complete_read`).
    /// Never reads past the end of the file.
    pub fn plan_read(&mut self, io: &Io, offset: u64, size: u32) -> PendingRead {
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        // A scan: a read from the start, one right where the previous ended, or
        // a run of reads near each other (the kernel's readahead sends several
        // reads at once, and they reach here in any order). One read that lands
        // near by chance among random ones is not a run.
        let near =
            self.last_read_end != u64::MAX && offset.abs_diff(self.last_read_end) <= SCAN_WINDOW;
        self.near_reads = if near { self.near_reads + 1 } else { 0 };
        let sequential = offset == 0 || offset == self.last_read_end || self.near_reads >= 2;
        let mut plan = PendingRead {
            parts: Vec::new(),
            sequential,
        };
        if offset >= end {
            return plan;
        }
        let cs = self.chunk_size;
        let mut pos = offset;
        while pos < end {
            let index = pos / cs;
            let within = (pos - index * cs) as usize;
            let take = ((cs - within as u64).min(end - pos)) as usize;
            // Buffered bytes win over committed ones. A buffer still being
            // written is copied (only what this read wants); one uploading or
            // uploaded is shared.
            let buffered = if let Some(buf) = self.dirty.get(&index) {
                let wanted = &buf[within.min(buf.len())..(within + take).min(buf.len())];
                Some((Bytes::copy_from_slice(wanted), 0))
            } else if let Some((data, _)) = self.inflight.get(&index) {
                Some((data.clone(), within))
            } else if let Some((_, data)) = self.uploaded.get(&index) {
                Some((data.clone(), within))
            } else {
                None
            };
            match (buffered, self.committed.get(&index)) {
                // Bytes past what the source holds (a hole, or past a chunk's
                // valid length) read as zeros.
                (Some((bytes, start)), _) => {
                    plan.parts.push(Part::Buffered(bytes, start..start + take))
                }
                (None, Some(chunk)) => plan.parts.push(Part::Fetch(Piece {
                    chunk: chunk.clone(),
                    within,
                    take,
                })),
                (None, None) => plan.parts.push(Part::Zeros(take)),
            }
            pos += take as u64;
        }
        if sequential {
            self.prefetch(io, end / cs + 1);
        }
        self.last_read_end = end;
        plan
    }

    /// Starts fetching the next chunks of a sequential reader into the cache.
    fn prefetch(&self, io: &Io, from_index: u64) {
        for index in from_index..from_index + PREFETCH_CHUNKS {
            let Some(chunk) = self.committed.get(&index).cloned() else {
                return;
            };
            if io.cache.contains(chunk.chunk_id) || io.is_fetching(chunk.chunk_id) {
                continue;
            }
            io.metrics.prefetches.inc();
            let fetch = io.fetch(&chunk, true);
            tokio::spawn(async move {
                if let Err(e) = fetch.await {
                    tracing::debug!(error = %e, "prefetch failed");
                }
            });
        }
    }
}

/// The current time as meta stores it.
/// Moves `attr`'s ctime up to `t` if that is later.
fn raise_ctime(attr: &mut pb::Attr, t: pb::Timespec) {
    let ctime = attr.ctime.unwrap_or_default();
    if (t.sec, t.nsec) > (ctime.sec, ctime.nsec) {
        attr.ctime = Some(t);
    }
}

/// The local clock as a timestamp.
pub fn now() -> pb::Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.metrics.dirty_bytes.sub(self.reported_dirty);
        self.memory.adjust_buffered(-self.reported_dirty);
        if let Some(notice) = &self.drop_notice {
            // The receiver is gone only when the mount is.
            let _ = notice.send(self.ino);
        }
    }
}

#[cfg(test)]
#[path = "open_file_tests.rs"]
mod tests;
