//! When to list a directory whole instead of looking its names up one by one.
//!
//! The mount's cache forgets entries after `cache_timeout`; the kernel's after
//! the same. A program that then stats many files of one directory (`stat`
//! of a tree made a minute ago, `make`, `git status`) sends a Lookup round
//! trip per name. After `MISSES` lookups miss in one directory within
//! `WINDOW`, the mount lists it instead (ReadDir with attributes, 1,000
//! names a call) and answers the rest from what the listing taught it.
//! A directory is listed at most once per `PAUSE`, and only its first
//! `MAX_PAGES` pages: a huge directory of which a few names are wanted costs
//! at most that much once.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Misses in one directory that make it worth listing.
const MISSES: u32 = 8;
/// ...within this long of the first.
const WINDOW: Duration = Duration::from_secs(2);
/// Pages a listing may take (the directory's first 8,000 names).
pub const MAX_PAGES: usize = 8;
/// Directories tracked at once.
const DIRS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Misses {
    count: u32,
    first: Instant,
    /// When the directory was last listed for its misses.
    listed: Option<Instant>,
}

/// Lookup misses per directory.
pub struct Refill {
    /// A directory is listed again for misses only this long after the last
    /// time (the cache's own lifetime: what it learned is good that long).
    pause: Duration,
    dirs: Mutex<LruCache<u64, Misses>>,
}

impl Refill {
    pub fn new(pause: Duration) -> Refill {
        Refill {
            pause,
            dirs: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIRS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// A lookup in `dir` missed the cache: whether the caller should list
    /// `dir` now (true once per burst of misses).
    pub fn missed(&self, dir: u64) -> bool {
        self.missed_at(dir, Instant::now())
    }

    fn missed_at(&self, dir: u64, now: Instant) -> bool {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let m = dirs.get_or_insert_mut(dir, || Misses {
            count: 0,
            first: now,
            listed: None,
        });
        if m.listed.is_some_and(|t| now.duration_since(t) < self.pause) {
            return false;
        }
        if now.duration_since(m.first) > WINDOW {
            m.count = 0;
            m.first = now;
        }
        m.count += 1;
        if m.count < MISSES {
            return false;
        }
        m.count = 0;
        m.listed = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_misses_lists_a_directory_once_per_pause() {
        let r = Refill::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let fired: Vec<bool> = (0..MISSES).map(|_| r.missed_at(1, t0)).collect();
        assert_eq!(fired.iter().filter(|f| **f).count(), 1);
        assert!(fired[MISSES as usize - 1], "on the last miss of the burst");
        // Other directories count on their own.
        assert!(!r.missed_at(2, t0));
        // Within the pause: no second listing, however many misses.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3 * MISSES).all(|_| !r.missed_at(1, later)));
        // After it: a new burst lists it again.
        let much_later = t0 + Duration::from_secs(31);
        let again = (0..MISSES).filter(|_| r.missed_at(1, much_later)).count();
        assert_eq!(again, 1);
    }

    #[test]
    fn scattered_misses_do_not_list() {
        let r = Refill::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..4 * MISSES {
            let t = t0 + WINDOW * i / 2;
            assert!(!r.missed_at(1, t), "miss {i}, {:?} apart", WINDOW / 2);
        }
    }
}
