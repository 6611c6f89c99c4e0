//! The chunk cache: whole chunks, and single 64 KiB blocks fetched by random
//! reads, in memory, bounded in bytes, least recently used out first. Keyed by
//! chunk id (and block): chunks are immutable, so an entry can never be stale,
//! only unused. Hits, misses and evictions are counted in the
//! mount's metrics. Its room is what the mount's memory bound leaves after the
//! write buffers (`MemoryBudget`), so it shrinks while files are being written.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use prost::bytes::Bytes;

use crate::memory::MemoryBudget;
use crate::metrics::FuseMetrics;

pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: Arc<MemoryBudget>,
    metrics: Arc<FuseMetrics>,
}

/// A whole chunk, or one block of it.
type Key = (u64, u32);
const WHOLE: u32 = u32::MAX;

struct Inner {
    lru: LruCache<Key, Bytes>,
    bytes: u64,
    /// Chunks inserted by prefetch and not read yet.
    prefetched: HashSet<u64>,
}

impl ChunkCache {
    pub fn new(budget: Arc<MemoryBudget>, metrics: Arc<FuseMetrics>) -> ChunkCache {
        metrics.cache_capacity.set(budget.limit() as i64);
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                prefetched: HashSet::new(),
            }),
            budget,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, chunk_id: u64) -> Option<Bytes> {
        self.lookup((chunk_id, WHOLE))
    }

    /// One block of a chunk, cached by itself.
    pub fn get_block(&self, chunk_id: u64, block: u32) -> Option<Bytes> {
        self.lookup((chunk_id, block))
    }

    /// An entry, counting the hit (and a prefetch hit for a whole chunk
    /// fetched ahead) or the miss.
    fn lookup(&self, key: Key) -> Option<Bytes> {
        let mut inner = self.lock();
        let found = inner.lru.get(&key).cloned();
        match &found {
            Some(_) => {
                self.metrics.cache_hits.inc();
                if key.1 == WHOLE && inner.prefetched.remove(&key.0) {
                    self.metrics.prefetch_hits.inc();
                }
            }
            None => self.metrics.cache_misses.inc(),
        }
        found
    }

    /// Whether the whole chunk is cached, without counting a hit or miss or touching recency.
    pub fn contains(&self, chunk_id: u64) -> bool {
        self.lock().lru.contains(&(chunk_id, WHOLE))
    }

    pub fn insert(&self, chunk_id: u64, data: Bytes) {
        self.insert_inner((chunk_id, WHOLE), data, false);
    }

    pub fn insert_block(&self, chunk_id: u64, block: u32, data: Bytes) {
        self.insert_inner((chunk_id, block), data, false);
    }

    /// Inserts a chunk fetched ahead of the reader (counted as a prefetch hit when read).
    pub fn insert_prefetched(&self, chunk_id: u64, data: Bytes) {
        self.insert_inner((chunk_id, WHOLE), data, true);
    }

    fn insert_inner(&self, key: Key, data: Bytes, prefetched: bool) {
        let len = data.len() as u64;
        if len > self.budget.cache_room() {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.lru.put(key, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        if prefetched {
            inner.prefetched.insert(key.0);
        }
        self.evict_to_room(&mut inner);
    }

    /// Evicts until the cache fits in what the write buffers leave of the bound.
    pub fn trim(&self) {
        let mut inner = self.lock();
        self.evict_to_room(&mut inner);
    }

    fn evict_to_room(&self, inner: &mut Inner) {
        let room = self.budget.cache_room();
        while inner.bytes > room {
            match inner.lru.pop_lru() {
                Some((key, evicted)) => {
                    inner.bytes -= evicted.len() as u64;
                    if key.1 == WHOLE {
                        inner.prefetched.remove(&key.0);
                    }
                    self.metrics.cache_evictions.inc();
                }
                None => break,
            }
        }
        self.metrics.cache_bytes.set(inner.bytes as i64);
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The room the cache has now (the bound minus the write buffers).
    pub fn capacity(&self) -> u64 {
        self.budget.cache_room()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_lru_first() {
        let metrics = Arc::new(FuseMetrics::new());
        let budget = Arc::new(MemoryBudget::new(10));
        let c = ChunkCache::new(budget.clone(), metrics.clone());
        c.insert(1, Bytes::from(vec![0; 4]));
        c.insert_prefetched(2, Bytes::from(vec![0; 4]));
        assert!(c.get(1).is_some()); // 1 is now most recent
        c.insert(3, Bytes::from(vec![0; 4]));
        assert!(c.get(2).is_none(), "least recently used went first");
        assert!(c.get(1).is_some() && c.get(3).is_some());
        assert_eq!(c.bytes(), 8);
        assert_eq!(metrics.cache_evictions.get(), 1);
        c.insert(4, Bytes::from(vec![0; 11]));
        assert!(!c.contains(4), "larger than the whole cache: not kept");
        assert_eq!(metrics.cache_hits.get(), 3);
        assert_eq!(metrics.cache_misses.get(), 1);
        assert_eq!(
            metrics.prefetch_hits.get(),
            0,
            "the prefetched chunk was evicted unread"
        );
        c.insert_prefetched(5, Bytes::from(vec![0; 2]));
        assert!(c.get(5).is_some());
        assert_eq!(metrics.prefetch_hits.get(), 1);
        assert_eq!(metrics.cache_bytes.get(), 10);
        // Write buffers taking room push cached chunks out.
        budget.adjust_buffered(5);
        c.trim();
        assert!(c.bytes() <= 5);
        assert!(c.get(5).is_some(), "the most recent chunk stays");
        // Blocks are entries of their own, apart from the whole chunk.
        budget.adjust_buffered(-5);
        c.insert_block(5, 0, Bytes::from(vec![1; 3]));
        assert_eq!(c.get_block(5, 0).unwrap()[0], 1);
        assert!(c.get_block(5, 1).is_none());
        assert_eq!(c.get(5).unwrap()[0], 0);
    }
}
