//! The service's side of sessions: which session a request comes from (and
//! whether it is still alive), the wake-up of lock waiters, and the worker
//! that releases what expired sessions held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dfs_common::shutdown::Shutdown;
use tokio::sync::Notify;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::store::{self, Origin, Store};

/// Live sessions as far as this server knows, and lock waiters.
pub struct Sessions {
    store: Store,
    pub lease: Duration,
    /// Session id -> lease expiry (ms) last seen; a miss or a passed expiry
    /// asks the store (another meta may have renewed it).
    known: Mutex<HashMap<u64, i64>>,
    /// Signalled whenever a lock may have been released.
    pub lock_changes: Notify,
}

impl Sessions {
    pub fn new(store: Store, lease: Duration) -> Sessions {
        Sessions {
            store,
            lease,
            known: Mutex::new(HashMap::new()),
            lock_changes: Notify::new(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<u64, i64>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Remembers a session's new expiry (after open or renew).
    pub fn renewed(&self, id: u64, expires_ms: i64) {
        self.known().insert(id, expires_ms);
    }

    pub fn forget(&self, id: u64) {
        self.known().remove(&id);
    }

    /// The origin a request names. A request of a session that expired
    /// fails with the "session expired" status, so its client learns it
    /// lost what the session held; one without a session passes.
    pub async fn origin(&self, metadata: &MetadataMap) -> Result<Origin, Status> {
        let (session, request) = dfs_proto::session::request_ids(metadata);
        if session == 0 {
            return Ok(Origin::NONE);
        }
        let now = store::now_ms();
        let cached = self.known().get(&session).copied();
        if cached.is_none_or(|expires| expires < now) {
            match self.store.session_expiry(session).await? {
                Some(expires) if expires >= now => self.renewed(session, expires),
                _ => {
                    self.forget(session);
                    return Err(dfs_proto::session::session_expired(session));
                }
            }
        }
        Ok(Origin { session, request })
    }
}

/// Releases expired sessions every second until shutdown (the leader only).
pub async fn run_expiry(
    sessions: std::sync::Arc<Sessions>,
    leadership: std::sync::Arc<crate::leader::Leadership>,
    metrics: std::sync::Arc<crate::metrics::MetaMetrics>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        match sessions.store.expire_sessions(store::now_ms()).await {
            Ok(expired) if !expired.is_empty() => {
                metrics.sessions_expired.inc_by(expired.len() as u64);
                for id in &expired {
                    sessions.forget(*id);
                }
                tracing::warn!(
                    ?expired,
                    "sessions expired: their locks and orphans released"
                );
                sessions.lock_changes.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "session expiry failed"),
        }
    }
}
