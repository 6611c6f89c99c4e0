//! Inode and chunk ids, taken from the store's counters a block at a time.
//!
//! Why: taking one id inside each create's transaction costs a statement
//! (a round trip on PostgreSQL) and makes every concurrent create update the
//! same counter row, so SERIALIZABLE transactions conflict and rerun. A
//! block is taken in a short transaction of its own, before the caller's.
//! Ids of a block not handed out before a restart are skipped; meta servers
//! sharing one PostgreSQL each take blocks of their own.

use std::ops::RangeInclusive;

use tokio::sync::Mutex;

use super::tables::next_ids;
use super::{in_tx, Result, Store};

/// Ids one counter update takes.
const BLOCK: i64 = 1024;

/// The untaken rest of each counter's block.
#[derive(Default)]
pub(crate) struct IdBlocks {
    ino: Mutex<Option<RangeInclusive<i64>>>,
    chunk: Mutex<Option<RangeInclusive<i64>>>,
}

/// A counter ids are taken from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Ino,
    Chunk,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::Ino => "ino",
            Counter::Chunk => "chunk",
        }
    }
}

impl Store {
    /// `n` (1..=BLOCK) fresh consecutive ids of `counter`, none ever handed
    /// out before. Must not be called inside a transaction of this store
    /// (SQLite's one connection would wait for itself).
    pub(crate) async fn take_ids(&self, counter: Counter, n: i64) -> Result<RangeInclusive<i64>> {
        let n = n.clamp(1, BLOCK);
        let mut rest = match counter {
            Counter::Ino => self.ids.ino.lock().await,
            Counter::Chunk => self.ids.chunk.lock().await,
        };
        let block = match rest.take() {
            Some(block) if block.end() - block.start() + 1 >= n => block,
            // A rest too small for `n` is skipped. The lock stays held over
            // this one transaction (once per 1,024 ids): concurrent takers
            // wait for its block instead of each taking one.
            _ => {
                let last = in_tx!(self, |tx| next_ids(&mut tx, counter.name(), BLOCK).await)?;
                last - BLOCK + 1..=last
            }
        };
        let (first, last) = (*block.start(), *block.end());
        let taken = first..=first + n - 1;
        *rest = (first + n <= last).then(|| first + n..=last);
        Ok(taken)
    }
}

impl Store {
    /// `n` (1..=1,024) fresh inode numbers for a client's early creates:
    /// `(first, count)`.
    pub async fn take_inos(&self, n: u32) -> Result<(u64, u32)> {
        let taken = self.take_ids(Counter::Ino, i64::from(n)).await?;
        let count = (taken.end() - taken.start() + 1) as u32;
        Ok((*taken.start() as u64, count))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::FormatOptions;

    #[tokio::test]
    async fn each_id_is_handed_out_once_across_blocks_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta.db", dir.path().display());
        let store = Store::open(&url, FormatOptions::default()).await.unwrap();
        let mut seen = Vec::new();
        for n in [1, 64, 1000, 1, BLOCK, 5] {
            let ids = store.take_ids(Counter::Chunk, n).await.unwrap();
            assert_eq!(ids.end() - ids.start() + 1, n);
            seen.extend(ids);
        }
        store.close().await;
        let store = Store::open(&url, FormatOptions::default()).await.unwrap();
        seen.extend(store.take_ids(Counter::Chunk, 3).await.unwrap());
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "an id was handed out twice");
        // The inode counter is separate, and above the root.
        assert!(*store.take_ids(Counter::Ino, 1).await.unwrap().start() > 1);
    }
}
