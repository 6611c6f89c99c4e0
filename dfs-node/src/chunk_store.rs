//! Chunks on local disk, one file each: `chunks/<id % 256 as 2 hex>/<id as 16 hex>`.
//!
//! File layout: a 32-byte header (magic, block size, length, whole-chunk crc32c,
//! crc32c of the block table), a table of one crc32c per 64 KiB block, then the
//! data. Reads verify every block they touch before returning a byte of it; a
//! chunk that fails is moved to `corrupt/` and never served again.
//!
//! Writes go to a file of their own (a recycled one from `spare/`, see
//! `recycle.rs`, or a new one in `tmp/`) and are renamed into place only once
//! the length and crc32c match what the writer announced; with `durable`, the
//! file and its directory are fsynced before the write counts. Ids are numbers, so a path is
//! always built from digits, never from client text.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dfs_proto::zero_runs;

use crate::recycle::{Readers, Spares, MAX_SPARES};

const MAGIC: &[u8; 8] = b"DFSCHNK1";
const HEADER_LEN: u64 = 32;
pub const BLOCK: u64 = 64 * 1024;
/// Largest chunk a node accepts (the metadata server caps chunk size at 256 MiB).
pub const MAX_CHUNK: u64 = 256 << 20;
/// A chunk at least this long that is stored without fsync starts its trip to
/// the disk at once (`start_writeback`).
const EARLY_WRITEBACK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0} not found")]
    NotFound(u64),
    #[error("chunk {id} is corrupt: {reason}")]
    Corrupt { id: u64, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("disk full")]
    NoSpace,
    #[error("disk error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ChunkError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            ChunkError::NoSpace
        } else {
            ChunkError::Io(e)
        }
    }
}

impl From<ChunkError> for tonic::Status {
    fn from(e: ChunkError) -> tonic::Status {
        let errno = match &e {
            ChunkError::NotFound(_) => libc::ENOENT,
            // Corrupt: the checksum failed twice (quarantined). Io: could not
            // read now (EMFILE, EIO...), the replica is only unavailable.
            ChunkError::Corrupt { .. } => libc::EBADMSG,
            ChunkError::Io(_) => libc::EIO,
            ChunkError::Invalid(_) => libc::EINVAL,
            ChunkError::NoSpace => libc::ENOSPC,
        };
        dfs_proto::status_from_errno(errno, e.to_string())
    }
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;

pub struct ChunkStore {
    root: PathBuf,
    chunk_count: AtomicU64,
    used_bytes: AtomicU64,
    /// Chunks installed and gone since the last heartbeat (`take_changes`).
    changes: std::sync::Mutex<ChunkChanges>,
    spares: Spares,
    readers: Readers,
}

/// Chunk files that appeared and disappeared, for the next heartbeat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkChanges {
    pub added: HashSet<u64>,
    pub removed: HashSet<u64>,
}

impl ChunkChanges {
    fn add(&mut self, id: u64) {
        self.removed.remove(&id);
        self.added.insert(id);
    }

    fn remove(&mut self, id: u64) {
        self.added.remove(&id);
        self.removed.insert(id);
    }
}

struct Header {
    length: u64,
    crc32c: u32,
}

impl ChunkStore {
    /// Opens (creating) the store under `root`, drops unfinished temp files and
    /// counts what is there.
    pub fn open(root: &Path) -> Result<ChunkStore> {
        for sub in ["chunks", "tmp", "corrupt"] {
            fs::create_dir_all(root.join(sub))?;
        }
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        let store = ChunkStore {
            root: root.to_path_buf(),
            chunk_count: AtomicU64::new(0),
            changes: Default::default(),
            used_bytes: AtomicU64::new(0),
            spares: Spares::open(&root.join("spare"), MAX_SPARES)?,
            readers: Readers::default(),
        };
        let mut count = 0;
        let mut bytes = 0;
        store.for_each_chunk(|_, len| {
            count += 1;
            bytes += len;
        })?;
        store.chunk_count.store(count, Ordering::Relaxed);
        store.used_bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    /// The changes since the last call. A heartbeat that fails hands them
    /// back (`restore_changes`), so none is lost.
    pub fn take_changes(&self) -> ChunkChanges {
        std::mem::take(&mut *self.lock_changes())
    }

    /// Puts back changes a failed heartbeat could not deliver (newer ones win).
    pub fn restore_changes(&self, older: ChunkChanges) {
        let mut changes = self.lock_changes();
        let newer = std::mem::replace(&mut *changes, older);
        for id in newer.added {
            changes.add(id);
        }
        for id in newer.removed {
            changes.remove(id);
        }
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ChunkChanges> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunk_count.load(Ordering::Relaxed)
    }

    /// Makes up to `step` empty chunk files ahead of the writes that will
    /// need them, until `ahead` wait (`recycle.rs`); how many it made (0:
    /// enough are there).
    pub fn make_spares(&self, ahead: usize, step: usize) -> Result<usize> {
        Ok(self.spares.make_ahead(ahead, step)?)
    }

    /// Emptied chunk files waiting in `spare/` for the next writes.
    pub fn spare_files(&self) -> usize {
        self.spares.len()
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.root
            .join("chunks")
            .join(format!("{:02x}", id % 256))
            .join(format!("{id:016x}"))
    }

    /// Every chunk id on disk.
    pub fn list(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        self.for_each_chunk(|id, _| ids.push(id))?;
        Ok(ids)
    }

    fn for_each_chunk(&self, mut f: impl FnMut(u64, u64)) -> Result<()> {
        for dir in fs::read_dir(self.root.join("chunks"))? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(dir.path())? {
                let entry = entry?;
                let name = entry.file_name();
                if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                    f(id, entry.metadata()?.len());
                }
            }
        }
        Ok(())
    }

    /// Starts receiving chunk `id` of `length` bytes whose crc32c must be `crc32c`.
    pub fn begin_write(&self, id: u64, length: u64, crc32c: u32) -> Result<ChunkWriter> {
        if id == 0 {
            return Err(ChunkError::Invalid("chunk id 0".into()));
        }
        if length > MAX_CHUNK {
            return Err(ChunkError::Invalid(format!(
                "chunk of {length} bytes exceeds {MAX_CHUNK}"
            )));
        }
        let (mut file, tmp) = match self.spares.take() {
            Some(spare) => (OpenOptions::new().write(true).open(&spare)?, spare),
            None => {
                let tmp = self.root.join("tmp").join(format!(
                    "{id:016x}.{:x}",
                    std::process::id() as u64 ^ nanos()
                ));
                let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                (file, tmp)
            }
        };
        let blocks = length.div_ceil(BLOCK);
        file.seek(SeekFrom::Start(HEADER_LEN + 4 * blocks))?;
        Ok(ChunkWriter {
            id,
            length,
            crc32c,
            file,
            tmp,
            received: 0,
            whole: 0,
            block_crcs: Vec::with_capacity(blocks as usize),
            block_crc: 0,
            block_fill: 0,
            installed: false,
        })
    }

    /// Moves a finished write into place. `size` is the temp file's length
    /// (`finish` set it). The common case, a new id in an existing
    /// directory, costs one stat and one rename.
    fn install(&self, mut w: ChunkWriter, size: u64, durable: bool) -> Result<()> {
        let final_path = self.path(w.id);
        let dir = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let mut previous = fs::metadata(&final_path).ok().map(|m| m.len());
        if previous.is_some() {
            // Ids are written once: a retried write may bring the same bytes
            // again, never others (a reused id would change a file's data).
            match self.describe(w.id) {
                Ok(held) if held == (w.length, w.crc32c) => {}
                Ok(_) => {
                    return Err(ChunkError::Invalid(format!(
                        "chunk {} is already stored with other content",
                        w.id
                    )))
                }
                // Unreadable or corrupt (now moved aside): the new copy replaces it.
                Err(_) => {}
            }
            // After the check: a corrupt copy was just moved aside by `describe`.
            previous = fs::metadata(&final_path).ok().map(|m| m.len());
        }
        match fs::rename(&w.tmp, &final_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
                fs::create_dir_all(&dir)?;
                fs::rename(&w.tmp, &final_path)?;
            }
            other => other?,
        }
        w.installed = true;
        if durable {
            File::open(&dir)?.sync_all()?;
        }
        match previous {
            // Rewriting a chunk (a retried write) replaces identical content.
            Some(old) => {
                self.used_bytes.fetch_sub(old, Ordering::Relaxed);
            }
            None => {
                self.chunk_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.used_bytes.fetch_add(size, Ordering::Relaxed);
        self.lock_changes().add(w.id);
        Ok(())
    }

    /// Reads `length` bytes at `offset` (clamped to the chunk), verifying every
    /// block touched, and hands them to `sink` in pieces (borrowed from one
    /// buffer reused for every block, which is neither zeroed nor reallocated
    /// per block). `sink` returns false to stop.
    pub fn read(
        &self,
        id: u64,
        offset: u64,
        length: u64,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let _reading = self.readers.start(id);
        let mut file = match File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChunkError::NotFound(id)),
            Err(e) => return Err(e.into()),
        };
        let (header, table) = self.read_header(id, &mut file)?;
        let end = offset.saturating_add(length).min(header.length);
        if offset >= end {
            return Ok(());
        }
        let data_start = HEADER_LEN + 4 * table.len() as u64;
        let mut block = offset / BLOCK;
        let mut buf = Vec::with_capacity(BLOCK as usize);
        while block * BLOCK < end {
            let block_start = block * BLOCK;
            let block_len = BLOCK.min(header.length - block_start);
            let mut verified = false;
            // A mismatch is read once more before the chunk counts as corrupt:
            // only a mismatch the disk repeats moves the chunk aside.
            for _ in 0..2 {
                file.seek(SeekFrom::Start(data_start + block_start))?;
                buf.clear();
                (&mut file).take(block_len).read_to_end(&mut buf)?;
                if (buf.len() as u64) < block_len {
                    return Err(self.corrupt(id, format!("short block {block}")));
                }
                if crc32c::crc32c(&buf) == table[block as usize] {
                    verified = true;
                    break;
                }
            }
            if !verified {
                return Err(self.corrupt(id, format!("block {block} checksum mismatch")));
            }
            let from = offset.saturating_sub(block_start) as usize;
            let to = (end - block_start).min(block_len) as usize;
            if !sink(&buf[from..to]) {
                return Ok(());
            }
            block += 1;
        }
        Ok(())
    }

    fn read_header(&self, id: u64, file: &mut File) -> Result<(Header, Vec<u32>)> {
        let mut raw = [0u8; HEADER_LEN as usize];
        if !read_or_short(file, &mut raw)? || &raw[..8] != MAGIC {
            return Err(self.corrupt(id, "bad header".into()));
        }
        let block = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as u64;
        let length = u64::from_le_bytes(raw[12..20].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]);
        let table_crc = u32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]);
        if block != BLOCK || length > MAX_CHUNK {
            return Err(self.corrupt(id, "bad header fields".into()));
        }
        let mut table_raw = vec![0u8; 4 * length.div_ceil(BLOCK) as usize];
        if !read_or_short(file, &mut table_raw)? || crc32c::crc32c(&table_raw) != table_crc {
            return Err(self.corrupt(id, "bad block table".into()));
        }
        let table = table_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((
            Header {
                length,
                crc32c: crc,
            },
            table,
        ))
    }

    /// Length and whole-chunk crc32c of a stored chunk (header only, not verified against data).
    pub fn describe(&self, id: u64) -> Result<(u64, u32)> {
        let _reading = self.readers.start(id);
        let mut file = File::open(self.path(id)).map_err(|_| ChunkError::NotFound(id))?;
        let (h, _) = self.read_header(id, &mut file)?;
        Ok((h.length, h.crc32c))
    }

    /// Moves a bad chunk aside so it is never served; returns the error to report.
    /// Reads chunk `id` whole against its block checksums: Ok(true) when
    /// intact, Ok(false) when corrupt (moved aside now, or before).
    pub fn check(&self, id: u64) -> Result<bool> {
        if self
            .root
            .join("corrupt")
            .join(format!("{id:016x}"))
            .exists()
        {
            return Ok(false);
        }
        match self.read(id, 0, u64::MAX, |_| true) {
            Ok(()) => Ok(true),
            Err(ChunkError::Corrupt { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn corrupt(&self, id: u64, reason: String) -> ChunkError {
        tracing::error!(chunk = id, %reason, "corrupt chunk moved aside");
        let path = self.path(id);
        if let Ok(meta) = fs::metadata(&path) {
            if fs::rename(&path, self.root.join("corrupt").join(format!("{id:016x}"))).is_ok() {
                self.chunk_count.fetch_sub(1, Ordering::Relaxed);
                self.used_bytes.fetch_sub(meta.len(), Ordering::Relaxed);
                self.lock_changes().remove(id);
            }
        }
        ChunkError::Corrupt { id, reason }
    }

    /// Forces chunks written without `durable` to stable storage: each file and
    /// then each directory holding one. A missing chunk is an error: the caller
    /// believed it was here.
    pub fn sync(&self, ids: &[u64]) -> Result<()> {
        let mut dirs = HashSet::new();
        for &id in ids {
            let path = self.path(id);
            match File::open(&path) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ChunkError::NotFound(id))
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes chunks, and their quarantined copies in `corrupt/` (meta asks
    /// for that once the chunk has every good copy again); missing ones are
    /// fine (deletion is idempotent).
    pub fn delete(&self, ids: &[u64]) -> Result<usize> {
        let mut deleted = 0;
        for &id in ids.iter().collect::<HashSet<_>>() {
            let _ = fs::remove_file(self.root.join("corrupt").join(format!("{id:016x}")));
            let path = self.path(id);
            if let Ok(meta) = fs::metadata(&path) {
                match self.remove_chunk_file(id, &path) {
                    Ok(()) => {
                        deleted += 1;
                        self.chunk_count.fetch_sub(1, Ordering::Relaxed);
                        self.used_bytes.fetch_sub(meta.len(), Ordering::Relaxed);
                        self.lock_changes().remove(id);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }

    /// Removes a chunk's file: into the spare pool when no one is reading
    /// it and the pool has room, deleted otherwise.
    fn remove_chunk_file(&self, id: u64, path: &Path) -> io::Result<()> {
        let adopted = self
            .readers
            .unless_read(id, || self.spares.adopt(path))
            .flatten();
        match adopted {
            Some(Ok(spare)) => {
                self.spares.keep(spare);
                Ok(())
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Err(e),
            _ => fs::remove_file(path),
        }
    }
}

/// A chunk being received: data is written straight to a temp file while the
/// checksums are computed.
pub struct ChunkWriter {
    id: u64,
    length: u64,
    crc32c: u32,
    file: File,
    tmp: PathBuf,
    received: u64,
    whole: u32,
    block_crcs: Vec<u32>,
    block_crc: u32,
    block_fill: u64,
    /// Renamed into place: the temp name is gone.
    installed: bool,
}

impl ChunkWriter {
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        if self.received + data.len() as u64 > self.length {
            return Err(ChunkError::Invalid(format!(
                "chunk {} got more than {} bytes",
                self.id, self.length
            )));
        }
        self.file.write_all(data)?;
        self.received += data.len() as u64;
        self.checksum(data);
        Ok(())
    }

    /// Takes a run of `n` zero bytes: skipped over in the file (a hole the
    /// file system stores nothing for), checksummed like written bytes.
    pub fn append_zeros(&mut self, n: u64) -> Result<()> {
        if self.received.saturating_add(n) > self.length {
            return Err(ChunkError::Invalid(format!(
                "chunk {} got more than {} bytes",
                self.id, self.length
            )));
        }
        let skip = i64::try_from(n).map_err(|_| ChunkError::Invalid("zero run".into()))?;
        self.file.seek(SeekFrom::Current(skip))?;
        self.received += n;
        let mut left = n;
        while left > 0 {
            let take = left.min(zero_runs::BLOCK as u64);
            self.checksum(zero_runs::zeros(take as usize));
            left -= take;
        }
        Ok(())
    }

    /// Adds received bytes to the whole-chunk and per-block checksums.
    fn checksum(&mut self, mut data: &[u8]) {
        self.whole = crc32c::crc32c_append(self.whole, data);
        while !data.is_empty() {
            let take = ((BLOCK - self.block_fill) as usize).min(data.len());
            self.block_crc = crc32c::crc32c_append(self.block_crc, &data[..take]);
            self.block_fill += take as u64;
            data = &data[take..];
            if self.block_fill == BLOCK {
                self.block_crcs.push(self.block_crc);
                self.block_crc = 0;
                self.block_fill = 0;
            }
        }
    }

    /// Checks length and checksum, writes the header, and installs the chunk.
    pub fn finish(mut self, store: &ChunkStore, durable: bool) -> Result<()> {
        if self.received != self.length {
            return Err(ChunkError::Invalid(format!(
                "chunk {} ended after {} of {} bytes",
                self.id, self.received, self.length
            )));
        }
        if self.whole != self.crc32c {
            return Err(ChunkError::Invalid(format!(
                "chunk {} arrived with a wrong checksum",
                self.id
            )));
        }
        if self.block_fill > 0 {
            self.block_crcs.push(self.block_crc);
        }
        let table: Vec<u8> = self
            .block_crcs
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        header.extend_from_slice(&self.length.to_le_bytes());
        header.extend_from_slice(&self.crc32c.to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        header.resize(HEADER_LEN as usize, 0);
        // A chunk that ends in zeros ends in a hole: the file still has its full size.
        let blocks = self.block_crcs.len() as u64;
        let size = HEADER_LEN + 4 * blocks + self.length;
        self.file.set_len(size)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&header)?;
        self.file.write_all(&table)?;
        if durable {
            self.file.sync_all()?;
        } else if self.length >= EARLY_WRITEBACK {
            start_writeback(&self.file);
        }
        store.install(self, size, durable)
    }
}

/// Asks the kernel to start writing a large chunk's pages to the disk now,
/// without waiting. Left to itself, a machine with much memory holds
/// gigabytes dirty until the writer's fsync, which then waits for all of it
/// while the disk sat idle during the stream; small chunks are left alone
/// (many die young, and delayed allocation packs them). A failure here only
/// leaves the pages to the usual writeback, and the fsync still checks.
#[allow(unsafe_code)]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not start writeback");
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        // An unfinished write's temp file must not linger (an installed
        // one was renamed away).
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Fills `buf` from the file. Ok(false): the file ended first (a truncated
/// chunk, which is corrupt); any other failure is an I/O error (unavailable,
/// not corrupt).
fn read_or_short(file: &mut File, buf: &mut [u8]) -> Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(store: &ChunkStore, id: u64, data: &[u8]) -> Result<()> {
        let mut w = store.begin_write(id, data.len() as u64, crc32c::crc32c(data))?;
        for piece in data.chunks(10_000) {
            w.append(piece)?;
        }
        w.finish(store, true)
    }

    fn read_all(store: &ChunkStore, id: u64, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        store.read(id, off, len, |p| {
            out.extend_from_slice(p);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn a_deleted_chunk_file_is_reused_by_the_next_write() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        write(&store, 1, &[1u8; 200_000]).unwrap();
        let inode = fs::metadata(store.path(1)).unwrap().ino();
        assert_eq!(store.delete(&[1]).unwrap(), 1);
        assert_eq!(store.spare_files(), 1);
        assert!(matches!(
            read_all(&store, 1, 0, 10),
            Err(ChunkError::NotFound(1))
        ));
        let data: Vec<u8> = (0..5_000u32).map(|i| (i % 253) as u8).collect();
        write(&store, 2, &data).unwrap();
        assert_eq!(fs::metadata(store.path(2)).unwrap().ino(), inode);
        assert_eq!(store.spare_files(), 0);
        assert_eq!(read_all(&store, 2, 0, u64::MAX).unwrap(), data);
        assert_eq!(
            store.used_bytes(),
            fs::metadata(store.path(2)).unwrap().len()
        );
        assert_eq!(store.chunk_count(), 1);
    }

    #[test]
    fn a_chunk_deleted_while_read_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 3 % 251) as u8).collect();
        write(&store, 9, &data).unwrap();
        let mut out = Vec::new();
        store
            .read(9, 0, u64::MAX, |piece| {
                if out.is_empty() {
                    assert_eq!(store.delete(&[9]).unwrap(), 1);
                }
                out.extend_from_slice(piece);
                true
            })
            .unwrap();
        assert_eq!(out, data);
        // Deleted outright, not emptied for reuse under the reader.
        assert_eq!(store.spare_files(), 0);
        assert!(!store.path(9).exists());
    }

    #[test]
    fn round_trip_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&store, 5, &data).unwrap();
        assert_eq!(read_all(&store, 5, 0, u64::MAX).unwrap(), data);
        assert_eq!(
            read_all(&store, 5, 65_000, 2_000).unwrap(),
            data[65_000..67_000]
        );
        assert_eq!(read_all(&store, 5, 299_999, 100).unwrap(), data[299_999..]);
        assert!(read_all(&store, 5, 400_000, 10).unwrap().is_empty());
        write(&store, 6, &[]).unwrap();
        assert!(read_all(&store, 6, 0, 10).unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 2);
        let reopened = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(reopened.chunk_count(), 2);
        assert_eq!(reopened.used_bytes(), store.used_bytes());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn zero_runs_are_holes_that_read_back_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        // 4 MiB: zeros, 10 bytes of data, zeros to the end (the LTP sendfile
        // file's shape); the crc covers the zeros like written bytes.
        let len = 4 << 20;
        let mut data = vec![0u8; len];
        data[(1 << 20) - 10..1 << 20].fill(9);
        let mut w = store
            .begin_write(7, len as u64, crc32c::crc32c(&data))
            .unwrap();
        w.append_zeros((1 << 20) - 10).unwrap();
        w.append(&data[(1 << 20) - 10..1 << 20]).unwrap();
        w.append_zeros(3 << 20).unwrap();
        w.finish(&store, true).unwrap();
        assert_eq!(read_all(&store, 7, 0, u64::MAX).unwrap(), data);
        assert_eq!(read_all(&store, 7, (4 << 20) - 5, 100).unwrap(), vec![0; 5]);
        let file = fs::metadata(store.path(7)).unwrap();
        assert!(file.len() >= len as u64);
        assert!(
            file.blocks() * 512 < 1 << 20,
            "stored sparse: {} blocks",
            file.blocks()
        );
        // A run past the announced length is refused.
        let mut w = store.begin_write(8, 10, 0).unwrap();
        assert!(w.append_zeros(11).is_err());
    }

    #[test]
    fn an_id_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        write(&store, 9, b"first content").unwrap();
        // The same bytes again (a retried write) are fine.
        write(&store, 9, b"first content").unwrap();
        // Other bytes under the same id are refused; the first stay.
        assert!(matches!(
            write(&store, 9, b"other content"),
            Err(ChunkError::Invalid(_))
        ));
        assert_eq!(read_all(&store, 9, 0, u64::MAX).unwrap(), b"first content");
        assert_eq!(store.chunk_count(), 1);
    }

    #[test]
    fn installs_and_deletions_are_kept_for_the_next_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        write(&store, 1, b"a").unwrap();
        write(&store, 2, b"b").unwrap();
        store.delete(&[1]).unwrap();
        let changes = store.take_changes();
        assert_eq!(changes.added, HashSet::from([2]));
        assert_eq!(changes.removed, HashSet::from([1]));
        assert_eq!(store.take_changes(), ChunkChanges::default());
        // A heartbeat that failed hands them back; newer changes win.
        store.delete(&[2]).unwrap();
        store.restore_changes(changes);
        let merged = store.take_changes();
        assert!(merged.added.is_empty());
        assert_eq!(merged.removed, HashSet::from([1, 2]));
    }

    #[test]
    fn wrong_length_or_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let mut w = store.begin_write(1, 10, 0).unwrap();
        w.append(b"0123456789").unwrap();
        assert!(matches!(
            w.finish(&store, false),
            Err(ChunkError::Invalid(_))
        ));
        let mut w = store
            .begin_write(1, 10, crc32c::crc32c(b"0123456789"))
            .unwrap();
        w.append(b"01234").unwrap();
        assert!(matches!(
            w.finish(&store, false),
            Err(ChunkError::Invalid(_))
        ));
        let mut w = store.begin_write(1, 3, 0).unwrap();
        assert!(w.append(b"0123").is_err());
        drop(w);
        assert!(matches!(
            read_all(&store, 1, 0, 10),
            Err(ChunkError::NotFound(1))
        ));
        assert!(store.begin_write(0, 1, 0).is_err());
        assert!(store.begin_write(2, MAX_CHUNK + 1, 0).is_err());
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no temp files left"
        );
    }

    #[test]
    fn a_flipped_bit_is_caught_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = vec![7u8; 200_000];
        write(&store, 9, &data).unwrap();
        let path = store.path(9);
        let mut raw = fs::read(&path).unwrap();
        let at = raw.len() - 1000;
        raw[at] ^= 1;
        fs::write(&path, raw).unwrap();
        // The first block is intact and still served; the damaged last block is not.
        assert_eq!(read_all(&store, 9, 0, 1000).unwrap(), vec![7u8; 1000]);
        assert!(matches!(
            read_all(&store, 9, 0, u64::MAX),
            Err(ChunkError::Corrupt { .. })
        ));
        assert!(
            matches!(read_all(&store, 9, 0, 10), Err(ChunkError::NotFound(9))),
            "moved aside"
        );
        assert_eq!(store.chunk_count(), 0);
        assert!(dir
            .path()
            .join("corrupt")
            .join(format!("{:016x}", 9))
            .exists());
    }

    #[test]
    fn delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        write(&store, 3, b"abc").unwrap();
        store.sync(&[3]).unwrap();
        assert!(matches!(store.sync(&[4]), Err(ChunkError::NotFound(4))));
        assert_eq!(store.delete(&[3, 3, 4]).unwrap(), 1);
        assert_eq!(store.delete(&[3]).unwrap(), 0);
        assert_eq!(store.chunk_count(), 0);
        assert_eq!(store.used_bytes(), 0);
    }
}
