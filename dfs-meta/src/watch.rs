//! Cache invalidations (the Watch RPC). Meta remembers, per watching session,
//! which inodes it handed that session (lookups, attributes, listings), and
//! pushes each committed change to the sessions that may cache what changed;
//! the session that made the change is not told (its kernel already knows).
//! With these, a mount may let the kernel keep entries and attributes far
//! longer than the 1 s it could trust without them.
//!
//! A change's caller is answered only once every watcher of this meta that
//! was told of it says it is applied (`Applied`: its own cache and its
//! kernel's dropped what the change named), so a program that changes
//! something through one mount and then looks through another sees the
//! change. A watcher that does not say so within `CONFIRM_WAIT` (stopped,
//! cut off) is dropped: it drops its caches when it notices.
//!
//! Several metas on one PostgreSQL pass their changes to each other with
//! NOTIFY (`pg_bridge`); the watchers of the other metas are not waited
//! for. Whenever a meta may have missed changes (its listening connection
//! broke, a queue overflowed), it ends the streams of its
//! watchers: each client then drops everything it cached and watches again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dfs_common::shutdown::Shutdown;

use crate::grants::{Grants, Recall, Wait};
use crate::hex::{hex_decode, hex_encode};
use crate::presence::Presence;
use crate::store::JOIN_CHANNEL;
use dfs_proto::{pb, ROOT_INO};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::metrics::MetaMetrics;

/// Messages a watcher may have queued before it counts as too slow (its
/// stream ends and it starts over).
const WATCHER_QUEUE: usize = 4096;
/// Inodes remembered per session; past this, every change goes to it.
const MAX_INTEREST: usize = 1 << 20;
/// Changes waiting to go to the other metas.
const FORWARD_QUEUE: usize = 16 * 1024;
/// The PostgreSQL NOTIFY channel the metas share.
const PG_CHANNEL: &str = "dfs_invalidations";
/// NOTIFY payloads must stay under 8000 bytes; changes are split to fit.
const NOTICE_CHANGES: usize = 12;

/// How long a change's caller waits for a watcher to apply it before the
/// watcher is dropped. A live mount answers within milliseconds even when
/// its kernel is busy (see the mount's `coherence.rs`).
const CONFIRM_WAIT: Duration = Duration::from_secs(1);

/// One committed change that other sessions may have cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A name in `parent` appeared, went or now names another inode.
    Entry { parent: u64, name: Vec<u8> },
    /// An inode's attributes changed; with `data`, its contents too.
    Inode { ino: u64, data: bool },
}

impl Change {
    pub fn entry(parent: u64, name: &[u8]) -> Change {
        Change::Entry {
            parent,
            name: name.to_vec(),
        }
    }

    pub fn attrs(ino: u64) -> Change {
        Change::Inode { ino, data: false }
    }

    pub fn data(ino: u64) -> Change {
        Change::Inode { ino, data: true }
    }
}

fn to_pb(changes: &[Change]) -> pb::Invalidations {
    let mut out = pb::Invalidations::default();
    for c in changes {
        match c {
            Change::Entry { parent, name } => out.entries.push(pb::EntryChange {
                parent: *parent,
                name: name.clone(),
            }),
            Change::Inode { ino, data } => out.inodes.push(pb::InodeChange {
                ino: *ino,
                data: *data,
            }),
        }
    }
    out
}

fn from_pb(changes: pb::Invalidations) -> Vec<Change> {
    let entries = changes.entries.into_iter().map(|e| Change::Entry {
        parent: e.parent,
        name: e.name,
    });
    let inodes = changes.inodes.into_iter().map(|i| Change::Inode {
        ino: i.ino,
        data: i.data,
    });
    entries.chain(inodes).collect()
}

struct Watcher {
    /// Tells a replaced registration from the current one.
    registration: u64,
    tx: mpsc::Sender<Result<pb::Invalidations, Status>>,
    interest: HashSet<u64>,
    /// The interest set grew too large: every change goes out.
    everything: bool,
    /// The real inode this session sees as inode 1 (an exported subtree's
    /// root; ROOT_INO for the whole tree).
    root: u64,
    /// The last `seq` the session said it applied.
    applied: tokio::sync::watch::Sender<u64>,
    /// The last `seq` sent on this stream: an answer past it is not about
    /// this stream (one another meta sent, before a failover).
    sent: u64,
}

impl Watcher {
    /// A change as this session names it (its root is inode 1).
    fn as_seen(&self, change: &Change) -> Change {
        let seen = |ino: u64| if ino == self.root { ROOT_INO } else { ino };
        match change {
            Change::Entry { parent, name } => Change::Entry {
                parent: seen(*parent),
                name: name.clone(),
            },
            Change::Inode { ino, data } => Change::Inode {
                ino: seen(*ino),
                data: *data,
            },
        }
    }

    fn cares(&self, change: &Change) -> bool {
        self.everything
            || match change {
                Change::Entry { parent, .. } => self.interest.contains(parent),
                Change::Inode { ino, .. } => self.interest.contains(ino),
            }
    }
}

/// The watching sessions on this meta and what each may cache.
pub struct Watchers {
    /// Tells this meta's notices from the others' on the shared channel.
    meta_id: u64,
    watchers: Mutex<HashMap<u64, Watcher>>,
    /// Directories granted to one session (see `grants.rs`). Locked after
    /// `watchers` when both are (`grant`).
    grants: Mutex<Grants>,
    next_registration: AtomicU64,
    /// The `seq` of the last invalidation sent, to any watcher. Starts at
    /// a random point, so that another meta's numbers (an answer that
    /// crossed a failover) are not this one's.
    last_seq: AtomicU64,
    /// False while changes from other metas may be missed: new watchers get
    /// their hello only once it is true again.
    ready: tokio::sync::watch::Sender<bool>,
    forward: Option<mpsc::Sender<pb::InvalidationNotice>>,
    /// Whether this meta is alone on its store (may grant), and serves.
    presence: std::sync::Arc<Presence>,
    /// A notice could not be queued for the other metas.
    forward_lost: AtomicBool,
    metrics: std::sync::Arc<MetaMetrics>,
}

impl Watchers {
    /// Watchers for a meta alone on its store (SQLite): nothing to bridge.
    pub fn local(metrics: std::sync::Arc<MetaMetrics>) -> Watchers {
        Watchers::new(None, std::sync::Arc::new(Presence::local()), true, metrics)
    }

    fn new(
        forward: Option<mpsc::Sender<pb::InvalidationNotice>>,
        presence: std::sync::Arc<Presence>,
        ready: bool,
        metrics: std::sync::Arc<MetaMetrics>,
    ) -> Watchers {
        Watchers {
            meta_id: rand::random::<u64>() | 1,
            watchers: Mutex::new(HashMap::new()),
            grants: Mutex::new(Grants::default()),
            next_registration: AtomicU64::new(1),
            last_seq: AtomicU64::new(rand::random::<u64>() >> 2),
            ready: tokio::sync::watch::Sender::new(ready),
            forward,
            presence,
            forward_lost: AtomicBool::new(false),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watcher>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_changed(&self, watchers: &HashMap<u64, Watcher>) {
        self.metrics.watchers.set(watchers.len() as i64);
    }

    /// Starts (or restarts) `session`'s stream. Its first message, once this
    /// meta hears every other meta's changes, is the hello.
    pub fn register(
        &self,
        session: u64,
        root: u64,
    ) -> ReceiverStream<Result<pb::Invalidations, Status>> {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        {
            let mut watchers = self.lock();
            watchers.insert(
                session,
                Watcher {
                    registration,
                    tx: tx.clone(),
                    interest: HashSet::new(),
                    everything: false,
                    root,
                    applied: tokio::sync::watch::Sender::new(0),
                    sent: 0,
                },
            );
            self.count_changed(&watchers);
        }
        let mut ready = self.ready.subscribe();
        // Weak: a stream this meta ends (or drops) must not stay open here.
        let tx = tx.downgrade();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                let hello = pb::Invalidations {
                    hello: true,
                    ..Default::default()
                };
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Ok(hello)).await;
                }
            }
        });
        tracing::debug!(session, registration, "watch started");
        ReceiverStream::new(rx)
    }

    /// `session` was handed these inodes (their attributes, or entries in
    /// them): changes to them go to it from now on.
    pub fn note(&self, session: u64, inos: impl IntoIterator<Item = u64>) {
        if session == 0 {
            return;
        }
        let mut watchers = self.lock();
        let Some(w) = watchers.get_mut(&session) else {
            return;
        };
        if w.everything {
            return;
        }
        w.interest.extend(inos);
        if w.interest.len() > MAX_INTEREST {
            if w.root != ROOT_INO {
                // Every change would name what lies outside its subtree:
                // end the stream instead (the client drops its caches and
                // watches again, with an empty interest).
                watchers.remove(&session);
                self.count_changed(&watchers);
                return;
            }
            w.everything = true;
            w.interest = HashSet::new();
        }
    }

    /// Ends `session`'s stream and its grants (closed).
    pub fn forget(&self, session: u64) {
        let mut watchers = self.lock();
        watchers.remove(&session);
        self.count_changed(&watchers);
        self.grants().drop_session(session);
    }

    /// Ends every stream: changes may have been missed (or this meta is
    /// stopping), so every client drops its caches and watches again.
    pub fn drop_all(&self, why: &str) {
        let mut watchers = self.lock();
        if !watchers.is_empty() {
            tracing::warn!(
                watchers = watchers.len(),
                why,
                "ending every watch: clients drop their caches"
            );
        }
        watchers.clear();
        self.count_changed(&watchers);
    }

    /// A change committed on this meta by `origin` (a session id, 0: none):
    /// tells this meta's watchers and the other metas. The caller's reply
    /// waits for the returned delivery's `confirmed`.
    pub fn publish(&self, origin: u64, changes: Vec<Change>) -> Delivery<'_> {
        if changes.is_empty() {
            return Delivery {
                watchers: self,
                pending: Vec::new(),
            };
        }
        let pending = self.deliver(origin, &changes);
        if let Some(forward) = &self.forward {
            for part in changes.chunks(NOTICE_CHANGES) {
                let notice = pb::InvalidationNotice {
                    meta_id: self.meta_id,
                    origin_session: origin,
                    changes: Some(to_pb(part)),
                    resync: false,
                };
                if forward.try_send(notice).is_err() {
                    self.forward_lost.store(true, Ordering::Relaxed);
                }
            }
        }
        Delivery {
            watchers: self,
            pending,
        }
    }

    /// `session` applied every invalidation up to `seq`.
    pub fn applied(&self, session: u64, seq: u64) {
        if let Some(w) = self.lock().get(&session).filter(|w| seq <= w.sent) {
            w.applied.send_if_modified(|a| {
                let newer = seq > *a;
                if newer {
                    *a = seq;
                }
                newer
            });
        }
    }

    /// Ends the stream of a watcher that did not apply a change in time, if
    /// it is still the same registration.
    fn drop_lagging(&self, session: u64, registration: u64) {
        let mut watchers = self.lock();
        if watchers
            .get(&session)
            .is_some_and(|w| w.registration == registration)
        {
            tracing::warn!(
                session,
                "watcher did not apply a change in time: its stream ends"
            );
            watchers.remove(&session);
            self.count_changed(&watchers);
        }
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants `session` `dir` if no other session may cache names in it
    /// (none watching here has been handed something of it, none holds a
    /// grant on it), so it may answer its next unlinks and creates there
    /// early: the grant's number, 0 for none. Only a
    /// watching session gets grants (a recall reaches it on its stream), and
    /// only from a meta alone on its store (`presence.rs`: other metas'
    /// watchers are not known here).
    pub fn grant(&self, session: u64, dir: u64) -> u64 {
        if session == 0 || !self.presence.may_grant() {
            return 0;
        }
        let watchers = self.lock();
        let change = Change::Entry {
            parent: dir,
            name: Vec::new(),
        };
        let others = watchers
            .iter()
            .any(|(s, w)| *s != session && w.cares(&change));
        if others || !watchers.contains_key(&session) {
            return 0;
        }
        self.grants().give(session, dir, Instant::now())
    }

    /// Before a call of `session` that reads or changes names in `dirs` (or
    /// their attributes) is served: takes back every other session's grant
    /// on them, and returns once each holder said it answers nothing early
    /// there any more and what it did is on meta, or its grant ran out.
    pub async fn recall(&self, session: u64, dirs: &[u64]) {
        // A meta that may not know another meta's grants serves nothing
        // they concern.
        self.presence.serving().await;
        // Every call of every client passes here: only the grants' lock,
        // and the watchers' only when a holder must be told.
        let decided: Vec<(u64, Recall)> = {
            let mut grants = self.grants();
            let now = Instant::now();
            dirs.iter()
                .map(|&dir| (dir, grants.recall(session, dir, now)))
                .collect()
        };
        let mut waits = Vec::new();
        for (dir, decision) in decided {
            match decision {
                Recall::Nothing => {}
                Recall::Wait(wait) => waits.push((dir, wait, false)),
                Recall::Send {
                    holder,
                    grant,
                    wait,
                } => {
                    // Not delivered (gone, too slow): the grant is waited out.
                    if let Some(w) = self.lock().get(&holder) {
                        let recall = pb::Invalidations {
                            recalls: vec![pb::Recall {
                                dir: if dir == w.root { ROOT_INO } else { dir },
                                grant,
                            }],
                            ..Default::default()
                        };
                        let _ = w.tx.try_send(Ok(recall));
                    }
                    tracing::debug!(session, holder, dir, grant, "recalling a grant");
                    waits.push((dir, wait, true));
                }
            }
        }
        for (dir, wait, sent) in waits {
            let Wait {
                mut done,
                until,
                grant,
            } = wait;
            let answered = tokio::time::timeout_at(until.into(), done.wait_for(|d| *d))
                .await
                .is_ok_and(|r| r.is_ok());
            if !answered {
                self.grants().recalled(None, dir, grant, Instant::now());
            }
            if sent {
                let outcome = if answered { "answered" } else { "ran_out" };
                self.metrics.recalls.with_label_values(&[outcome]).inc();
            }
        }
    }

    /// `recall` of every directory granted to another session (a call that
    /// may touch any: a path resolved from the root).
    pub async fn recall_all(&self, session: u64) {
        let dirs = self.grants().dirs_besides(session, Instant::now());
        self.recall(session, &dirs).await;
    }

    /// Whether a grant of another session may stand in the way of
    /// `session`'s calls (worth finding out which inode a name is).
    pub fn others_hold_grants(&self, session: u64) -> bool {
        self.grants().any_besides(session, Instant::now())
    }

    /// `session` answered the recall of `grant` on `dir`.
    pub fn recalled(&self, session: u64, dir: u64, grant: u64) {
        self.grants()
            .recalled(Some(session), dir, grant, Instant::now());
    }

    /// Sends each watcher (but `origin`) the changes it may have cached. A
    /// watcher too slow to take them, or gone, is dropped. Returns what each
    /// watcher told must confirm.
    fn deliver(&self, origin: u64, changes: &[Change]) -> Vec<Pending> {
        let mut watchers = self.lock();
        let mut gone = Vec::new();
        let mut pending = Vec::new();
        let mut sent = 0u64;
        for (session, w) in watchers.iter_mut() {
            if *session == origin {
                continue;
            }
            let relevant: Vec<Change> = changes
                .iter()
                .filter(|c| w.cares(c))
                .map(|c| w.as_seen(c))
                .collect();
            if relevant.is_empty() {
                continue;
            }
            sent += relevant.len() as u64;
            let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let message = pb::Invalidations {
                seq,
                ..to_pb(&relevant)
            };
            if w.tx.try_send(Ok(message)).is_err() {
                gone.push((*session, w.registration));
            } else {
                w.sent = seq;
                pending.push(Pending {
                    session: *session,
                    registration: w.registration,
                    seq,
                    applied: w.applied.subscribe(),
                });
            }
        }
        for (session, registration) in gone {
            if watchers
                .get(&session)
                .is_some_and(|w| w.registration == registration)
            {
                tracing::info!(session, "watcher gone or too slow: its stream ends");
                watchers.remove(&session);
            }
        }
        self.count_changed(&watchers);
        self.metrics.invalidations_sent.inc_by(sent);
        pending
    }
}

/// One watcher told of a change, until it says it applied it.
struct Pending {
    session: u64,
    registration: u64,
    seq: u64,
    applied: tokio::sync::watch::Receiver<u64>,
}

/// A change as delivered to this meta's watchers.
#[must_use = "the caller's reply waits for `confirmed`"]
pub struct Delivery<'a> {
    watchers: &'a Watchers,
    pending: Vec<Pending>,
}

impl Delivery<'_> {
    /// Returns once every watcher told of the change applied it, is gone, or
    /// was dropped for not applying it within `CONFIRM_WAIT`.
    pub async fn confirmed(self) {
        if self.pending.is_empty() {
            return;
        }
        let until = tokio::time::Instant::now() + CONFIRM_WAIT;
        for mut p in self.pending {
            let seq = p.seq;
            let outcome =
                match tokio::time::timeout_at(until, p.applied.wait_for(|a| *a >= seq)).await {
                    Ok(Ok(_)) => "applied",
                    // The watcher's registration ended (dropped, replaced).
                    Ok(Err(_)) => "gone",
                    Err(_) => {
                        self.watchers.drop_lagging(p.session, p.registration);
                        "ran_out"
                    }
                };
            self.watchers
                .metrics
                .confirms
                .with_label_values(&[outcome])
                .inc();
        }
    }
}

/// Watchers for a meta sharing PostgreSQL with others, and the task that
/// passes changes between them (until `shutdown`).
pub fn bridged(
    url: String,
    presence: std::sync::Arc<Presence>,
    metrics: std::sync::Arc<MetaMetrics>,
    shutdown: Shutdown,
) -> (std::sync::Arc<Watchers>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
    let watchers = std::sync::Arc::new(Watchers::new(Some(tx), presence, false, metrics));
    let task = tokio::spawn(pg_bridge(url, watchers.clone(), rx, shutdown));
    (watchers, task)
}

async fn pg_bridge(
    url: String,
    watchers: std::sync::Arc<Watchers>,
    mut outgoing: mpsc::Receiver<pb::InvalidationNotice>,
    shutdown: Shutdown,
) {
    use sqlx::postgres::{PgConnection, PgListener};
    use sqlx::Connection;
    let mut listener: Option<PgListener> = None;
    let mut sender: Option<PgConnection> = None;
    loop {
        if listener.is_none() {
            match PgListener::connect(&url).await {
                Ok(mut l) => match l.listen_all([PG_CHANNEL, JOIN_CHANNEL]).await {
                    Ok(()) => {
                        listener = Some(l);
                        watchers.ready.send_replace(true);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for invalidations"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot connect to LISTEN for invalidations"),
            }
        }
        if sender.is_none() {
            match PgConnection::connect(&url).await {
                Ok(c) => sender = Some(c),
                Err(e) => tracing::warn!(error = %e, "cannot connect to NOTIFY invalidations"),
            }
        }
        let (Some(l), Some(s)) = (listener.as_mut(), sender.as_mut()) else {
            tokio::select! {
                _ = shutdown.clone().wait() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            incoming = l.try_recv() => match incoming {
                Ok(Some(n)) if n.channel() == JOIN_CHANNEL => watchers.presence.heard_join(),
                Ok(Some(n)) => receive(&watchers, n.payload()),
                Ok(None) | Err(_) => {
                    listener = None;
                    watchers.ready.send_replace(false);
                    watchers.drop_all("lost the LISTEN connection to PostgreSQL");
                }
            },
            notice = outgoing.recv() => {
                let Some(mut notice) = notice else { return };
                if watchers.forward_lost.swap(false, Ordering::Relaxed) {
                    notice = pb::InvalidationNotice {
                        meta_id: watchers.meta_id,
                        resync: true,
                        ..Default::default()
                    };
                }
                let payload = hex_encode(&notice.encode_to_vec());
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(PG_CHANNEL)
                    .bind(payload)
                    .execute(&mut *s)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "cannot NOTIFY the other metas");
                    sender = None;
                    watchers.forward_lost.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A notice from the shared channel (ours included, which is skipped).
fn receive(watchers: &Watchers, payload: &str) {
    let notice = hex_decode(payload).and_then(|b| pb::InvalidationNotice::decode(&b[..]).ok());
    let Some(notice) = notice else {
        tracing::warn!("undecodable invalidation notice; dropping every cache to be safe");
        watchers.drop_all("undecodable notice");
        return;
    };
    if notice.meta_id == watchers.meta_id {
        return;
    }
    if notice.resync {
        watchers.drop_all("another meta lost invalidations");
        return;
    }
    let changes = from_pb(notice.changes.unwrap_or_default());
    // The change's caller is on another meta: nothing here waits for it.
    drop(watchers.deliver(notice.origin_session, &changes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn watchers() -> Watchers {
        Watchers::local(std::sync::Arc::new(MetaMetrics::new()))
    }

    async fn next(s: &mut ReceiverStream<Result<pb::Invalidations, Status>>) -> pb::Invalidations {
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("no message: {other:?}"),
        }
    }

    /// `session`'s stream on `w`, past its hello.
    async fn watching(
        w: &Watchers,
        session: u64,
    ) -> ReceiverStream<Result<pb::Invalidations, Status>> {
        let mut s = w.register(session, ROOT_INO);
        assert!(next(&mut s).await.hello);
        s
    }

    #[tokio::test]
    async fn changes_go_to_interested_sessions_but_the_origin() {
        let w = watchers();
        let mut a = watching(&w, 1).await;
        let mut b = watching(&w, 2).await;
        w.note(1, [10, 11]);
        w.note(2, [10]);
        // Session 2 renames in directory 10: only session 1 hears of it.
        drop(w.publish(2, vec![Change::entry(10, b"x"), Change::attrs(11)]));
        let got = next(&mut a).await;
        assert_eq!(got.entries.len(), 1);
        assert_eq!(got.entries[0].name, b"x");
        assert_eq!(got.inodes.len(), 1);
        // Session 2 is not interested in 11 and made the change in 10.
        drop(w.publish(1, vec![Change::data(11)]));
        drop(w.publish(1, vec![Change::entry(10, b"y")]));
        let got = next(&mut b).await;
        assert_eq!(got.entries[0].name, b"y");
        assert!(got.inodes.is_empty());
    }

    #[tokio::test]
    async fn a_subtree_session_hears_its_root_as_inode_1_and_nothing_outside() {
        let w = watchers();
        let mut a = w.register(1, 40);
        assert!(next(&mut a).await.hello);
        w.note(1, [40, 41]);
        drop(w.publish(
            0,
            vec![Change::entry(ROOT_INO, b"secret"), Change::entry(40, b"x")],
        ));
        drop(w.publish(0, vec![Change::data(40), Change::attrs(41)]));
        let got = next(&mut a).await;
        assert_eq!((got.entries.len(), got.entries[0].parent), (1, ROOT_INO));
        assert_eq!(got.entries[0].name, b"x");
        let got = next(&mut a).await;
        let inos: Vec<u64> = got.inodes.iter().map(|i| i.ino).collect();
        assert_eq!(inos, vec![ROOT_INO, 41]);
        // Too much to track: the stream ends rather than send every change.
        w.note(1, 1000..1000 + MAX_INTEREST as u64);
        assert!(w.lock().is_empty());
        assert!(a.next().await.is_none());
    }

    #[tokio::test]
    async fn a_slow_watcher_is_dropped_not_blocking() {
        let w = watchers();
        let mut a = w.register(1, ROOT_INO);
        w.note(1, [5]);
        for _ in 0..WATCHER_QUEUE + 10 {
            drop(w.publish(0, vec![Change::attrs(5)]));
        }
        assert!(w.lock().is_empty(), "an overflowing watcher is dropped");
        // The queued messages drain, then the stream ends.
        let mut n = 0;
        while let Some(m) = a.next().await {
            assert!(m.is_ok());
            n += 1;
        }
        assert!(n <= WATCHER_QUEUE + 1);
    }

    #[tokio::test]
    async fn a_change_waits_until_every_told_watcher_applied_it() {
        let w = watchers();
        let mut a = watching(&w, 1).await;
        let mut b = watching(&w, 2).await;
        w.note(1, [10]);
        w.note(2, [10]);
        let delivery = w.publish(3, vec![Change::entry(10, b"x")]);
        let (got_a, got_b) = (next(&mut a).await, next(&mut b).await);
        assert!(got_a.seq > 0 && got_b.seq > 0 && got_a.seq != got_b.seq);
        let confirmed = delivery.confirmed();
        tokio::pin!(confirmed);
        w.applied(1, got_a.seq);
        // An answer of an earlier message covers nothing later, nor does
        // one about a message this meta never sent.
        w.applied(2, got_b.seq - 1);
        w.applied(2, got_b.seq.max(got_a.seq) + 1);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut confirmed).await;
        assert!(waited.is_err(), "session 2 has not applied it");
        w.applied(2, got_b.seq);
        tokio::time::timeout(Duration::from_secs(5), confirmed)
            .await
            .expect("both applied it");
        assert_eq!(w.lock().len(), 2, "nobody dropped");
        // The origin and sessions without interest are not waited for.
        w.publish(1, vec![Change::entry(11, b"y")])
            .confirmed()
            .await;
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_apply_a_change_in_time_is_dropped() {
        let w = watchers();
        let mut a = watching(&w, 1).await;
        w.note(1, [10]);
        let start = Instant::now();
        w.publish(0, vec![Change::attrs(10)]).confirmed().await;
        assert!(start.elapsed() >= CONFIRM_WAIT);
        assert!(w.lock().is_empty(), "the lagging watcher is dropped");
        let ran_out = w.metrics.confirms.with_label_values(&["ran_out"]).get();
        assert_eq!(ran_out, 1);
        // Its stream ends after what was queued: the mount starts over.
        assert!(next(&mut a).await.seq > 0);
        assert!(a.next().await.is_none());
        // With nobody watching, nothing is waited for.
        w.publish(0, vec![Change::attrs(10)]).confirmed().await;
        let counted: u64 = ["applied", "gone", "ran_out"]
            .iter()
            .map(|o| w.metrics.confirms.with_label_values(&[o]).get())
            .sum();
        assert_eq!(counted, 1);
    }

    #[test]
    fn notices_round_trip_through_hex() {
        let notice = pb::InvalidationNotice {
            meta_id: 7,
            origin_session: 3,
            changes: Some(to_pb(&[Change::entry(1, b"a\xffb"), Change::data(9)])),
            resync: false,
        };
        let text = hex_encode(&notice.encode_to_vec());
        let back = pb::InvalidationNotice::decode(&hex_decode(&text).unwrap()[..]).unwrap();
        assert_eq!(back, notice);
        assert_eq!(
            from_pb(back.changes.unwrap()),
            vec![Change::entry(1, b"a\xffb"), Change::data(9)]
        );
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
    }
}
