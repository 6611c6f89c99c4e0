//! Unlinks and creates answered before meta has them. When every one waits
//! for meta, `rm -rf`, mass deletes and runs of creates pay one metadata
//! round trip per name; here the mount answers one it can vouch for at once
//! and sends it meanwhile, up to `IN_FLIGHT` at a time (`fs.rs` decides
//! which: `DfsFs::deferrable_unlink`, `DfsFs::deferrable_create`).
//!
//! What keeps this honest:
//! - **Order.** Every other call that reads or changes names or attributes on
//!   meta first waits until the calls sent so far are answered (`settled`),
//!   so this mount's later calls (the rmdir of the emptied directory, a
//!   rename of a new file, an fsync of the directory, a listing) see them
//!   done. An open of an inode whose call is in flight waits for it too
//!   (`settled_ino`), and two early calls never name the same name or inode
//!   at once (`busy`): a create after an unlink of one name waits for it.
//! - **Only in a directory no other client looks at, and taken back before
//!   one does:** meta's reply to an unlink or create may grant this mount
//!   the directory (`grant`: no other client watching it on meta, a meta
//!   alone on its store). Only after such a reply, for `GRANT_FOR` from when the
//!   call was sent, are that directory's next unlinks and creates answered
//!   early, and each reply renews or ends that. So the first one in a
//!   directory always waits for meta (a read-only export refuses it, and
//!   nothing is ever answered early there), and where mounts share a
//!   directory every call does, as before. Before meta serves another client
//!   anything in the directory, it recalls the grant (on the watch stream):
//!   the mount stops answering early there, waits until what it answered is
//!   on meta, and says so (`DfsFs::recall`); so the other client sees every
//!   name this mount's applications were told is made or gone. A grant the
//!   recall may have overtaken (its reply still on the way) is ignored.
//! - **Only what the mount can vouch for:** an unlink of a regular file or
//!   symlink whose entry and attributes, and its directory's, are in the
//!   mount's cache, not open here, neither it nor its directory immutable or
//!   append-only; a create of a regular file under a name the mount's cache
//!   knows is free, in a directory whose attributes it knows (for the setgid
//!   rule), under an inode number meta granted it (O_EXCL too: another
//!   client's create of the name reaches meta only after the recall brought
//!   this one there, so it finds the name taken). Everything else waits for
//!   meta as before.
//! - **The inode, named:** meta removes the name only while it still names the
//!   inode this mount removed (`expect_ino`), so a file another client renamed
//!   over the name meanwhile is not removed in its place; a create names its
//!   inode number, so a create sent twice is one file.
//! - **A new file's data waits for its create:** the file's first commit,
//!   fsync or chunk map waits until meta has the create (`Landing`); if meta
//!   refused it (another client took the name in the moment since meta's
//!   word), those fail with EIO and the name leaves this mount's cache, so
//!   nothing written to the file is acknowledged by a close. An empty file
//!   closed before meta answered is acknowledged without waiting.
//! - **A create rides with the file's first commit:** it is held (`HeldCreate`)
//!   until the file's first commit takes it along (create and commit are one
//!   call and one transaction on meta, so a small file's close costs one),
//!   or until anything else needs it on meta: a close with nothing to
//!   commit, anything waiting for its landing, a settle (every call that
//!   waits for the early ones), a full set of slots, or `HOLD_CREATE`. Then
//!   it goes alone. If the carrying commit fails, the create goes alone and
//!   decides the file's fate as above, and the commit follows it.
//! - A mount that does not answer a recall (stopped, cut off) is waited out
//!   by meta until its grant runs out; calls it still had in flight then may
//!   land after the other client's (a create then fails as above). A crash
//!   of the mount before meta answered loses the calls in flight (unlinked
//!   files stay, empty created ones are not there): as with a local file
//!   system, a name's change is durable once its directory is fsynced.
//! - A failure meta reports, other than an unlink's name being gone already,
//!   is logged and counted, and the cache drops what it said of the name.
//!
//! `-o sync_unlink` makes every unlink, `-o sync_create` every create, wait
//! for meta.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedRwLockReadGuard, RwLock};

use dfs_proto::pb;

use crate::error::{FsError, FsResult};

/// Calls sent and not yet answered, at most; the next one waits for a slot.
pub const IN_FLIGHT: u32 = 64;
/// How long meta's word that no other client looks at a directory is
/// trusted without a newer one.
pub const PRIVATE_FOR: Duration = dfs_proto::GRANT_FOR;
/// Directories remembered as private.
const PRIVATE_DIRS: usize = 4096;
/// How long an early create waits for its file's first commit to carry it
/// before it goes alone (a file written for longer than this, or kept
/// open).
pub const HOLD_CREATE: Duration = Duration::from_millis(100);

/// What meta last said of a directory.
#[derive(Debug, Clone, Copy)]
enum Word {
    /// Granted (grant number) on a call sent at this instant.
    Granted(u64, Instant),
    /// Grants up to this number were recalled, at this instant: a reply
    /// still on its way with one of them counts for nothing.
    Recalled(u64, Instant),
}

/// What an early call is about: its inode, and the name it changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Ino(u64),
    Name(u64, Vec<u8>),
}

type Busy = Arc<Mutex<HashMap<Subject, usize>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Deferred {
    unlinks: bool,
    creates: bool,
    /// Directories meta granted (or recalled), and when.
    private: Mutex<lru::LruCache<u64, Word>>,
    /// Each call in flight holds a read guard; `settled` waits for the
    /// write side, and tokio's lock lets no new reader in while it waits.
    gate: Arc<RwLock<()>>,
    /// Inodes and names with a call in flight, with how many.
    busy: Busy,
    /// Bumped when a settle (or a wait for a slot) begins: held creates go.
    kick: watch::Sender<u64>,
    /// Told whenever a call in flight is answered (`settled_ino`).
    answered: Arc<tokio::sync::Notify>,
}

/// One call on its way to meta: its slot frees when this drops.
pub struct InFlight {
    subjects: [Subject; 2],
    busy: Busy,
    answered: Arc<tokio::sync::Notify>,
    _slot: OwnedRwLockReadGuard<()>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Runs before the slot is released (fields drop after this), so a
        // waiter let through by the last slot finds nothing busy.
        let mut busy = lock(&self.busy);
        for s in &self.subjects {
            if let Some(n) = busy.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(s);
                }
            }
        }
        drop(busy);
        self.answered.notify_waiters();
    }
}

impl Deferred {
    /// `unlinks`/`creates: false` (`-o sync_unlink`, `-o sync_create`):
    /// every such call waits for meta.
    pub fn new(unlinks: bool, creates: bool) -> Deferred {
        Deferred {
            unlinks,
            creates,
            private: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(PRIVATE_DIRS).unwrap_or(NonZeroUsize::MIN),
            )),
            gate: Arc::new(RwLock::with_max_readers((), IN_FLIGHT)),
            busy: Arc::default(),
            kick: watch::channel(0).0,
            answered: Arc::default(),
        }
    }

    /// Sends every held create now (something waits for the calls in flight).
    fn kick(&self) {
        self.kick.send_modify(|k| *k = k.wrapping_add(1));
    }

    /// What tells a held create to go (`HeldCreate::wait`).
    pub fn kicks(&self) -> watch::Receiver<u64> {
        self.kick.subscribe()
    }

    fn private_now(&self, dir: u64) -> bool {
        matches!(lock(&self.private).get(&dir),
            Some(Word::Granted(_, sent)) if sent.elapsed() < PRIVATE_FOR)
    }

    /// Whether an unlink in `dir` may be answered before meta has it.
    pub fn unlink_allowed(&self, dir: u64) -> bool {
        self.unlinks && self.private_now(dir)
    }

    /// Whether a create in `dir` may be answered before meta has it.
    pub fn create_allowed(&self, dir: u64) -> bool {
        self.creates && self.private_now(dir)
    }

    /// Whether creates may ever be answered early (inode numbers worth asking for).
    pub fn creates_early(&self) -> bool {
        self.creates
    }

    /// Meta answered an unlink or create in `dir`, sent at `sent`: a
    /// nonzero `grant` granted the directory.
    pub fn learned(&self, dir: u64, grant: u64, sent: Instant) {
        if !self.unlinks && !self.creates {
            return;
        }
        let mut private = lock(&self.private);
        if grant == 0 {
            private.pop(&dir);
            return;
        }
        match private.get(&dir) {
            // Overtaken by the recall: the grant is over.
            Some(Word::Recalled(upto, at)) if grant <= *upto && at.elapsed() < PRIVATE_FOR => {}
            // A newer grant came first (replies may come out of order).
            Some(Word::Granted(newer, _)) if grant < *newer => {}
            _ => {
                private.put(dir, Word::Granted(grant, sent));
            }
        }
    }

    /// Meta recalled its grants on `dir` up to `grant`: nothing more is
    /// answered early there (those in flight go on; `settled` waits for them).
    pub fn recall(&self, dir: u64, grant: u64) {
        let mut private = lock(&self.private);
        let upto = match private.get(&dir) {
            Some(Word::Recalled(upto, _)) => grant.max(*upto),
            _ => grant,
        };
        private.put(dir, Word::Recalled(upto, Instant::now()));
    }

    /// The watch stream broke: recalls may be missed, so no grant counts.
    pub fn forget_grants(&self) {
        lock(&self.private).clear();
    }

    /// Whether a call about inode `ino` or name `name` in `dir` is in flight.
    pub fn busy(&self, ino: u64, dir: u64, name: &[u8]) -> bool {
        let busy = lock(&self.busy);
        busy.contains_key(&Subject::Ino(ino))
            || busy.contains_key(&Subject::Name(dir, name.to_vec()))
    }

    /// Whether a call about `name` in `dir` is in flight.
    pub fn name_busy(&self, dir: u64, name: &[u8]) -> bool {
        lock(&self.busy).contains_key(&Subject::Name(dir, name.to_vec()))
    }

    /// Whether `call` is the only one in flight about its inode and name
    /// (another may have begun while it waited for its slot).
    pub fn alone(&self, call: &InFlight) -> bool {
        let busy = lock(&self.busy);
        call.subjects.iter().all(|s| busy.get(s) == Some(&1))
    }

    /// A slot for a call about `ino` and `name` in `dir`, once one is free
    /// and no `settled` waits.
    pub async fn begin(&self, ino: u64, dir: u64, name: &[u8]) -> InFlight {
        let slot = match self.gate.clone().try_read_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Held creates may hold the slots: they go now.
                self.kick();
                self.gate.clone().read_owned().await
            }
        };
        let subjects = [Subject::Ino(ino), Subject::Name(dir, name.to_vec())];
        {
            let mut busy = lock(&self.busy);
            for s in &subjects {
                *busy.entry(s.clone()).or_insert(0) += 1;
            }
        }
        InFlight {
            subjects,
            busy: self.busy.clone(),
            answered: self.answered.clone(),
            _slot: slot,
        }
    }

    /// Returns once every call begun before this call is answered.
    pub async fn settled(&self) {
        if !self.unlinks && !self.creates {
            return;
        }
        if let Ok(free) = self.gate.try_write() {
            drop(free);
            return;
        }
        self.kick();
        drop(self.gate.write().await);
    }

    /// Returns once no call about `ino` is in flight. Unlike `settled`, it
    /// lets other calls begin meanwhile (an open, or the report of a close,
    /// of a file just created must not hold up the next creates).
    pub async fn settled_ino(&self, ino: u64) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !lock(&self.busy).contains_key(&Subject::Ino(ino)) {
                return;
            }
            // Its create may be held for a commit: it goes now.
            self.kick();
            answered.await;
        }
    }

    /// Calls in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.busy)
            .iter()
            .filter(|(s, _)| matches!(s, Subject::Ino(_)))
            .map(|(_, n)| n)
            .sum()
    }
}

/// What meta answered an early create: the grant of its directory (0: none)
/// and inode numbers, if asked for.
pub type CreateAnswer = FsResult<(u64, Option<pb::InoGrant>)>;

/// What to do with meta's answer to an early create (the mount's
/// bookkeeping: grants, inode numbers, the cache on a failure). Returns the
/// file's fate: Err says why the create failed.
pub type OnAnswer =
    Box<dyn FnOnce(&pb::CreateRequest, Instant, CreateAnswer) -> Result<(), String> + Send>;

/// An early create not sent yet, with what its answer goes to.
pub struct PendingCreate {
    pub request: pb::CreateRequest,
    lander: Lander,
    on_answer: OnAnswer,
    _in_flight: InFlight,
}

impl PendingCreate {
    /// Meta answered the create (alone or carried by a commit sent at
    /// `sent`): the bookkeeping runs, the file's `Landing` hears, the slot frees.
    pub fn answered(self, sent: Instant, answer: CreateAnswer) {
        let outcome = (self.on_answer)(&self.request, sent, answer);
        self.lander.landed(outcome);
    }
}

/// An early create held for its file's first commit (see the module).
pub struct HeldCreate {
    state: Mutex<Held>,
    go: tokio::sync::Notify,
}

enum Held {
    /// Not sent: a commit may take it along.
    Waiting(PendingCreate),
    /// A commit took it along and is on its way.
    Carried,
    /// To go alone (the carrying commit failed).
    Alone(PendingCreate),
    /// Sent alone, or carried and answered.
    Gone,
}

impl HeldCreate {
    pub fn new(
        request: pb::CreateRequest,
        lander: Lander,
        on_answer: OnAnswer,
        in_flight: InFlight,
    ) -> Arc<HeldCreate> {
        Arc::new(HeldCreate {
            state: Mutex::new(Held::Waiting(PendingCreate {
                request,
                lander,
                on_answer,
                _in_flight: in_flight,
            })),
            go: tokio::sync::Notify::new(),
        })
    }

    /// The create, for a commit to carry; None if it went (or goes) alone.
    pub fn carry(&self) -> Option<PendingCreate> {
        let mut held = lock(&self.state);
        match std::mem::replace(&mut *held, Held::Carried) {
            Held::Waiting(create) => Some(create),
            other => {
                *held = other;
                None
            }
        }
    }

    /// The carrying commit was answered (`PendingCreate::answered` told the rest).
    pub fn carried(&self) {
        *lock(&self.state) = Held::Gone;
        self.go.notify_one();
    }

    /// The carrying commit failed: the create goes alone now.
    pub fn carry_failed(&self, create: PendingCreate) {
        *lock(&self.state) = Held::Alone(create);
        self.go.notify_one();
    }

    /// Something needs the create on meta: it goes alone now, if still held.
    pub fn go(&self) {
        self.go.notify_one();
    }

    /// Waits until the create must go alone (`go`, a kick, or
    /// `HOLD_CREATE`), then takes it; None once a commit carried it and
    /// was answered.
    pub async fn wait(&self, mut kicks: watch::Receiver<u64>) -> Option<PendingCreate> {
        let hold = tokio::time::sleep(HOLD_CREATE);
        tokio::pin!(hold);
        let (mut held_out, mut kicks_live) = (false, true);
        loop {
            let waiting = {
                let mut held = lock(&self.state);
                match std::mem::replace(&mut *held, Held::Gone) {
                    Held::Alone(create) => return Some(create),
                    Held::Gone => return None,
                    Held::Waiting(create) if held_out => return Some(create),
                    other => {
                        let waiting = matches!(other, Held::Waiting(_));
                        *held = other;
                        waiting
                    }
                }
            };
            if !waiting {
                // Carried: only its failure (or its answer) wakes this.
                self.go.notified().await;
                continue;
            }
            tokio::select! {
                _ = self.go.notified() => held_out = true,
                changed = kicks.changed(), if kicks_live => match changed {
                    Ok(()) => held_out = true,
                    Err(_) => kicks_live = false,
                },
                _ = &mut hold, if !held_out => held_out = true,
            }
        }
    }
}

/// Whether meta has an early create yet: the new file's side (`OpenFile`).
pub struct Landing(watch::Receiver<Option<Result<(), String>>>);

/// The sending side of a `Landing`: the task that sends the create.
pub struct Lander(watch::Sender<Option<Result<(), String>>>);

/// A pair for one early create.
pub fn landing() -> (Lander, Landing) {
    let (tx, rx) = watch::channel(None);
    (Lander(tx), Landing(rx))
}

impl Lander {
    /// Meta answered: `Err` carries why the create failed.
    pub fn landed(self, outcome: Result<(), String>) {
        let _ = self.0.send(Some(outcome));
    }
}

impl Landing {
    /// Waits until meta has the create; Err (EIO) if it refused it.
    pub async fn wait(&mut self) -> FsResult<()> {
        let failed = |why: &str| {
            FsError::new(
                libc::EIO,
                format!("the file's create, answered early, failed on meta: {why}"),
            )
        };
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => match outcome.as_ref() {
                Some(Ok(())) => Ok(()),
                Some(Err(why)) => Err(failed(why)),
                None => Err(failed("no outcome")),
            },
            // The sender went away without an outcome.
            Err(_) => Err(failed("the call was dropped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn enabled() -> Deferred {
        Deferred::new(true, true)
    }

    #[test]
    fn early_only_in_directories_meta_said_are_private() {
        let d = Deferred::new(true, true);
        let now = Instant::now();
        assert!(!d.unlink_allowed(7), "meta said nothing of 7 yet");
        d.learned(7, 1, now);
        assert!(d.unlink_allowed(7));
        assert!(d.create_allowed(7), "creates too");
        assert!(!d.unlink_allowed(8), "only the directory meta spoke of");
        d.learned(7, 0, now);
        assert!(
            !d.unlink_allowed(7),
            "no grant: another client looks at 7 now"
        );
        assert!(!d.create_allowed(7));
        let old = now - PRIVATE_FOR;
        d.learned(7, 2, old);
        assert!(!d.create_allowed(7), "counted from when the call was sent");
        let off = Deferred::new(false, true);
        off.learned(7, 1, now);
        assert!(!off.unlink_allowed(7), "sync_unlink");
        assert!(off.create_allowed(7), "creates are still early");
        let off = Deferred::new(true, false);
        off.learned(7, 1, now);
        assert!(off.unlink_allowed(7));
        assert!(!off.create_allowed(7), "sync_create");
    }

    #[test]
    fn a_recall_ends_the_grant_and_every_older_one_still_on_its_way() {
        let d = Deferred::new(true, true);
        let now = Instant::now();
        d.learned(7, 5, now);
        d.learned(8, 5, now);
        d.recall(7, 5);
        assert!(!d.create_allowed(7) && !d.unlink_allowed(7));
        assert!(d.create_allowed(8), "only the directory recalled");
        d.learned(7, 4, now);
        d.learned(7, 5, now);
        assert!(
            !d.create_allowed(7),
            "replies the recall overtook count for nothing"
        );
        d.learned(7, 6, now);
        assert!(d.create_allowed(7), "a grant made after the recall");
        d.learned(7, 3, now);
        assert!(
            d.create_allowed(7),
            "an older reply does not end a newer grant"
        );
        d.recall(9, 2);
        d.learned(9, 1, now);
        assert!(
            !d.create_allowed(9),
            "a recall may come before the grant it ends"
        );
        d.forget_grants();
        assert!(
            !d.create_allowed(7) && !d.create_allowed(8),
            "the stream broke"
        );
    }

    #[tokio::test]
    async fn settled_waits_for_every_unlink_in_flight() {
        let d = Arc::new(enabled());
        let a = d.begin(5, 1, b"n5").await;
        let b = d.begin(6, 1, b"n6").await;
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
        let first = d.begin(5, 1, b"n5").await;
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.settled().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = {
            let d = d.clone();
            tokio::spawn(async move { d.begin(6, 1, b"n6").await })
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
            held.push(d.begin(ino, 1, &ino.to_be_bytes()).await);
        }
        let next = {
            let d = d.clone();
            tokio::spawn(async move { d.begin(999, 1, b"n999").await })
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
        let a = d.begin(5, 1, b"n5").await;
        tokio::time::timeout(Duration::from_millis(200), d.settled_ino(6))
            .await
            .expect("another inode does not wait");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.settled_ino(5).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the unlink of 5 is in flight");
        let other = tokio::time::timeout(Duration::from_millis(200), d.begin(7, 1, b"n7"))
            .await
            .expect("other calls begin while it waits");
        drop(other);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "another call's answer is not 5's");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled")
            .expect("waiter");
    }

    #[tokio::test]
    async fn disabled_never_waits() {
        let d = Deferred::new(false, false);
        tokio::time::timeout(Duration::from_millis(200), d.settled())
            .await
            .expect("nothing to wait for");
    }

    #[tokio::test]
    async fn a_name_or_inode_in_flight_is_busy() {
        let d = enabled();
        let a = d.begin(5, 1, b"a").await;
        assert!(d.busy(5, 9, b"x"), "the inode");
        assert!(d.busy(6, 1, b"a"), "the name");
        assert!(!d.busy(6, 1, b"b"));
        assert!(!d.busy(6, 2, b"a"), "the same name in another directory");
        let again = d.begin(7, 1, b"a").await;
        drop(a);
        assert!(d.busy(7, 1, b"a"), "counted: a second call holds the name");
        assert!(!d.busy(5, 9, b"x"));
        drop(again);
        assert!(!d.busy(7, 1, b"a"));
    }

    #[tokio::test]
    async fn a_landing_tells_the_outcome_to_every_wait() {
        let (lander, mut landing) = super::landing();
        let waiter = tokio::spawn(async move { landing.wait().await.map_err(|e| e.errno()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "meta has not answered");
        lander.landed(Ok(()));
        assert_eq!(waiter.await.expect("waiter"), Ok(()));

        let (lander, mut landing) = super::landing();
        lander.landed(Err("exists".into()));
        assert_eq!(landing.wait().await.map_err(|e| e.errno()), Err(libc::EIO));
        assert_eq!(
            landing.wait().await.map_err(|e| e.errno()),
            Err(libc::EIO),
            "and again"
        );

        let (lander, mut landing) = super::landing();
        drop(lander);
        assert_eq!(
            landing.wait().await.map_err(|e| e.errno()),
            Err(libc::EIO),
            "a sender gone without a word is a failure"
        );
    }
}
