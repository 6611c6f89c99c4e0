//! The scrubber: re-reads every chunk at a bounded rate and verifies its block
//! checksums, so silent disk corruption is found before a reader needs the
//! data. A bad chunk is moved aside (by the store) and reported to meta,
//! which drops the replica; repair then copies a good one back.

use std::sync::Arc;
use std::time::Duration;

use dfs_common::shutdown::Shutdown;
use dfs_proto::pb;

use crate::chunk_store::{ChunkError, ChunkStore};
use crate::metrics::NodeMetrics;
use crate::NodeIdentity;

#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    /// Bytes verified per second at most.
    pub bytes_per_sec: u64,
    /// Pause between two full passes.
    pub pause: Duration,
}

pub struct Scrubber {
    pub store: Arc<ChunkStore>,
    pub meta: dfs_client::Meta,
    pub identity: Arc<NodeIdentity>,
    pub metrics: Arc<NodeMetrics>,
    pub config: ScrubConfig,
}

impl Scrubber {
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            if self.pass(&shutdown).await.is_err() {
                return;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.metrics.scrub_last_pass.set(now as i64);
            if pause(self.config.pause, &shutdown).await {
                return;
            }
        }
    }

    /// One pass over every chunk; Err(()) when shutdown interrupted it.
    async fn pass(&mut self, shutdown: &Shutdown) -> Result<(), ()> {
        let store = self.store.clone();
        let ids = match tokio::task::spawn_blocking(move || store.list()).await {
            Ok(Ok(ids)) => ids,
            other => {
                tracing::warn!(result = ?other.err(), "scrub: cannot list chunks");
                return Ok(());
            }
        };
        let total = ids.len().max(1) as f64;
        self.metrics.scrub_progress.set(0.0);
        for (done, id) in ids.into_iter().enumerate() {
            let store = self.store.clone();
            let verified = tokio::task::spawn_blocking(move || {
                let mut bytes = 0u64;
                store.read(id, 0, u64::MAX, |piece| {
                    bytes += piece.len() as u64;
                    true
                })?;
                Ok::<u64, ChunkError>(bytes)
            })
            .await;
            let bytes = match verified {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(ChunkError::NotFound(_))) => 0, // deleted meanwhile
                Ok(Err(e @ ChunkError::Corrupt { .. })) => {
                    self.metrics.scrub_errors.inc();
                    self.metrics.crc_failures.inc();
                    tracing::error!(chunk = id, error = %e, "scrub found a bad chunk");
                    let report = pb::BadReplicaRequest {
                        chunk_id: id,
                        node_id: self.identity.node_id(),
                    };
                    if let Err(e) = self.meta.report_bad_replica(report).await {
                        tracing::warn!(error = %e.message(), "could not report the bad chunk");
                    }
                    0
                }
                Ok(Err(e)) => {
                    // Could not read it now (EMFILE, EIO...): not corrupt; next round.
                    self.metrics.scrub_errors.inc();
                    tracing::warn!(chunk = id, error = %e, "scrub could not read a chunk");
                    0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scrub task failed");
                    0
                }
            };
            self.metrics.scrub_chunks.inc();
            self.metrics.scrub_bytes.inc_by(bytes);
            self.metrics.scrub_progress.set((done + 1) as f64 / total);
            let wait =
                Duration::from_secs_f64(bytes as f64 / self.config.bytes_per_sec.max(1) as f64);
            if pause(wait, shutdown).await {
                return Err(());
            }
        }
        self.metrics.scrub_progress.set(1.0);
        Ok(())
    }
}

/// Sleeps; true when shutdown came first.
async fn pause(d: Duration, shutdown: &Shutdown) -> bool {
    if shutdown.is_requested() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.clone().wait() => true,
    }
}
