//! Which sessions have which files open, as their mounts said (a chunk map
//! fetched or a commit: the file is open there; `OpenFiles` RPC: closed,
//! or still open after a meta restart). When another session removes a
//! file's last name, each session that has it open becomes a holder of the
//! orphan (`namespace::drop_link`), as the remover does for its own open
//! handles: its reads and writes go on until its last close there.
//!
//! Kept in memory: a restarted meta learns the open files again from each
//! mount's watch stream hello. Several metas on one PostgreSQL each know
//! only their own clients' opens.
//!
//! A hold is claimed inside the removing transaction (`claim`, which may run
//! again on a retry) and settled after it commits (`settle`); a close that
//! comes in between is left to `settle`, so exactly one of the two releases
//! the hold, and never before it exists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    None,
    /// Claimed by a removal that may not have committed yet.
    Claimed,
    /// The session holds the orphan in the store.
    Held,
}

#[derive(Debug, Clone, Copy)]
struct Use {
    open: bool,
    hold: Hold,
}

#[derive(Default)]
pub struct OpenFiles {
    /// Inode → session → its use of it.
    by_ino: Mutex<HashMap<u64, HashMap<u64, Use>>>,
    /// How many (session, file) pairs are open.
    open: AtomicUsize,
}

impl OpenFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HashMap<u64, Use>>> {
        self.by_ino.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `session` has `ino` open (0: a client without a session, not tracked).
    pub fn opened(&self, session: u64, ino: u64) {
        if session == 0 {
            return;
        }
        let mut by_ino = self.lock();
        let used = by_ino
            .entry(ino)
            .or_default()
            .entry(session)
            .or_insert(Use {
                open: false,
                hold: Hold::None,
            });
        if !used.open {
            used.open = true;
            self.open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `session`'s last handle on `ino` closed. True: it held the orphan,
    /// whose hold the caller must now release in the store.
    pub fn closed(&self, session: u64, ino: u64) -> bool {
        let mut by_ino = self.lock();
        let Some(users) = by_ino.get_mut(&ino) else {
            return false;
        };
        let Some(u) = users.get_mut(&session) else {
            return false;
        };
        if u.open {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        let release = match u.hold {
            // The removal's `settle` releases it.
            Hold::Claimed => {
                u.open = false;
                return false;
            }
            Hold::Held => {
                users.remove(&session);
                true
            }
            Hold::None => {
                users.remove(&session);
                false
            }
        };
        if users.is_empty() {
            by_ino.remove(&ino);
        }
        release
    }

    /// `ino` is losing its last name, removed by a session (`except`, which
    /// keeps it open itself if it says so): every other session that has it
    /// open is claimed as a holder. Returns them.
    pub fn claim(&self, ino: u64, except: Option<u64>) -> Vec<u64> {
        let mut by_ino = self.lock();
        let Some(users) = by_ino.get_mut(&ino) else {
            return Vec::new();
        };
        let mut claimed = Vec::new();
        for (session, u) in users.iter_mut() {
            if Some(*session) != except && u.open && u.hold != Hold::Held {
                u.hold = Hold::Claimed;
                claimed.push(*session);
            }
        }
        claimed.sort_unstable();
        claimed
    }

    /// The removal of `ino`'s last name is over (committed, or failed: then
    /// no hold exists and releasing one is a no-op). Returns the sessions
    /// that closed it meanwhile, whose holds the caller must release.
    pub fn settle(&self, ino: u64) -> Vec<u64> {
        let mut by_ino = self.lock();
        let Some(users) = by_ino.get_mut(&ino) else {
            return Vec::new();
        };
        let mut release = Vec::new();
        users.retain(|session, u| {
            if u.hold != Hold::Claimed {
                return true;
            }
            if u.open {
                u.hold = Hold::Held;
                true
            } else {
                release.push(*session);
                false
            }
        });
        if users.is_empty() {
            by_ino.remove(&ino);
        }
        release.sort_unstable();
        release
    }

    /// `session` ended: the store drops its holds itself.
    pub fn forget(&self, session: u64) {
        let mut by_ino = self.lock();
        by_ino.retain(|_, users| {
            if users.remove(&session).is_some_and(|u| u.open) {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
            !users.is_empty()
        });
    }

    /// How many (session, file) pairs are known open.
    pub fn len(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_with_the_file_open_is_claimed_and_then_holds_it() {
        let o = OpenFiles::default();
        o.opened(1, 10);
        o.opened(2, 10);
        o.opened(0, 10);
        // Session 1 removes the last name; it keeps its own handles itself.
        assert_eq!(o.claim(10, Some(1)), vec![2]);
        assert_eq!(o.claim(10, Some(1)), vec![2], "a retried transaction");
        assert!(o.settle(10).is_empty());
        assert!(!o.closed(1, 10), "the remover's hold is its own affair");
        assert!(o.closed(2, 10), "the last close releases the hold");
        assert_eq!(o.len(), 0);
        assert!(o.lock().is_empty());
    }

    #[test]
    fn a_close_between_claim_and_settle_is_released_by_settle_once() {
        let o = OpenFiles::default();
        o.opened(2, 10);
        assert_eq!(o.claim(10, None), vec![2]);
        assert!(!o.closed(2, 10), "the hold may not be in the store yet");
        assert_eq!(o.settle(10), vec![2]);
        assert!(o.settle(10).is_empty());
        assert!(!o.closed(2, 10));
        assert!(o.lock().is_empty());
    }

    #[test]
    fn closed_files_and_ended_sessions_claim_nothing() {
        let o = OpenFiles::default();
        o.opened(2, 10);
        assert!(!o.closed(2, 10));
        assert!(o.claim(10, None).is_empty());
        o.opened(3, 11);
        o.opened(3, 12);
        o.opened(4, 12);
        o.forget(3);
        assert!(o.claim(11, None).is_empty());
        assert_eq!(o.claim(12, None), vec![4]);
        assert_eq!(o.len(), 1);
    }
}
