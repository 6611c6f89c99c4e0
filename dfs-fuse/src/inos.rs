//! Inode numbers meta granted this mount for the creates it answers itself
//! (`deferred.rs`). They come with synchronous creates' replies, asked for
//! while few are left, so keeping the pool full costs no round trip of its own.

use std::collections::VecDeque;
use std::sync::Mutex;

use dfs_proto::pb;

/// Numbers asked for at a time.
pub const ASK: u32 = 1024;
/// Below this many left, the next create asks for more.
const LOW: u64 = 256;

/// One number, with the grant it came from (meta checks the grant's token).
pub struct Numbered {
    pub ino: u64,
    pub grant: pb::InoGrant,
}

#[derive(Default)]
pub struct InoPool {
    inner: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Grants with numbers left, and the next number of the first.
    grants: VecDeque<pb::InoGrant>,
    next: u64,
    /// A create asking for more is on its way.
    asking: bool,
}

impl Pool {
    fn left(&self) -> u64 {
        let mut left = 0;
        for (i, g) in self.grants.iter().enumerate() {
            let end = g.first + u64::from(g.count);
            left += if i == 0 {
                end - self.next
            } else {
                u64::from(g.count)
            };
        }
        left
    }
}

impl InoPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next unused number, if any is left.
    pub fn take(&self) -> Option<Numbered> {
        let mut p = self.lock();
        loop {
            let grant = p.grants.front()?.clone();
            let end = grant.first + u64::from(grant.count);
            if p.next < grant.first {
                p.next = grant.first;
            }
            if p.next < end {
                let ino = p.next;
                p.next += 1;
                return Some(Numbered { ino, grant });
            }
            p.grants.pop_front();
        }
    }

    /// How many numbers the next create should ask for (0: none), counting
    /// it as asking until `answered`.
    pub fn want(&self) -> u32 {
        let mut p = self.lock();
        if p.asking || p.left() >= LOW {
            return 0;
        }
        p.asking = true;
        ASK
    }

    /// The create that asked (`want` > 0) was answered, with `grant` if meta gave one.
    pub fn answered(&self, grant: Option<pb::InoGrant>) {
        let mut p = self.lock();
        p.asking = false;
        if let Some(g) = grant.filter(|g| g.count > 0 && g.first > 0) {
            if p.grants.is_empty() {
                p.next = g.first;
            }
            p.grants.push_back(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(first: u64, count: u32) -> pb::InoGrant {
        pb::InoGrant {
            first,
            count,
            token: vec![1],
        }
    }

    #[test]
    fn numbers_come_in_order_each_once_across_grants() {
        let pool = InoPool::default();
        assert!(pool.take().is_none(), "nothing granted yet");
        assert_eq!(pool.want(), ASK);
        assert_eq!(pool.want(), 0, "one ask at a time");
        pool.answered(Some(grant(100, 2)));
        pool.answered(Some(grant(500, 1)));
        let taken: Vec<u64> = std::iter::from_fn(|| pool.take()).map(|n| n.ino).collect();
        assert_eq!(taken, vec![100, 101, 500]);
        let pool = InoPool::default();
        pool.answered(Some(grant(7, 3)));
        let n = pool.take().expect("a number");
        assert_eq!((n.ino, n.grant.first, n.grant.count), (7, 7, 3));
    }

    #[test]
    fn asks_again_only_when_few_are_left() {
        let pool = InoPool::default();
        assert_eq!(pool.want(), ASK);
        pool.answered(Some(grant(1_000, 300)));
        assert_eq!(pool.want(), 0, "300 left");
        for _ in 0..50 {
            pool.take();
        }
        assert_eq!(pool.want(), ASK, "250 left");
        pool.answered(None);
        assert_eq!(pool.want(), ASK, "the ask failed: ask again");
    }
}
