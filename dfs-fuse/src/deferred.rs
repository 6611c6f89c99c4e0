//! Unlinks answered before meta has them. When every unlink waits for meta,
//! `rm -rf` and other mass deletes pay one metadata round trip per name; here
//! the mount answers an unlink it can vouch for at once and sends it
//! meanwhile, up to `IN_FLIGHT` at a time (`fs.rs` decides which, see
//! `DfsFs::deferrable_unlink`).
//!
//! What keeps this honest:
//! - **Order.** Every other call that reads or changes names or attributes on
//!   meta first waits until the unlinks sent so far are answered
//!   (`settled`), so this mount's later calls (the rmdir of the emptied
//!   directory, a create of the same name, an fsync of the directory, a
//!   listing) see them done. An open of an inode whose unlink is in flight
//!   waits for it too (`settled_ino`).
//! - **Only in a directory no other client looks at:** meta's reply to an
//!   unlink says whether another client may cache names in the directory
//!   (`unshared`: none watching it on meta, whose store is SQLite). Only
//!   after such a reply, for `PRIVATE_FOR`, are that directory's next unlinks
//!   answered early, and each reply renews or ends that. So the first unlink
//!   in a directory always waits for meta (a read-only export refuses it, and
//!   nothing is ever answered early there), and where mounts share a
//!   directory every unlink does, as before: another mount never sees a name
//!   linger longer than it does today.
//! - **Only what the mount can vouch for:** a regular file or symlink whose
//!   entry and attributes, and its directory's, are in the mount's cache, not
//!   open here, neither it nor its directory immutable or append-only.
//!   Everything else waits for meta as before.
//! - **The inode, named:** meta removes the name only while it still names the
//!   inode this mount removed (`expect_ino`), so a file another client renamed
//!   over the name meanwhile is not removed in its place.
//! - A client that starts looking at the directory meanwhile sees the names
//!   go when meta has them (a round trip after this mount answered), and
//!   stops the early answers with its interest. A crash of the mount before
//!   meta answered loses the unlinks in flight (the files stay): as with a
//!   local file system, an unlink is durable once its directory is fsynced.
//! - A failure meta reports, other than the name being gone already, is
//!   logged and counted, and the name comes back in this mount's cache.
//!
//! `-o sync_unlink` makes every unlink wait for meta.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// Unlinks sent and not yet answered, at most; the next one waits for a slot.
pub const IN_FLIGHT: u32 = 64;
/// How long meta's word that no other client looks at a directory is
/// trusted without a newer one.
pub const PRIVATE_FOR: Duration = Duration::from_secs(2);
/// Directories remembered as private.
const PRIVATE_DIRS: usize = 4096;

type Victims = Arc<Mutex<HashMap<u64, usize>>>;

fn lock(m: &Mutex<HashMap<u64, usize>>) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DeferredUnlinks {
    enabled: bool,
    /// Directories meta last said no other client looks at, and when.
    private: Mutex<lru::LruCache<u64, Instant>>,
    /// Each unlink in flight holds a read guard; `settled` waits for the
    /// write side, and tokio's lock lets no new reader in while it waits.
    gate: Arc<RwLock<()>>,
    /// Inodes whose unlink is in flight, with how many.
    victims: Victims,
}

/// One unlink on its way to meta: its slot frees when this drops.
pub struct InFlight {
    ino: u64,
    victims: Victims,
    _slot: OwnedRwLockReadGuard<()>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Runs before the slot is released (fields drop after this), so a
        // waiter let through by the last slot finds no victim left.
        let mut victims = lock(&self.victims);
        if let Some(n) = victims.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                victims.remove(&self.ino);
            }
        }
    }
}

impl DeferredUnlinks {
    /// `enabled: false` (`-o sync_unlink`): every unlink waits for meta.
    pub fn new(enabled: bool) -> DeferredUnlinks {
        DeferredUnlinks {
            enabled,
            private: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(PRIVATE_DIRS).unwrap_or(NonZeroUsize::MIN),
            )),
            gate: Arc::new(RwLock::with_max_readers((), IN_FLIGHT)),
            victims: Arc::default(),
        }
    }

    fn private(&self) -> std::sync::MutexGuard<'_, lru::LruCache<u64, Instant>> {
        self.private.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an unlink in `dir` may be answered before meta has it.
    pub fn allowed(&self, dir: u64) -> bool {
        self.enabled
            && self
                .private()
                .get(&dir)
                .is_some_and(|t| t.elapsed() < PRIVATE_FOR)
    }

    /// Meta answered an unlink in `dir`: `unshared`, no other client may
    /// cache its names.
    pub fn learned(&self, dir: u64, unshared: bool) {
        if !self.enabled {
            return;
        }
        let mut private = self.private();
        if unshared {
            private.put(dir, Instant::now());
        } else {
            private.pop(&dir);
        }
    }

    /// A slot for an unlink of `ino`, once one is free and no `settled` waits.
    pub async fn begin(&self, ino: u64) -> InFlight {
        let slot = self.gate.clone().read_owned().await;
        *lock(&self.victims).entry(ino).or_insert(0) += 1;
        InFlight {
            ino,
            victims: self.victims.clone(),
            _slot: slot,
        }
    }

    /// Returns once every unlink begun before this call is answered.
    pub async fn settled(&self) {
        if !self.enabled {
            return;
        }
        if let Ok(free) = self.gate.try_write() {
            drop(free);
            return;
        }
        drop(self.gate.write().await);
    }

    /// `settled`, if an unlink of `ino` is in flight.
    pub async fn settled_ino(&self, ino: u64) {
        if lock(&self.victims).contains_key(&ino) {
            self.settled().await;
        }
    }

    /// Unlinks in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.victims).values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn enabled() -> DeferredUnlinks {
        DeferredUnlinks::new(true)
    }

    #[test]
    fn allowed_only_in_directories_meta_said_are_private() {
        let d = DeferredUnlinks::new(true);
        assert!(!d.allowed(7), "meta said nothing of 7 yet");
        d.learned(7, true);
        assert!(d.allowed(7));
        assert!(!d.allowed(8), "only the directory meta spoke of");
        d.learned(7, false);
        assert!(!d.allowed(7), "another client looks at 7 now");
        let off = DeferredUnlinks::new(false);
        off.learned(7, true);
        assert!(!off.allowed(7), "sync_unlink");
    }

    #[tokio::test]
    async fn settled_waits_for_every_unlink_in_flight() {
        let d = Arc::new(enabled());
        let a = d.begin(5).await;
        let b = d.begin(6).await;
        assert_eq!(d.in_flight(), 2);
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.settled().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "two unlinks still in flight");
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one unlink still in flight");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled once both are answered")
            .expect("waiter");
        assert_eq!(d.in_flight(), 0);
    }

    #[tokio::test]
    async fn no_unlink_begins_while_a_settle_waits() {
        let d = Arc::new(enabled());
        let first = d.begin(5).await;
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.settled().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = {
            let d = d.clone();
            tokio::spawn(async move { d.begin(6).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !later.is_finished(),
            "an unlink after the settle waits for it"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled")
            .expect("waiter");
        let later = tokio::time::timeout(Duration::from_secs(5), later)
            .await
            .expect("the later unlink begins after the settle")
            .expect("begin");
        assert_eq!(d.in_flight(), 1);
        drop(later);
    }

    #[tokio::test]
    async fn slots_are_bounded() {
        let d = Arc::new(enabled());
        let mut held = Vec::new();
        for ino in 0..u64::from(IN_FLIGHT) {
            held.push(d.begin(ino).await);
        }
        let next = {
            let d = d.clone();
            tokio::spawn(async move { d.begin(999).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "every slot is taken");
        held.pop();
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("a freed slot lets the next one in")
            .expect("begin");
    }

    #[tokio::test]
    async fn an_open_waits_only_for_its_own_inode() {
        let d = Arc::new(enabled());
        let a = d.begin(5).await;
        tokio::time::timeout(Duration::from_millis(200), d.settled_ino(6))
            .await
            .expect("another inode does not wait");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.settled_ino(5).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the unlink of 5 is in flight");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled")
            .expect("waiter");
    }

    #[tokio::test]
    async fn disabled_never_waits() {
        let d = DeferredUnlinks::new(false);
        tokio::time::timeout(Duration::from_millis(200), d.settled())
            .await
            .expect("nothing to wait for");
    }
}
