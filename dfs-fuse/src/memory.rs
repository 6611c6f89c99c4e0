//! One memory bound for the whole mount. `cache_size` covers the chunk cache,
//! prefetched chunks and every open file's write buffers together, so a big
//! `cp` (or many files written at once) cannot grow the daemon past it.
//!
//! Write buffers (dirty chunks, uploads in flight, uploaded but not yet
//! committed) may take up to half of the bound; the cache gets whatever the
//! buffers leave and evicts as they grow. A writer that finds the buffers over
//! their share drains its own file first, then asks idle files to drain theirs.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct MemoryBudget {
    limit: u64,
    buffered: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit,
            buffered: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the write buffers of every open file hold now.
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Records a change in some file's buffered bytes.
    pub fn adjust_buffered(&self, delta: i64) {
        if delta >= 0 {
            self.buffered.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let down = delta.unsigned_abs();
            let _ = self
                .buffered
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(down))
                });
        }
    }

    /// The write buffers' share of the bound.
    pub fn write_share(&self) -> u64 {
        self.limit / 2
    }

    pub fn writes_over_share(&self) -> bool {
        self.buffered() > self.write_share()
    }

    /// What the cache may hold now: the bound minus the write buffers.
    pub fn cache_room(&self) -> u64 {
        self.limit.saturating_sub(self.buffered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_take_room_from_the_cache() {
        let m = MemoryBudget::new(100);
        assert_eq!(m.cache_room(), 100);
        m.adjust_buffered(30);
        assert_eq!(m.cache_room(), 70);
        assert!(!m.writes_over_share());
        m.adjust_buffered(21);
        assert!(m.writes_over_share());
        m.adjust_buffered(-51);
        assert_eq!(m.buffered(), 0);
        m.adjust_buffered(-5);
        assert_eq!(m.buffered(), 0, "never below zero");
    }
}
