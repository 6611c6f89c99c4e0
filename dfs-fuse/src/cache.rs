//! The chunk cache: whole chunks in memory, bounded in bytes, least recently
//! used out first. Keyed by chunk id: chunks are immutable, so an entry can
//! never be stale, only unused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;
use prost::bytes::Bytes;

pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity: u64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

struct Inner {
    lru: LruCache<u64, Bytes>,
    bytes: u64,
}

impl ChunkCache {
    pub fn new(capacity_bytes: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, chunk_id: u64) -> Option<Bytes> {
        let found = self.lock().lru.get(&chunk_id).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether the chunk is cached, without counting a hit or miss or touching recency.
    pub fn contains(&self, chunk_id: u64) -> bool {
        self.lock().lru.contains(&chunk_id)
    }

    pub fn insert(&self, chunk_id: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.lru.put(chunk_id, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => {
                    inner.bytes -= evicted.len() as u64;
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_lru_first() {
        let c = ChunkCache::new(10);
        c.insert(1, Bytes::from(vec![0; 4]));
        c.insert(2, Bytes::from(vec![0; 4]));
        assert!(c.get(1).is_some()); // 1 is now most recent
        c.insert(3, Bytes::from(vec![0; 4]));
        assert!(c.get(2).is_none(), "least recently used went first");
        assert!(c.get(1).is_some() && c.get(3).is_some());
        assert_eq!(c.bytes(), 8);
        assert_eq!(c.evictions.load(Ordering::Relaxed), 1);
        c.insert(4, Bytes::from(vec![0; 11]));
        assert!(!c.contains(4), "larger than the whole cache: not kept");
        assert_eq!(c.hits.load(Ordering::Relaxed), 3);
        assert_eq!(c.misses.load(Ordering::Relaxed), 1);
    }
}
