//! Which of several meta servers on one store runs the background work
//! (repair, trimming, quarantine release, orphan and session expiry). Every
//! server answers requests; one leads. The store decides (a PostgreSQL
//! advisory lock on a connection of the leader's), so a leader that dies
//! loses it with its connection and another server takes over within a
//! second or two.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfs_common::shutdown::Shutdown;

use crate::metrics::MetaMetrics;
use crate::store::{LeaderLock, Store};

/// How often a follower tries to lead, and a leader checks it still does.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Leadership {
    leading: AtomicBool,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }
}

/// Takes and keeps leadership when it can, until shutdown.
pub async fn run(
    store: Store,
    leadership: Arc<Leadership>,
    metrics: Arc<MetaMetrics>,
    shutdown: Shutdown,
) {
    let mut held: Option<LeaderLock> = None;
    // The connection a follower tries on (a failed try drops it).
    let mut spare = None;
    loop {
        let still = match held.as_mut() {
            Some(lock) => lock.check().await,
            None => false,
        };
        if held.is_some() && !still {
            tracing::warn!("lost the leader lock (database connection gone)");
            held = None;
        }
        if held.is_none() {
            match store.try_lead(&mut spare).await {
                Ok(Some(lock)) => {
                    tracing::info!("leading: this server runs repair and expiry");
                    held = Some(lock);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot try for leadership"),
            }
        }
        leadership.leading.store(held.is_some(), Ordering::Relaxed);
        metrics.leader.set(i64::from(held.is_some()));
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
