//! How long the kernel may cache entries and attributes, and the invalidations
//! that make a long time safe.
//!
//! While this mount's watch stream to meta is live (see meta's `watch.rs`),
//! meta pushes every change another client commits to something this mount
//! was given; the change is passed on to the kernel (`inval_entry`,
//! `inval_inode`), so entries and attributes may stay cached for
//! `cache_timeout` instead of 1 s. Whenever the stream is not live (meta
//! down, failover, a new session), replies carry the short TTL, and once a
//! stream is live again everything handed out with the long TTL before is
//! invalidated, since changes meanwhile went unseen.
//!
//! A reply whose request overlapped an invalidation gets the short TTL: it may
//! carry what the invalidation was meant to remove.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dfs_client::meta::MetaChannel;
use dfs_proto::pb;
use fuser::INodeNo;

use crate::metacache::{Known, MetaCache};
use crate::metrics::FuseMetrics;

/// What the kernel may cache when no invalidation would reach it.
pub const SHORT_TTL: Duration = Duration::from_secs(1);
/// Entries and inodes remembered as handed out with the long TTL; past this
/// (after dropping the expired ones) replies get the short TTL.
const MAX_GIVEN: usize = 256 * 1024;

/// What the notifier thread tells the kernel.
enum Work {
    Entry(u64, Vec<u8>),
    Inode { ino: u64, data: bool },
}

#[derive(Default)]
struct Given {
    entries: HashMap<(u64, Vec<u8>), Instant>,
    inodes: HashMap<u64, Instant>,
}

impl Given {
    fn len(&self) -> usize {
        self.entries.len() + self.inodes.len()
    }

    fn drop_expired(&mut self, ttl: Duration) {
        self.entries.retain(|_, t| t.elapsed() < ttl);
        self.inodes.retain(|_, t| t.elapsed() < ttl);
    }
}

/// Taken before a request goes to meta; says at reply time whether an
/// invalidation (or, for a read, a change by this mount) came in between.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    remote: u64,
    local: u64,
    /// The reply is to this mount's own change: its results hold whatever
    /// else this mount did meanwhile (meta ordered them).
    own: bool,
}

impl Ticket {
    /// The same ticket, for a request that changes something.
    pub fn own(self) -> Ticket {
        Ticket { own: true, ..self }
    }
}

pub struct Coherence {
    long_ttl: Duration,
    live: AtomicBool,
    /// Bumped before each invalidation is applied and at each change of
    /// `live`.
    epoch: AtomicU64,
    /// Bumped after each change this mount made.
    local_epoch: AtomicU64,
    given: Mutex<Given>,
    /// Entries and attributes the mount answers itself (see `metacache.rs`).
    cache: Mutex<MetaCache>,
    work: Mutex<Option<mpsc::Sender<Work>>>,
    notifier: OnceLock<fuser::Notifier>,
    metrics: Arc<FuseMetrics>,
}

impl Coherence {
    pub fn new(cache_timeout: Duration, metrics: Arc<FuseMetrics>) -> Coherence {
        Coherence {
            long_ttl: cache_timeout.max(SHORT_TTL),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            local_epoch: AtomicU64::new(0),
            given: Mutex::new(Given::default()),
            cache: Mutex::new(MetaCache::new(cache_timeout.max(SHORT_TTL))),
            work: Mutex::new(None),
            notifier: OnceLock::new(),
            metrics,
        }
    }

    fn given(&self) -> std::sync::MutexGuard<'_, Given> {
        self.given.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, MetaCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the mount knows of `name` in `parent` without asking meta.
    pub fn known(&self, parent: u64, name: &[u8]) -> Option<Known> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        self.cache().lookup(parent, name)
    }

    pub fn known_attr(&self, ino: u64) -> Option<pb::Attr> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        self.cache().attr(ino)
    }

    pub fn known_ino(&self, parent: u64, name: &[u8]) -> Option<u64> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        self.cache().ino_of(parent, name)
    }

    /// Runs `learn` on the cache if nothing was invalidated since `ticket`
    /// was taken (and invalidations are live), else `forget`.
    fn learn(
        &self,
        ticket: Ticket,
        learn: impl FnOnce(&mut MetaCache),
        forget: impl FnOnce(&mut MetaCache),
    ) {
        let mut cache = self.cache();
        if self.live.load(Ordering::SeqCst)
            && self.epoch.load(Ordering::SeqCst) == ticket.remote
            && (ticket.own || self.local_epoch.load(Ordering::SeqCst) == ticket.local)
        {
            learn(&mut cache);
        } else {
            forget(&mut cache);
        }
    }

    /// Meta said `name` in `parent` names `attr` (None: nothing).
    pub fn learned_entry(&self, ticket: Ticket, parent: u64, name: &[u8], attr: Option<&pb::Attr>) {
        self.learn(
            ticket,
            |c| c.put_entry(parent, name, attr),
            |c| c.forget_entry(parent, name),
        );
    }

    /// `name` in `parent` names something now, its inode not known here.
    pub fn learned_unknown_entry(&self, ticket: Ticket, parent: u64, name: &[u8]) {
        self.learn(
            ticket,
            |c| c.put_unknown_entry(parent, name),
            |c| c.forget_entry(parent, name),
        );
    }

    pub fn learned_attr(&self, ticket: Ticket, attr: &pb::Attr) {
        self.learn(ticket, |c| c.put_attr(attr), |c| c.forget_attr(attr.ino));
    }

    /// `dir` holds exactly `names`.
    pub fn learned_listing(&self, ticket: Ticket, dir: u64, names: HashSet<Vec<u8>>) {
        self.learn(
            ticket,
            |c| c.put_complete(dir, names),
            |c| c.forget_inode(dir),
        );
    }

    /// This mount changed something on meta: replies to requests already in
    /// flight may predate the change, so they must not be cached. Call once
    /// the change's own results are learned.
    pub fn mutated(&self) {
        self.local_epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn forget_entry(&self, parent: u64, name: &[u8]) {
        self.cache().forget_entry(parent, name);
    }

    /// This mount changed `dir`'s names at `at` and answered before meta did:
    /// its cached attributes (if any) take the change's times, until meta's
    /// reply replaces them.
    pub fn touched_dir(&self, dir: u64, at: pb::Timespec) {
        self.cache().touch(dir, at);
    }

    pub fn forget_attr(&self, ino: u64) {
        self.cache().forget_attr(ino);
    }

    pub fn forget_inode(&self, ino: u64) {
        self.cache().forget_inode(ino);
    }

    /// Starts passing invalidations to the kernel through `notifier`, on a
    /// thread of their own: a notification may wait for a directory lock
    /// that a request in flight holds, and must not hold up the runtime.
    pub fn attach(self: &Arc<Self>, notifier: fuser::Notifier) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Work>();
        let _ = self.notifier.set(notifier);
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("dfs-invalidate".into())
            .spawn(move || {
                while let Ok(work) = rx.recv() {
                    let Some(me) = me.upgrade() else { return };
                    me.tell_kernel(work);
                }
            })?;
        *self.work.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    fn tell_kernel(&self, work: Work) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        // ENOENT: the kernel had nothing cached there; nothing to do.
        let result = match &work {
            Work::Entry(parent, name) => {
                notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name))
            }
            Work::Inode { ino, data } => {
                notifier.inval_inode(INodeNo(*ino), if *data { 0 } else { -1 }, 0)
            }
        };
        let kind = match work {
            Work::Entry(..) => "entry",
            Work::Inode { .. } => "inode",
        };
        self.metrics.invalidations.with_label_values(&[kind]).inc();
        if let Err(e) = result {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(error = %e, kind, "kernel invalidation failed");
            }
        }
    }

    fn queue(&self, work: Work) {
        if let Some(tx) = &*self.work.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(work);
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket {
            remote: self.epoch.load(Ordering::SeqCst),
            local: self.local_epoch.load(Ordering::SeqCst),
            own: false,
        }
    }

    /// Whether a reply to a request that took `ticket` may carry the long TTL
    /// (and is then remembered under `record`).
    fn long_ok(&self, ticket: Ticket, record: impl FnOnce(&mut Given, Instant)) -> bool {
        if !self.live.load(Ordering::SeqCst) {
            return false;
        }
        let mut given = self.given();
        // The kernel orders this mount's own operations itself.
        if self.epoch.load(Ordering::SeqCst) != ticket.remote {
            return false;
        }
        if given.len() >= MAX_GIVEN {
            given.drop_expired(self.long_ttl);
            if given.len() >= MAX_GIVEN {
                return false;
            }
        }
        record(&mut given, Instant::now());
        true
    }

    /// The TTL of an entry `name` in `parent` naming `ino` (0: a negative
    /// entry), with the attributes of `ino`.
    pub fn entry_ttl(&self, ticket: Ticket, parent: u64, name: &[u8], ino: u64) -> Duration {
        let long = self.long_ok(ticket, |g, now| {
            g.entries.insert((parent, name.to_vec()), now);
            if ino != 0 {
                g.inodes.insert(ino, now);
            }
        });
        if long {
            self.long_ttl
        } else {
            SHORT_TTL
        }
    }

    /// The TTL of the attributes of `ino`.
    pub fn attr_ttl(&self, ticket: Ticket, ino: u64) -> Duration {
        if self.long_ok(ticket, |g, now| {
            g.inodes.insert(ino, now);
        }) {
            self.long_ttl
        } else {
            SHORT_TTL
        }
    }

    /// How long an entry or attribute may be cached under invalidations.
    pub fn cache_timeout(&self) -> Duration {
        self.long_ttl
    }

    /// Whether negative entries may be cached (only under invalidations).
    pub fn caches_misses(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// This mount learned that the kernel's attributes of `ino` are stale
    /// (its own append landed past the kernel's size, a commit merged bytes
    /// of another mount).
    pub fn attrs_stale(&self, ino: u64) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache().forget_attr(ino);
        self.queue(Work::Inode { ino, data: false });
    }

    /// A change this mount answered early did not happen on meta (a create
    /// it refused): the cache and the kernel forget `name` in `parent` and
    /// the attributes of both inodes, as if meta had said they changed.
    pub fn answered_wrongly(&self, parent: u64, name: &[u8], ino: u64) {
        let inode = |ino| pb::InodeChange { ino, data: false };
        self.apply(pb::Invalidations {
            hello: false,
            entries: vec![pb::EntryChange {
                parent,
                name: name.to_vec(),
            }],
            inodes: vec![inode(ino), inode(parent)],
            recalls: Vec::new(),
        });
    }

    /// Applies a batch of changes from meta.
    fn apply(&self, changes: pb::Invalidations) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let mut given = self.given();
            for e in &changes.entries {
                given.entries.remove(&(e.parent, e.name.clone()));
            }
            for i in &changes.inodes {
                given.inodes.remove(&i.ino);
            }
        }
        {
            let mut cache = self.cache();
            for e in &changes.entries {
                // The directory's mtime and ctime moved too.
                cache.forget_entry(e.parent, &e.name);
                cache.forget_attr(e.parent);
            }
            for i in &changes.inodes {
                cache.forget_attr(i.ino);
            }
        }
        for e in changes.entries {
            self.queue(Work::Entry(e.parent, e.name));
        }
        for i in changes.inodes {
            self.queue(Work::Inode {
                ino: i.ino,
                data: i.data,
            });
        }
    }

    fn set_live(&self, live: bool) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.live.store(live, Ordering::SeqCst);
        if !live {
            self.cache().clear();
        }
        self.metrics.watch_live.set(i64::from(live));
    }

    /// Invalidates everything handed out with the long TTL: changes made
    /// while no stream was live went unseen.
    fn resync(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache().clear();
        let given = std::mem::take(&mut *self.given());
        let now = Instant::now();
        for ((parent, name), t) in given.entries {
            if now.duration_since(t) < self.long_ttl {
                self.queue(Work::Entry(parent, name));
            }
        }
        for (ino, t) in given.inodes {
            if now.duration_since(t) < self.long_ttl {
                self.queue(Work::Inode { ino, data: false });
            }
        }
    }
}

/// What the watch stream tells the rest of the mount besides invalidations.
pub enum GrantNews {
    /// Meta takes back a grant (`deferred.rs`).
    Recall(pb::Recall),
    /// The stream broke: recalls may be missed until it is back.
    Lost,
}

/// Keeps a watch stream open to meta for as long as the mount runs: applies
/// what it brings, and starts over (short TTLs meanwhile) when it breaks, when
/// the channel fails over to another meta, or when the session changes.
/// Recalls of grants, and the stream's breaks, go to `grants`.
pub async fn run_watch(
    channel: MetaChannel,
    coherence: Arc<Coherence>,
    grants: tokio::sync::mpsc::UnboundedSender<GrantNews>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let identity = channel.identity();
        if identity.1 == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let stream = channel.client().watch(pb::WatchRequest {}).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch for invalidations; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(m)) if m.hello => {
                        coherence.resync();
                        coherence.set_live(true);
                        backoff = Duration::from_millis(100);
                        tracing::debug!("invalidations live: long cache times on");
                    }
                    Ok(Some(mut m)) => {
                        for r in std::mem::take(&mut m.recalls) {
                            let _ = grants.send(GrantNews::Recall(r));
                        }
                        coherence.apply(m);
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = check.tick() => {
                    if channel.identity() != identity {
                        break;
                    }
                }
            }
        }
        let _ = grants.send(GrantNews::Lost);
        coherence.set_live(false);
        tracing::debug!("invalidation stream ended: short cache times until it is back");
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coherence() -> Coherence {
        Coherence::new(Duration::from_secs(30), Arc::new(FuseMetrics::new()))
    }

    #[test]
    fn long_ttl_only_while_live_and_without_an_invalidation_in_between() {
        let c = coherence();
        let t = c.ticket();
        assert_eq!(c.entry_ttl(t, 1, b"a", 2), SHORT_TTL, "not live yet");
        c.set_live(true);
        let t = c.ticket();
        assert_eq!(c.entry_ttl(t, 1, b"a", 2), Duration::from_secs(30));
        assert_eq!(c.attr_ttl(t, 2), Duration::from_secs(30));
        let t = c.ticket();
        c.apply(pb::Invalidations {
            inodes: vec![pb::InodeChange {
                ino: 9,
                data: false,
            }],
            ..Default::default()
        });
        assert_eq!(c.attr_ttl(t, 2), SHORT_TTL, "raced with an invalidation");
        c.set_live(false);
        assert_eq!(c.attr_ttl(c.ticket(), 2), SHORT_TTL);
    }

    #[test]
    fn applied_and_resynced_entries_are_forgotten() {
        let c = coherence();
        c.set_live(true);
        c.entry_ttl(c.ticket(), 1, b"a", 2);
        c.entry_ttl(c.ticket(), 1, b"b", 3);
        c.apply(pb::Invalidations {
            entries: vec![pb::EntryChange {
                parent: 1,
                name: b"a".to_vec(),
            }],
            ..Default::default()
        });
        assert_eq!(c.given().entries.len(), 1);
        c.resync();
        assert_eq!(c.given().len(), 0);
    }
}
