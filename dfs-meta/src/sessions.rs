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

use dfs_auth::{Identity, Role};

use crate::store::{self, Origin, Store};

/// Live sessions as far as this server knows, and lock waiters.
pub struct Sessions {
    store: Store,
    pub lease: Duration,
    /// Session id -> lease expiry (ms) last seen and owner; a miss or a
    /// passed expiry asks the store (another meta may have renewed it).
    known: Mutex<HashMap<u64, Known>>,
    /// Signalled whenever a lock may have been released.
    pub lock_changes: Notify,
}

#[derive(Clone)]
struct Known {
    expires_ms: i64,
    owner: String,
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

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Remembers a session just opened by `owner`.
    pub fn opened(&self, id: u64, expires_ms: i64, owner: String) {
        self.known().insert(id, Known { expires_ms, owner });
    }

    /// Remembers a session's new expiry.
    pub fn renewed(&self, id: u64, expires_ms: i64) {
        if let Some(k) = self.known().get_mut(&id) {
            k.expires_ms = expires_ms;
        }
    }

    pub fn forget(&self, id: u64) {
        self.known().remove(&id);
        self.store.open_files().forget(id);
    }

    /// The origin a request names. A request of a session that expired
    /// fails with the "session expired" status, so its client learns it
    /// lost what the session held; one without a session passes.
    pub async fn origin(
        &self,
        metadata: &MetadataMap,
        caller: Option<&Identity>,
    ) -> Result<Origin, Status> {
        let (session, request) = dfs_proto::session::request_ids(metadata);
        if session == 0 {
            return Ok(Origin::NONE);
        }
        match self.live(session).await? {
            Some(owner) => {
                owns(&owner, session, caller)?;
                Ok(Origin { session, request })
            }
            None => Err(dfs_proto::session::session_expired(session)),
        }
    }

    /// Refuses (PERMISSION_DENIED) a caller that is not the owner of a
    /// session it names (renew, close); a session gone passes.
    pub async fn check_owner(&self, session: u64, caller: Option<&Identity>) -> Result<(), Status> {
        match self.live(session).await? {
            Some(owner) => owns(&owner, session, caller),
            None => Ok(()),
        }
    }

    /// The owner of a live session; None once it expired (or never was).
    async fn live(&self, session: u64) -> Result<Option<String>, Status> {
        let now = store::now_ms();
        let cached = self.known().get(&session).cloned();
        match cached {
            Some(k) if k.expires_ms >= now => Ok(Some(k.owner)),
            _ => match self.store.session_lease(session).await? {
                Some((expires_ms, owner)) if expires_ms >= now => {
                    self.opened(session, expires_ms, owner.clone());
                    Ok(Some(owner))
                }
                _ => {
                    self.forget(session);
                    Ok(None)
                }
            },
        }
    }
}

/// Only the certificate that opened a session acts in it (an admin may act
/// in any; without TLS there are no names to compare). A session opened
/// before owners were recorded (migration 0011) has none, so that mounts
/// live across the upgrade keep working.
fn owns(owner: &str, session: u64, caller: Option<&Identity>) -> Result<(), Status> {
    match caller {
        Some(id) if id.role != Role::Admin && !owner.is_empty() && id.name != owner => Err(
            Status::permission_denied(format!("session {session} belongs to another certificate")),
        ),
        _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_serves_its_owner_admins_and_legacy_callers() {
        let id = |role, name: &str| Identity {
            role,
            name: name.to_string(),
        };
        let (alice, bob) = (id(Role::Client, "alice"), id(Role::Client, "bob"));
        assert!(owns("alice", 1, Some(&alice)).is_ok());
        assert!(owns("alice", 1, Some(&bob)).is_err());
        assert!(owns("alice", 1, Some(&id(Role::Admin, "root"))).is_ok());
        assert!(owns("alice", 1, None).is_ok());
        assert!(owns("", 1, Some(&bob)).is_ok());
    }
}
