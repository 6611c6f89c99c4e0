//! What the file system shares with every open file: the cluster clients, the
//! chunk cache and the memory bound, and the read path that runs without a
//! file's lock (single-flight whole-chunk fetches, 64 KiB block reads).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use dfs_client::ClientError;
use dfs_proto::pb;
use prost::bytes::Bytes;

use crate::backend::{ChunkStore, FileMeta};
use crate::cache::ChunkCache;
use crate::error::{FsError, FsResult};
use crate::memory::MemoryBudget;
use crate::metrics::FuseMetrics;

/// A chunk fetch in progress, shared by everyone who wants that chunk.
type Fetch = Shared<BoxFuture<'static, Result<Bytes, FetchError>>>;

/// What the file system shares with every open file: the cluster and the cache.
#[derive(Clone)]
pub struct Io {
    /// Metadata calls of the data path (`backend::Cluster`, or a fake).
    pub files: Arc<dyn FileMeta>,
    /// Chunk uploads and reads (`backend::Cluster`, or a fake).
    pub chunks: Arc<dyn ChunkStore>,
    pub cache: Arc<ChunkCache>,
    /// The mount's one memory bound, shared by the cache and write buffers.
    pub memory: Arc<MemoryBudget>,
    pub metrics: Arc<FuseMetrics>,
    /// How long the kernel may cache entries and attributes, and the
    /// invalidations that let it.
    pub coherence: Arc<crate::coherence::Coherence>,
    /// Chunk fetches in flight: at most one per chunk, whoever asks.
    pub fetches: Arc<Mutex<HashMap<u64, Fetch>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Io {
    /// A committed chunk's bytes, from the cache or a verified replica read.
    pub async fn chunk_bytes(&self, chunk: &pb::ChunkRef) -> FsResult<Bytes> {
        if let Some(data) = self.cache.get(chunk.chunk_id) {
            return Ok(data);
        }
        self.fetch(chunk, false).await
    }

    pub fn is_fetching(&self, chunk_id: u64) -> bool {
        lock(&self.fetches).contains_key(&chunk_id)
    }

    /// Fetches a whole chunk into the cache; concurrent callers (readers and the
    /// prefetcher) share one fetch instead of each moving the chunk again.
    pub(crate) fn fetch(
        &self,
        chunk: &pb::ChunkRef,
        prefetch: bool,
    ) -> impl std::future::Future<Output = FsResult<Bytes>> {
        let id = chunk.chunk_id;
        let shared = {
            let mut map = lock(&self.fetches);
            map.entry(id)
                .or_insert_with(|| {
                    let (io, chunk) = (self.clone(), chunk.clone());
                    async move {
                        let result = match io.chunks.read(chunk).await {
                            Ok(data) => {
                                if prefetch {
                                    io.cache.insert_prefetched(id, data.clone());
                                } else {
                                    io.cache.insert(id, data.clone());
                                }
                                Ok(data)
                            }
                            Err(ClientError::ChunkGone { chunk_id }) => {
                                Err(FetchError::Gone(chunk_id))
                            }
                            Err(e) => Err(FetchError::Failed(e.errno(), e.to_string())),
                        };
                        lock(&io.fetches).remove(&id);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        async move {
            shared.await.map_err(|e| match e {
                FetchError::Gone(id) => FsError::ChunkGone(id),
                FetchError::Failed(errno, message) => FsError::new(errno, message),
            })
        }
    }
}

/// How a shared fetch failed (cloned to every waiter).
#[derive(Clone, Debug)]
pub enum FetchError {
    Gone(u64),
    Failed(i32, String),
}

/// Where a read's bytes from one committed chunk go.
pub struct Piece {
    pub(crate) chunk: pb::ChunkRef,
    /// Offset in the chunk, and length.
    pub(crate) within: usize,
    pub(crate) take: usize,
    /// Offset in the read's output.
    pub(crate) at: usize,
}

/// A read with its buffered bytes copied and its committed pieces to fetch.
pub struct PendingRead {
    pub(crate) out: Vec<u8>,
    pub(crate) pieces: Vec<Piece>,
    /// Continues the previous read: whole chunks are worth fetching.
    pub(crate) sequential: bool,
}

/// Copies `src[within..]` into `dst`, as far as `src` reaches.
pub(crate) fn copy_within(dst: &mut [u8], src: &[u8], within: usize) {
    if src.len() > within {
        let avail = (src.len() - within).min(dst.len());
        dst[..avail].copy_from_slice(&src[within..within + avail]);
    }
}

/// The unit of a random read: the node's checksum block.
const BLOCK: usize = 64 * 1024;

impl Io {
    /// The second half of a read (`OpenFile::plan_read`), without the file's
    /// lock. A sequential reader (or a chunk already cached whole) gets whole
    /// chunks, shared with the prefetcher; a random one only the 64 KiB blocks
    /// it touches, each cached by itself.
    pub async fn complete_read(&self, mut plan: PendingRead) -> FsResult<Vec<u8>> {
        for piece in &plan.pieces {
            let valid = piece.chunk.valid_len as usize;
            let dst = &mut plan.out[piece.at..piece.at + piece.take];
            if plan.sequential || self.cache.contains(piece.chunk.chunk_id) {
                let data = self.chunk_bytes(&piece.chunk).await?;
                copy_within(dst, &data[..valid.min(data.len())], piece.within);
                continue;
            }
            let first = piece.within / BLOCK;
            let last = (piece.within + piece.take - 1) / BLOCK;
            let blocks = self.blocks(&piece.chunk, first, last).await?;
            for (i, block) in blocks.iter().enumerate() {
                let block_start = (first + i) * BLOCK;
                // This block's part of the piece, and of the chunk's valid bytes.
                let from = piece.within.max(block_start);
                let to = (piece.within + piece.take).min(block_start + BLOCK);
                let usable = block.len().min(valid.saturating_sub(block_start));
                copy_within(
                    &mut dst[from - piece.within..to - piece.within],
                    &block[..usable],
                    from - block_start,
                );
            }
        }
        Ok(plan.out)
    }

    /// Blocks `first..=last` of a chunk, from the cache or one ranged read per
    /// run of missing blocks.
    async fn blocks(
        &self,
        chunk: &pb::ChunkRef,
        first: usize,
        last: usize,
    ) -> FsResult<Vec<Bytes>> {
        let mut found: Vec<Option<Bytes>> = (first..=last)
            .map(|b| self.cache.get_block(chunk.chunk_id, b as u32))
            .collect();
        let mut i = 0;
        while i < found.len() {
            if found[i].is_some() {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < found.len() && found[i].is_none() {
                i += 1;
            }
            // Only the missing run itself: fetching aligned groups of 2 or 4
            // blocks around it measured slower (5,700 and 4,100 against 9,500
            // IOPS of 4 KiB random reads).
            let from_block = first + run_start;
            let data = self
                .chunks
                .read_range(
                    chunk.clone(),
                    (from_block * BLOCK) as u64,
                    ((i - run_start) * BLOCK) as u64,
                )
                .await
                .map_err(FsError::from)?;
            for (k, slot) in found[run_start..i].iter_mut().enumerate() {
                let from = (k * BLOCK).min(data.len());
                let block = data.slice(from..(from + BLOCK).min(data.len()));
                self.cache
                    .insert_block(chunk.chunk_id, (from_block + k) as u32, block.clone());
                *slot = Some(block);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}
