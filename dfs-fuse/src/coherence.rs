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
//!
//! Meta answers the change's caller only once this mount said it applied the
//! invalidation (`Applied`): its own cache at once, the kernel's through the
//! notifier thread. An entry invalidation takes its directory's lock, which
//! a request of this mount may hold while meta waits on another mount that
//! waits on this one; so after `KERNEL_WAIT` the mount makes every cached
//! entry stale instead (FUSE_NOTIFY_INC_EPOCH, no lock), invalidates the
//! attributes itself (no lock either), and says it applied the change.

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
/// Entries and inodes remembered as handed to the kernel; past this (after
/// dropping the expired ones) replies get no TTL.
const MAX_GIVEN: usize = 256 * 1024;
/// Files remembered as changed by another client (`stale_maps`).
const STALE_MAPS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(64 * 1024) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
/// How long a directory counts as shared after another client changed it.
const SHARED_FOR: Duration = Duration::from_secs(5);

/// How long an invalidation may wait for the notifier thread before the
/// mount gets its effect without it (see the module's doc).
const KERNEL_WAIT: Duration = Duration::from_millis(2);

/// What the notifier thread tells the kernel.
enum Work {
    Entry(u64, Vec<u8>),
    Inode {
        ino: u64,
        data: bool,
    },
    /// Everything queued before is told: invalidations up to this `seq` hold.
    Applied(u64),
}

/// What the kernel may hold, and until when. An invalidation of an entry
/// recorded here (and not expired) must reach the kernel; one not recorded
/// has nothing there to remove, so it costs no directory lock.
#[derive(Default)]
struct Given {
    entries: HashMap<(u64, Vec<u8>), Instant>,
    inodes: HashMap<u64, Instant>,
    /// Directories another client changed lately, until when: their
    /// entries go to the kernel with no TTL (the kernel asks each time, the
    /// mount answers from its own cache), so invalidating them needs no
    /// directory lock.
    shared: HashMap<u64, Instant>,
}

impl Given {
    fn len(&self) -> usize {
        self.entries.len() + self.inodes.len() + self.shared.len()
    }

    fn drop_expired(&mut self, now: Instant) {
        self.entries.retain(|_, until| *until > now);
        self.inodes.retain(|_, until| *until > now);
        self.shared.retain(|_, until| *until > now);
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
    /// The last `seq` the notifier thread got through.
    kernel_done: tokio::sync::watch::Sender<u64>,
    /// Files whose content another client changed lately: a read through a
    /// handle open here reads the new chunk map first. Bounded: a file that
    /// falls out reads the old map until its chunks are gone, as before.
    stale_maps: Mutex<lru::LruCache<u64, ()>>,
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
            kernel_done: tokio::sync::watch::Sender::new(0),
            stale_maps: Mutex::new(lru::LruCache::new(STALE_MAPS)),
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

    /// Every entry of `dir`, if the mount knows them all (`MetaCache::listing`).
    pub fn known_listing(&self, dir: u64) -> Option<Vec<pb::DirEntry>> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let listed = self.cache().listing(dir)?;
        Some(
            listed
                .into_iter()
                .map(|(name, attr)| pb::DirEntry {
                    name,
                    attr: Some(attr),
                })
                .collect(),
        )
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

    /// Meta gave a file's chunk map (and its attributes).
    pub fn learned_map(&self, ticket: Ticket, map: &pb::GetChunksReply) {
        let Some(ino) = map.attr.as_ref().map(|a| a.ino) else {
            return;
        };
        self.learn(ticket, |c| c.put_map(map), |c| c.forget_attr(ino));
    }

    /// The chunk map of `ino` as meta last gave it, if nothing has changed
    /// the file since (see `metacache.rs`).
    pub fn known_map(&self, ino: u64) -> Option<(Arc<pb::GetChunksReply>, pb::Attr)> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        self.cache().map(ino)
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
        // Nothing is cached yet: a probe of whether the kernel has epochs.
        if let Err(e) = notifier.inc_epoch() {
            tracing::info!(error = %e, "the kernel cannot make every entry stale at once (before Linux 6.16): an entry invalidation stuck behind a directory lock is applied late");
        }
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
        let (result, kind) = match work {
            Work::Entry(parent, name) => (
                notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name)),
                "entry",
            ),
            Work::Inode { ino, data } => (
                notifier.inval_inode(INodeNo(ino), if data { 0 } else { -1 }, 0),
                "inode",
            ),
            Work::Applied(seq) => {
                self.kernel_done.send_replace(seq);
                return;
            }
        };
        self.metrics.invalidations.with_label_values(&[kind]).inc();
        note_failure(result, kind);
    }

    fn queue(&self, work: Work) {
        if let Some(tx) = &*self.work.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(work);
        }
    }

    /// Returns once the invalidations up to `seq` hold in the kernel:
    /// `inodes` are every inode they named not yet known to be told (and
    /// whether their pages too). Waits `KERNEL_WAIT` for the notifier
    /// thread; past that, makes every cached entry stale and invalidates
    /// the attributes itself, neither of which waits for a lock (the thread
    /// still does its work, later), and the pages (which waits at most for
    /// a read in flight on them).
    async fn in_kernel(&self, seq: u64, inodes: &[(u64, bool)]) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        let mut done = self.kernel_done.subscribe();
        if tokio::time::timeout(KERNEL_WAIT, done.wait_for(|d| *d >= seq))
            .await
            .is_ok()
        {
            return;
        }
        self.metrics
            .invalidations
            .with_label_values(&["epoch"])
            .inc();
        if let Err(e) = notifier.inc_epoch() {
            tracing::debug!(error = %e, "cannot make the kernel's entries stale");
        }
        let mut pages = Vec::new();
        for &(ino, data) in inodes {
            if data {
                pages.push(ino);
            } else {
                note_failure(notifier.inval_inode(INodeNo(ino), -1, 0), "inode");
            }
        }
        if !pages.is_empty() {
            let notifier = notifier.clone();
            let dropped = tokio::task::spawn_blocking(move || {
                for ino in pages {
                    let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                }
            });
            let _ = dropped.await;
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket {
            remote: self.epoch.load(Ordering::SeqCst),
            local: self.local_epoch.load(Ordering::SeqCst),
            own: false,
        }
    }

    /// The TTL a reply to a request that took `ticket` may carry, recorded
    /// under `record` with its deadline: the long one under live
    /// invalidations; none if an invalidation came in between (the reply
    /// may carry what it removed) or, for an entry, if another client
    /// changed its directory lately; the short one (all a mount without
    /// invalidations can promise) while they are not live.
    fn ttl_for(
        &self,
        ticket: Ticket,
        dir: Option<u64>,
        record: impl FnOnce(&mut Given, Instant),
    ) -> Duration {
        let live = self.live.load(Ordering::SeqCst);
        let mut given = self.given();
        let now = Instant::now();
        let ttl = if !live {
            SHORT_TTL
        } else if self.epoch.load(Ordering::SeqCst) != ticket.remote
            || dir.is_some_and(|d| given.shared.get(&d).is_some_and(|until| *until > now))
        {
            return Duration::ZERO;
        } else {
            self.long_ttl
        };
        if given.len() >= MAX_GIVEN {
            given.drop_expired(now);
            if given.len() >= MAX_GIVEN {
                // Not recorded, an invalidation would miss it.
                return if live { Duration::ZERO } else { SHORT_TTL };
            }
        }
        record(&mut given, now + ttl);
        ttl
    }

    /// The TTL of an entry `name` in `parent` naming `ino` (0: a negative
    /// entry), with the attributes of `ino`.
    pub fn entry_ttl(&self, ticket: Ticket, parent: u64, name: &[u8], ino: u64) -> Duration {
        self.ttl_for(ticket, Some(parent), |g, until| {
            g.entries.insert((parent, name.to_vec()), until);
            if ino != 0 {
                g.inodes.insert(ino, until);
            }
        })
    }

    /// The TTL of the attributes of `ino`.
    pub fn attr_ttl(&self, ticket: Ticket, ino: u64) -> Duration {
        self.ttl_for(ticket, None, |g, until| {
            g.inodes.insert(ino, until);
        })
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
            seq: 0,
        });
    }

    /// Whether another client changed `ino`'s content since the last call
    /// (and then forgets it).
    pub fn take_stale_map(&self, ino: u64) -> bool {
        let mut stale = self.stale_maps.lock().unwrap_or_else(|p| p.into_inner());
        !stale.is_empty() && stale.pop(&ino).is_some()
    }

    /// Applies a batch of changes from meta to the mount's cache at once, and
    /// queues them for the kernel; `in_kernel(changes.seq)` waits for that.
    /// Returns the inodes whose attributes the kernel must drop, and whether
    /// their cached pages too.
    fn apply(&self, changes: pb::Invalidations) -> Vec<(u64, bool)> {
        let seq = changes.seq;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        // Only entries the kernel may hold need its (locking) invalidation.
        let mut in_kernel = Vec::new();
        {
            let mut given = self.given();
            for e in &changes.entries {
                given.shared.insert(e.parent, now + SHARED_FOR);
                let key = (e.parent, e.name.clone());
                if given.entries.remove(&key).is_some_and(|until| until > now) {
                    in_kernel.push(key);
                }
            }
            for i in &changes.inodes {
                given.inodes.remove(&i.ino);
            }
        }
        {
            let mut stale = self.stale_maps.lock().unwrap_or_else(|p| p.into_inner());
            for i in changes.inodes.iter().filter(|i| i.data) {
                stale.put(i.ino, ());
            }
        }
        // A directory's names changed: its times and size did too.
        let mut attrs: Vec<u64> = changes.entries.iter().map(|e| e.parent).collect();
        attrs.extend(changes.inodes.iter().map(|i| i.ino));
        attrs.sort_unstable();
        attrs.dedup();
        {
            let mut cache = self.cache();
            for e in &changes.entries {
                cache.forget_entry(e.parent, &e.name);
            }
            for ino in &attrs {
                cache.forget_attr(*ino);
            }
        }
        for (parent, name) in in_kernel {
            self.queue(Work::Entry(parent, name));
        }
        let told: Vec<(u64, bool)> = attrs
            .into_iter()
            .map(|ino| (ino, changes.inodes.iter().any(|i| i.ino == ino && i.data)))
            .collect();
        for &(ino, data) in &told {
            self.queue(Work::Inode { ino, data });
        }
        if seq != 0 {
            self.queue(Work::Applied(seq));
        }
        told
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
        for ((parent, name), until) in given.entries {
            if until > now {
                self.queue(Work::Entry(parent, name));
            }
        }
        for (ino, until) in given.inodes {
            if until > now {
                self.queue(Work::Inode { ino, data: false });
            }
        }
    }
}

/// Logs a kernel notification that failed; ENOENT only says the kernel had
/// nothing cached there.
fn note_failure(result: std::io::Result<()>, kind: &str) {
    if let Err(e) = result {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::debug!(error = %e, kind, "kernel invalidation failed");
        }
    }
}

/// What the watch stream tells the rest of the mount besides invalidations.
pub enum StreamNews {
    /// Meta takes back a grant (`deferred.rs`).
    Recall(pb::Recall),
    /// The stream broke: recalls may be missed until it is back.
    Lost,
    /// A new stream is live: meta may have restarted and forgotten which
    /// files this mount has open.
    Live,
}

/// Keeps a watch stream open to meta for as long as the mount runs: applies
/// what it brings, and starts over (short TTLs meanwhile) when it breaks, when
/// the channel fails over to another meta, or when the session changes.
/// Recalls of grants, and the stream's starts and breaks, go to `news`.
pub async fn run_watch(
    channel: MetaChannel,
    coherence: Arc<Coherence>,
    news: tokio::sync::mpsc::UnboundedSender<StreamNews>,
) {
    let (applied, to_confirm) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(confirm_applied(
        channel.clone(),
        coherence.clone(),
        to_confirm,
    ));
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
                        let _ = news.send(StreamNews::Live);
                        backoff = Duration::from_millis(100);
                        tracing::debug!("invalidations live: long cache times on");
                    }
                    Ok(Some(mut m)) => {
                        for r in std::mem::take(&mut m.recalls) {
                            let _ = news.send(StreamNews::Recall(r));
                        }
                        let seq = m.seq;
                        let inodes = coherence.apply(m);
                        if seq != 0 {
                            let _ = applied.send((seq, inodes));
                        }
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
        let _ = news.send(StreamNews::Lost);
        coherence.set_live(false);
        tracing::debug!("invalidation stream ended: short cache times until it is back");
        tokio::time::sleep(backoff).await;
    }
}

/// Tells meta which invalidations hold here (`Applied`), as soon as they do;
/// several waiting at once are answered together.
async fn confirm_applied(
    channel: MetaChannel,
    coherence: Arc<Coherence>,
    mut to_confirm: tokio::sync::mpsc::UnboundedReceiver<(u64, Vec<(u64, bool)>)>,
) {
    while let Some((mut seq, mut inodes)) = to_confirm.recv().await {
        while let Ok((next, more)) = to_confirm.try_recv() {
            seq = next;
            inodes.extend(more);
        }
        coherence.in_kernel(seq, &inodes).await;
        if let Err(e) = channel.client().applied(pb::AppliedRequest { seq }).await {
            // Meta waits its time out and drops the stream, which starts over.
            tracing::debug!(error = %e, seq, "cannot tell meta an invalidation is applied");
        }
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
        assert_eq!(
            c.attr_ttl(t, 2),
            Duration::ZERO,
            "raced with an invalidation"
        );
        c.set_live(false);
        assert_eq!(c.attr_ttl(c.ticket(), 2), SHORT_TTL);
    }

    #[test]
    fn a_directory_another_client_changed_hands_out_entries_without_ttl() {
        let c = coherence();
        c.set_live(true);
        let long = Duration::from_secs(30);
        assert_eq!(c.entry_ttl(c.ticket(), 1, b"a", 2), long);
        // "b" was never handed to the kernel: nothing to take back there.
        let attrs = c.apply(pb::Invalidations {
            entries: vec![pb::EntryChange {
                parent: 1,
                name: b"b".to_vec(),
            }],
            seq: 4,
            ..Default::default()
        });
        assert_eq!(
            attrs,
            vec![(1, false)],
            "the directory's own attributes changed"
        );
        assert!(c.given().entries.contains_key(&(1, b"a".to_vec())));
        assert_eq!(c.entry_ttl(c.ticket(), 1, b"c", 3), Duration::ZERO);
        assert_eq!(c.entry_ttl(c.ticket(), 1, b"c", 0), Duration::ZERO);
        assert_eq!(
            c.entry_ttl(c.ticket(), 5, b"x", 6),
            long,
            "another directory"
        );
        // "a" was: its invalidation goes to the kernel, and it is forgotten.
        c.apply(pb::Invalidations {
            entries: vec![pb::EntryChange {
                parent: 1,
                name: b"a".to_vec(),
            }],
            ..Default::default()
        });
        assert!(!c.given().entries.contains_key(&(1, b"a".to_vec())));
    }

    #[test]
    fn a_content_change_makes_the_next_read_take_a_fresh_map_once() {
        let c = coherence();
        c.set_live(true);
        let told = c.apply(pb::Invalidations {
            inodes: vec![
                pb::InodeChange { ino: 7, data: true },
                pb::InodeChange {
                    ino: 8,
                    data: false,
                },
            ],
            ..Default::default()
        });
        assert_eq!(told, vec![(7, true), (8, false)]);
        assert!(c.take_stale_map(7));
        assert!(!c.take_stale_map(7), "once");
        assert!(!c.take_stale_map(8), "only its attributes changed");
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
