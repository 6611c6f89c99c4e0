//! Re-replication. A worker scans for chunks with fewer up replicas than the
//! replication factor, picks a live holder as the source and new targets by the
//! usual placement, and queues a command that the source receives in its next
//! heartbeat reply. The source copies the chunk and reports `ReplicaAdded`.
//!
//! It also trims: a node that comes back after its chunks were copied
//! elsewhere leaves them with one replica too many. The extra replica on the
//! fullest node is dropped (garbage collected on that node).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_common::shutdown::Shutdown;
use dfs_proto::pb;

use crate::metrics::MetaMetrics;
use crate::store::{self, RepairCommand, Store, StoreError};
use crate::Config;

/// How long a queued copy may take before the chunk is planned again.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks examined per scan; bounds the work and the repair traffic per round.
const SCAN_LIMIT: usize = 256;
/// Copies one source node is asked to make at once.
const PER_NODE_LIMIT: usize = 32;

#[derive(Default)]
struct State {
    in_flight: HashMap<u64, Instant>,
}

pub struct Repairer {
    store: Store,
    config: Config,
    metrics: Arc<MetaMetrics>,
    state: Mutex<State>,
    /// When this server started: node liveness carried over a restart is
    /// an estimate until every node has reported in again.
    started: Instant,
}

impl Repairer {
    pub fn new(store: Store, config: Config, metrics: Arc<MetaMetrics>) -> Repairer {
        Repairer {
            store,
            config,
            metrics,
            state: Mutex::new(State::default()),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commands for `node_id`, handed over once (heartbeat reply). They
    /// wait in the store, so a node reporting to any meta gets them.
    pub async fn take_commands(
        &self,
        node_id: u64,
    ) -> Result<Vec<pb::ReplicateCommand>, StoreError> {
        Ok(self
            .store
            .take_repairs(node_id, PER_NODE_LIMIT)
            .await?
            .into_iter()
            .map(|c| pb::ReplicateCommand {
                chunk_id: c.chunk_id,
                targets: c
                    .targets
                    .into_iter()
                    .map(|(node_id, addr)| pb::NodeRef { node_id, addr })
                    .collect(),
                stored_len: c.stored_len,
                crc32c: c.crc32c,
            })
            .collect())
    }

    /// A copy finished: the chunk may be planned again if still short.
    pub fn finished(&self, chunk_id: u64, replicas: usize) {
        let mut state = self.lock();
        state.in_flight.remove(&chunk_id);
        self.metrics.repair_queue.set(state.in_flight.len() as i64);
        drop(state);
        self.metrics.repairs_done.inc_by(replicas as u64);
    }

    /// One planning round; returns how many copy commands it queued.
    pub async fn scan(&self) -> Result<usize, StoreError> {
        let cutoff = store::now_ms() - self.config.dead_after.as_millis() as i64;
        let (items, extra) = self.store.replica_imbalance(cutoff, SCAN_LIMIT).await?;
        {
            let now = Instant::now();
            self.lock().in_flight.retain(|_, deadline| *deadline > now);
        }
        let replication = self.store.replication() as usize;
        let mut queued = 0;
        let mut queued_per_source: HashMap<u64, usize> = HashMap::new();
        for item in items {
            if item.live_holders.is_empty() || self.lock().in_flight.contains_key(&item.chunk_id) {
                continue;
            }
            let source = &item.live_holders[(item.chunk_id as usize) % item.live_holders.len()];
            let waiting = match queued_per_source.get(&source.0) {
                Some(n) => *n,
                None => self.store.queued_repairs(source.0).await?,
            };
            if waiting >= PER_NODE_LIMIT {
                continue;
            }
            queued_per_source.insert(source.0, waiting + 1);
            let wanted = replication.saturating_sub(item.good) as u32;
            let exclude: Vec<u64> = item
                .live_holders
                .iter()
                .map(|h| h.0)
                .chain(item.down_holders.iter().copied())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let placement = match self
                .store
                .place_chunk(item.chunk_id, wanted, &exclude, cutoff, 0)
                .await
            {
                Ok(p) => p,
                Err(StoreError::NoSpace(_)) => continue,
                Err(e) => return Err(e),
            };
            let command = RepairCommand {
                chunk_id: item.chunk_id,
                targets: placement
                    .targets
                    .iter()
                    .map(|n| (n.id, n.addr.clone()))
                    .collect(),
                stored_len: item.stored_len,
                crc32c: item.crc32c,
            };
            self.store.queue_repair(source.0, &command).await?;
            self.lock()
                .in_flight
                .insert(item.chunk_id, Instant::now() + IN_FLIGHT_TIMEOUT);
            queued += 1;
        }
        // No trimming until every node had time to report in after a
        // start: a node that died while meta was down still looks up.
        if self.started.elapsed() > 2 * self.config.dead_after {
            self.trim_extra_replicas(extra, cutoff).await?;
        }
        self.metrics.repair_commands.inc_by(queued as u64);
        self.metrics
            .repair_queue
            .set(self.lock().in_flight.len() as i64);
        Ok(queued)
    }

    /// Drops replicas beyond the replication factor, one per chunk per round,
    /// from the holder with the least free space. Chunks with a copy in flight
    /// are left alone until it lands.
    async fn trim_extra_replicas(
        &self,
        extra: Vec<store::ExtraReplicas>,
        cutoff: i64,
    ) -> Result<(), StoreError> {
        for item in extra {
            if self.lock().in_flight.contains_key(&item.chunk_id) {
                continue;
            }
            // A draining node's replica goes first, else the fullest holder's.
            let fullest = item
                .live_holders
                .iter()
                .min_by_key(|(id, free)| (*free, std::cmp::Reverse(*id)))
                .map(|(id, _)| *id);
            let Some(node) = item.draining_holders.first().copied().or(fullest) else {
                continue;
            };
            if self
                .store
                .drop_extra_replica(item.chunk_id, node, cutoff)
                .await?
            {
                tracing::info!(chunk = item.chunk_id, node, "dropped an extra replica");
                self.metrics.replicas_trimmed.inc();
            }
        }
        Ok(())
    }

    async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let cutoff = store::now_ms() - self.config.dead_after.as_millis() as i64;
        let counts = self.store.cluster_counts(cutoff).await?;
        let nodes = self.store.list_nodes().await?;
        let up = nodes
            .iter()
            .filter(|n| n.record.last_heartbeat_ms >= cutoff)
            .count();
        self.metrics.nodes.with_label_values(&["up"]).set(up as i64);
        self.metrics
            .nodes
            .with_label_values(&["down"])
            .set((nodes.len() - up) as i64);
        self.metrics.files.set(counts.files as i64);
        self.metrics.chunks.set(counts.chunks as i64);
        self.metrics
            .under_replicated
            .set(counts.under_replicated as i64);
        self.metrics.lost.set(counts.lost as i64);
        Ok(())
    }
}

/// Runs repair rounds every `repair_interval` until shutdown.
/// Only the leader plans and releases anything (see `leader`).
pub async fn run_worker(
    repairer: Arc<Repairer>,
    leadership: Arc<crate::leader::Leadership>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(repairer.config.repair_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        match repairer.scan().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(commands = n, "repair: queued chunk copies"),
            Err(e) => tracing::warn!(error = %e, "repair scan failed"),
        }
        let cutoff = store::now_ms() - repairer.config.dead_after.as_millis() as i64;
        match repairer.store.release_quarantine(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                replicas = n,
                "deleted quarantined replicas: their chunks have every good copy again"
            ),
            Err(e) => tracing::warn!(error = %e, "releasing quarantined replicas failed"),
        }
        match repairer.store.refresh_statistics().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tables = n, "analyzed tables with stale statistics"),
            Err(e) => tracing::warn!(error = %e, "analyzing tables failed"),
        }
        let orphan_cutoff = store::now_ms() - repairer.config.orphan_ttl.as_millis() as i64;
        match repairer.store.expire_orphans(orphan_cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                orphans = n,
                "deleted orphans whose client never released them"
            ),
            Err(e) => tracing::warn!(error = %e, "expiring orphans failed"),
        }
        if let Err(e) = repairer.refresh_gauges().await {
            tracing::warn!(error = %e, "refreshing gauges failed");
        }
    }
}
