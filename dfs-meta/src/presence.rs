//! Whether this meta may grant directories (`grants.rs`). A grant promises
//! its holder that no other client is served in the directory before the
//! grant is recalled, a promise only a meta that knows every watching client
//! can keep: on SQLite the only meta; on PostgreSQL a meta that knows it is
//! alone on the store. PostgreSQL decides with one advisory lock: every
//! serving meta holds it shared, and a meta may grant only while it holds it
//! exclusively as well, which PostgreSQL gives only while no other meta holds
//! it at all.
//!
//! A meta that starts (or lost its hold with its connection) asks for the
//! shared hold. While a meta alone holds it exclusively, the newcomer sends a
//! join notice on `JOIN_CHANNEL` every `NOTICE_EVERY`; the meta alone stops
//! granting, recalls every grant (each holder stops answering early and
//! lands what it answered, or its grant runs out) and gives the exclusive
//! hold up. One that does not (stopped, deaf to the channel) has its database
//! connection ended by the newcomer after `FENCE_AFTER`.
//!
//! Calls that must not pass a grant (everything that recalls) wait until this
//! meta holds its shared hold, and serves them only `TRUST + GRANT_FOR` after
//! it took the hold, when every grant another meta gave has run out (one that
//! made room for it, or one that crashed while alone). Holds are checked on their connection every `CHECK_EVERY` and trusted
//! for `TRUST` from the check's start, so a meta whose connection died (or
//! that was stopped) stops granting and serving by itself within `TRUST`;
//! and a meta that gets the exclusive hold grants only `TRUST` after, when a
//! meta that lost its shared hold unseen has stopped serving.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dfs_common::shutdown::Shutdown;
use dfs_proto::GRANT_FOR;

use crate::metrics::MetaMetrics;
use crate::store::Store;
use crate::watch::Watchers;

/// How often the holds are checked, and the exclusive one tried for.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a successful check is trusted.
const TRUST: Duration = Duration::from_secs(1);
/// How often a waiting newcomer repeats its join notice.
const NOTICE_EVERY: Duration = Duration::from_millis(500);
/// How long a newcomer waits for the meta alone before ending its connection.
const FENCE_AFTER: Duration = Duration::from_secs(10);
/// After giving the exclusive hold up to a newcomer, how long before trying
/// for it again (the newcomer takes its shared hold meanwhile).
const MAKE_ROOM_FOR: Duration = Duration::from_secs(5);
/// How often a waiting meta tries for its shared hold.
const WAIT_STEP: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Trust {
    /// Serving trusted until then (the shared hold checked).
    serve: Option<Instant>,
    /// Granting trusted until then (the exclusive hold checked).
    grant: Option<Instant>,
}

/// What this meta may do, as far as the other metas on its store go.
pub struct Presence {
    /// Alone by construction (SQLite): everything allowed, no task.
    local: bool,
    trust: Mutex<Trust>,
    /// A join notice came (from the invalidation bridge's connection).
    joining: tokio::sync::Notify,
}

impl Presence {
    /// A meta alone on its store by construction (SQLite).
    pub fn local() -> Presence {
        Presence {
            local: true,
            trust: Mutex::default(),
            joining: tokio::sync::Notify::new(),
        }
    }

    /// A meta on a store others may share: nothing allowed until `run` says.
    pub fn shared() -> Presence {
        Presence {
            local: false,
            ..Presence::local()
        }
    }

    fn trust(&self) -> std::sync::MutexGuard<'_, Trust> {
        self.trust.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this meta may grant a directory now.
    pub fn may_grant(&self) -> bool {
        self.local || self.trust().grant.is_some_and(|t| t > Instant::now())
    }

    fn may_serve(&self) -> bool {
        self.local || self.trust().serve.is_some_and(|t| t > Instant::now())
    }

    /// Returns once this meta may serve calls that grants concern.
    pub async fn serving(&self) {
        while !self.may_serve() {
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// Another meta asked for room (its join notice).
    pub fn heard_join(&self) {
        self.joining.notify_waiters();
    }

    fn set(&self, serve: Option<Instant>, grant: Option<Instant>) {
        let mut t = self.trust();
        t.serve = serve;
        t.grant = grant;
    }
}

/// Keeps this meta's presence holds on a shared store until shutdown.
pub async fn run(
    store: Store,
    presence: Arc<Presence>,
    watchers: Arc<Watchers>,
    metrics: Arc<MetaMetrics>,
    shutdown: Shutdown,
) {
    if presence.local {
        return;
    }
    loop {
        let outcome = hold(&store, &presence, &watchers, &metrics, &shutdown).await;
        presence.set(None, None);
        metrics.alone.set(0);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lost the presence hold on the store; taking it again")
            }
        }
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One connection's life: takes the shared hold, then checks it, and takes
/// and gives up the exclusive one. `Ok` on shutdown.
async fn hold(
    store: &Store,
    presence: &Presence,
    watchers: &Watchers,
    metrics: &MetaMetrics,
    shutdown: &Shutdown,
) -> crate::store::Result<()> {
    let Some(mut conn) = store.presence_connection().await? else {
        presence.set(Some(far_future()), Some(far_future()));
        return Ok(());
    };
    let asked = Instant::now();
    let mut noticed: Option<Instant> = None;
    while !store.try_hold_presence(&mut conn).await? {
        if noticed.is_none_or(|n| n.elapsed() >= NOTICE_EVERY) {
            store.announce_join(&mut conn).await?;
            noticed = Some(Instant::now());
        }
        if asked.elapsed() >= FENCE_AFTER {
            let ended = store.fence_alone(&mut conn).await?;
            if ended > 0 {
                tracing::warn!(
                    ended,
                    "ended the connection of a meta that kept the store to itself"
                );
            }
        }
        tokio::select! {
            _ = shutdown.clone().wait() => return Ok(()),
            _ = tokio::time::sleep(WAIT_STEP) => {}
        }
    }
    // A meta that was alone (made room, or died) may have granted until its
    // trust ran out; its clients trust a grant for GRANT_FOR more.
    tracing::info!("holding the store's presence lock; serving once other metas' grants ran out");
    tokio::select! {
        _ = shutdown.clone().wait() => return Ok(()),
        _ = tokio::time::sleep(TRUST + GRANT_FOR) => {}
    }
    // Alone since then (grants only TRUST after), or not.
    let mut alone: Option<Instant> = None;
    let mut next_try = Instant::now();
    loop {
        let checked = Instant::now();
        conn.ping().await?;
        if alone.is_none() && checked >= next_try {
            if store.try_hold_alone(&mut conn).await? {
                tracing::info!("alone on the store: granting directories");
                alone = Some(checked);
            } else {
                next_try = checked + CHECK_EVERY;
            }
        }
        let grant = alone
            .filter(|since| checked >= *since + TRUST)
            .map(|_| checked + TRUST);
        presence.set(Some(checked + TRUST), grant);
        metrics.alone.set(i64::from(grant.is_some()));
        let joined = presence.joining.notified();
        tokio::select! {
            _ = shutdown.clone().wait() => return Ok(()),
            _ = joined, if alone.is_some() => {
                presence.set(Some(checked + TRUST), None);
                metrics.alone.set(0);
                tracing::info!("another meta joins the store: recalling every grant");
                // The holders' calls in flight must land meanwhile: the
                // shared hold stays checked and trusted while they do.
                let recalled = watchers.recall_all(0);
                tokio::pin!(recalled);
                loop {
                    tokio::select! {
                        _ = &mut recalled => break,
                        _ = tokio::time::sleep(CHECK_EVERY) => {
                            let checked = Instant::now();
                            conn.ping().await?;
                            presence.set(Some(checked + TRUST), None);
                        }
                    }
                }
                store.release_alone(&mut conn).await?;
                alone = None;
                next_try = Instant::now() + MAKE_ROOM_FOR;
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// A trust that never runs out (a store no other meta can share).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}
