//! dfs-node's Prometheus metrics (names `dfs_node_<what>_<unit>`).

use dfs_common::metrics::{counter, gauge, histogram, register_all};
use prometheus::{Gauge, Histogram, IntCounter, IntGauge, Registry};

pub struct NodeMetrics {
    pub registry: Registry,
    pub write_bytes: IntCounter,
    pub read_bytes: IntCounter,
    pub replication_bytes: IntCounter,
    pub repair_bytes: IntCounter,
    pub crc_failures: IntCounter,
    pub write_seconds: Histogram,
    pub read_seconds: Histogram,
    pub chunks: IntGauge,
    pub spare_files: IntGauge,
    pub used_bytes: IntGauge,
    pub capacity_bytes: IntGauge,
    pub disk_free_bytes: IntGauge,
    pub scrub_chunks: IntCounter,
    pub scrub_bytes: IntCounter,
    pub scrub_errors: IntCounter,
    pub scrub_progress: Gauge,
    pub scrub_last_pass: IntGauge,
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let m = NodeMetrics {
            registry: Registry::new(),
            write_bytes: counter(
                "dfs_node_write_bytes_total",
                "chunk bytes written to this node's disk",
            ),
            read_bytes: counter("dfs_node_read_bytes_total", "chunk bytes served"),
            replication_bytes: counter(
                "dfs_node_replication_bytes_total",
                "bytes forwarded down replication chains",
            ),
            repair_bytes: counter(
                "dfs_node_repair_bytes_total",
                "bytes copied to other nodes by repair",
            ),
            crc_failures: counter(
                "dfs_node_crc_failures_total",
                "chunks that failed checksum verification",
            ),
            write_seconds: histogram(
                "dfs_node_write_duration_seconds",
                "time to receive and store one chunk",
                0.0005,
                4.0,
                9,
            ),
            read_seconds: histogram(
                "dfs_node_read_duration_seconds",
                "time to serve one chunk read",
                0.0005,
                4.0,
                9,
            ),
            chunks: gauge("dfs_node_chunks", "chunks stored"),
            spare_files: gauge(
                "dfs_node_spare_files",
                "emptied chunk files kept for the next writes (spare/)",
            ),
            used_bytes: gauge("dfs_node_used_bytes", "bytes used by chunk files"),
            capacity_bytes: gauge("dfs_node_capacity_bytes", "capacity this node offers"),
            disk_free_bytes: gauge(
                "dfs_node_disk_free_bytes",
                "free bytes on the data directory's file system",
            ),
            scrub_chunks: counter(
                "dfs_node_scrub_chunks_total",
                "chunks verified by the scrubber",
            ),
            scrub_bytes: counter(
                "dfs_node_scrub_bytes_total",
                "bytes verified by the scrubber",
            ),
            scrub_errors: counter(
                "dfs_node_scrub_errors_total",
                "bad chunks found by the scrubber",
            ),
            scrub_progress: Gauge::new(
                "dfs_node_scrub_progress_ratio",
                "share of the current scrub pass done (0..1)",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            scrub_last_pass: gauge(
                "dfs_node_scrub_last_pass_timestamp_seconds",
                "when the last full scrub pass finished (Unix time)",
            ),
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.write_bytes.clone()),
            Box::new(m.read_bytes.clone()),
            Box::new(m.replication_bytes.clone()),
            Box::new(m.repair_bytes.clone()),
            Box::new(m.crc_failures.clone()),
            Box::new(m.write_seconds.clone()),
            Box::new(m.read_seconds.clone()),
            Box::new(m.chunks.clone()),
            Box::new(m.spare_files.clone()),
            Box::new(m.used_bytes.clone()),
            Box::new(m.capacity_bytes.clone()),
            Box::new(m.disk_free_bytes.clone()),
            Box::new(m.scrub_chunks.clone()),
            Box::new(m.scrub_bytes.clone()),
            Box::new(m.scrub_errors.clone()),
            Box::new(m.scrub_progress.clone()),
            Box::new(m.scrub_last_pass.clone()),
        ];
        register_all(&m.registry, all);
        m
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
