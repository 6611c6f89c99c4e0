//! dfs-meta's Prometheus metrics (names `dfs_meta_<what>_<unit>`).

use dfs_common::metrics::{counter, gauge, register_all};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct MetaMetrics {
    pub registry: Registry,
    pub rpc_requests: IntCounterVec,
    pub rpc_seconds: HistogramVec,
    pub nodes: IntGaugeVec,
    pub files: IntGauge,
    pub chunks: IntGauge,
    pub under_replicated: IntGauge,
    pub lost: IntGauge,
    pub repair_commands: IntCounter,
    pub repairs_done: IntCounter,
    pub replicas_trimmed: IntCounter,
    pub repair_queue: IntGauge,
    pub leader: IntGauge,
    pub alone: IntGauge,
    pub sessions_expired: IntCounter,
    pub purged_files: IntCounter,
    pub watchers: IntGauge,
    pub invalidations_sent: IntCounter,
    pub recalls: IntCounterVec,
    pub confirms: IntCounterVec,
    pub open_files: IntGauge,
}

impl MetaMetrics {
    pub fn new() -> MetaMetrics {
        let registry = Registry::new();
        let m = MetaMetrics {
            rpc_requests: IntCounterVec::new(
                Opts::new(
                    "dfs_meta_rpc_requests_total",
                    "gRPC requests by method and result code",
                ),
                &["method", "code"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            rpc_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "dfs_meta_rpc_duration_seconds",
                    "gRPC request latency by method",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10).unwrap_or_default()),
                &["method"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            nodes: IntGaugeVec::new(
                Opts::new("dfs_meta_nodes", "storage nodes by state"),
                &["state"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            files: gauge("dfs_meta_files", "regular files in the namespace"),
            chunks: gauge("dfs_meta_chunks", "chunks referenced by files"),
            under_replicated: gauge(
                "dfs_meta_under_replicated_chunks",
                "chunks with fewer replicas on up nodes than the replication factor",
            ),
            lost: gauge(
                "dfs_meta_lost_chunks",
                "chunks with no replica on an up node",
            ),
            repair_commands: counter(
                "dfs_meta_repair_commands_total",
                "replication commands sent to nodes",
            ),
            repairs_done: counter(
                "dfs_meta_repair_replicas_added_total",
                "replicas added by repair",
            ),
            replicas_trimmed: counter(
                "dfs_meta_repair_replicas_trimmed_total",
                "replicas dropped because a chunk had more than the replication factor",
            ),
            repair_queue: gauge(
                "dfs_meta_repair_queue_chunks",
                "chunk copies queued for or running on nodes",
            ),
            leader: gauge(
                "dfs_meta_leader",
                "1 while this server leads (runs repair, trimming, session expiry)",
            ),
            alone: gauge(
                "dfs_meta_alone",
                "1 while this server knows it is the only one on its store (it may grant directories)",
            ),
            sessions_expired: counter(
                "dfs_meta_sessions_expired_total",
                "client sessions whose lease ran out (their locks and orphans released)",
            ),
            purged_files: counter(
                "dfs_meta_purged_files_total",
                "deleted files whose rows and chunks the purge removed (their replicas queued for the nodes)",
            ),
            watchers: gauge(
                "dfs_meta_watchers",
                "client sessions receiving cache invalidations from this server",
            ),
            invalidations_sent: counter(
                "dfs_meta_invalidations_sent_total",
                "entry and inode changes pushed to clients that may cache them",
            ),
            recalls: IntCounterVec::new(
                Opts::new(
                    "dfs_meta_grant_recalls_total",
                    "grants taken back from a session before serving another, by whether it answered or the grant ran out",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            open_files: gauge(
                "dfs_meta_open_files",
                "files open on this meta's clients as they told it (one per session and file)",
            ),
            confirms: IntCounterVec::new(
                Opts::new(
                    "dfs_meta_invalidation_confirms_total",
                    "invalidations a change's caller waited on, by whether the watcher applied them, ran out of time (and was dropped) or was gone",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            registry,
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.rpc_requests.clone()),
            Box::new(m.rpc_seconds.clone()),
            Box::new(m.nodes.clone()),
            Box::new(m.files.clone()),
            Box::new(m.chunks.clone()),
            Box::new(m.under_replicated.clone()),
            Box::new(m.lost.clone()),
            Box::new(m.repair_commands.clone()),
            Box::new(m.repairs_done.clone()),
            Box::new(m.replicas_trimmed.clone()),
            Box::new(m.repair_queue.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.alone.clone()),
            Box::new(m.sessions_expired.clone()),
            Box::new(m.purged_files.clone()),
            Box::new(m.watchers.clone()),
            Box::new(m.invalidations_sent.clone()),
            Box::new(m.recalls.clone()),
            Box::new(m.confirms.clone()),
            Box::new(m.open_files.clone()),
        ];
        register_all(&m.registry, all);
        m
    }
}

impl Default for MetaMetrics {
    fn default() -> Self {
        Self::new()
    }
}
