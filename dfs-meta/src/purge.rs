//! Deleted files leave the store in batches: an unlink only queues a file
//! that lost its last name (`deleted_inodes`), and the leader deletes the
//! queued files' rows and chunk maps here, queueing their replicas for the
//! nodes' garbage collection, a batch per transaction.

use std::sync::Arc;
use std::time::Duration;

use dfs_common::shutdown::Shutdown;

use crate::leader::Leadership;
use crate::metrics::MetaMetrics;
use crate::store::Store;

/// How often the queue is looked at.
const PERIOD: Duration = Duration::from_millis(250);
/// Files per transaction: a batch holds the store (SQLite's one connection)
/// for a few milliseconds at most, so calls meanwhile wait little.
const BATCH: i64 = 128;

/// Empties the deletion queue every `PERIOD` until shutdown (the leader only).
pub async fn run(
    store: Store,
    leadership: Arc<Leadership>,
    metrics: Arc<MetaMetrics>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        loop {
            match store.purge_deleted(BATCH).await {
                Ok(n) => {
                    metrics.purged_files.inc_by(n as u64);
                    if (n as i64) < BATCH {
                        break;
                    }
                    // Calls waiting for the store go first.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging deleted files failed");
                    break;
                }
            }
        }
    }
}
