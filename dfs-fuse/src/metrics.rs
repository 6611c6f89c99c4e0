//! dfs-fuse's Prometheus metrics (names `dfs_fuse_<what>_<unit>`), served at
//! `-o metrics=ADDR`. Labels are bounded: operation names and errno names.

use dfs_common::metrics::{counter, gauge, register_all};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct FuseMetrics {
    pub registry: Registry,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_evictions: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_capacity: IntGauge,
    pub prefetch_hits: IntCounter,
    pub prefetches: IntCounter,
    pub dirty_bytes: IntGauge,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub read_bytes: IntCounter,
    pub write_bytes: IntCounter,
    pub meta_retries: IntCounter,
    pub meta_timeouts: IntCounter,
    pub sessions_lost: IntCounter,
    pub invalidations: IntCounterVec,
    pub meta_calls: IntCounterVec,
    pub watch_live: IntGauge,
    pub deferred_unlinks: IntCounterVec,
    pub deferred_creates: IntCounterVec,
    pub open_maps: IntCounterVec,
    pub listings: IntCounterVec,
}

impl FuseMetrics {
    pub fn new() -> FuseMetrics {
        let m = FuseMetrics {
            registry: Registry::new(),
            cache_hits: counter(
                "dfs_fuse_cache_hits_total",
                "chunk reads served from the cache",
            ),
            cache_misses: counter(
                "dfs_fuse_cache_misses_total",
                "chunk reads that went to a storage node",
            ),
            cache_evictions: counter(
                "dfs_fuse_cache_evictions_total",
                "chunks evicted from the cache",
            ),
            cache_bytes: gauge("dfs_fuse_cache_bytes", "bytes of chunk data in the cache"),
            cache_capacity: gauge("dfs_fuse_cache_capacity_bytes", "cache bound (cache_size)"),
            prefetch_hits: counter(
                "dfs_fuse_prefetch_hits_total",
                "cache hits on chunks brought in by prefetch",
            ),
            prefetches: counter(
                "dfs_fuse_prefetches_total",
                "chunks fetched ahead of a sequential reader",
            ),
            dirty_bytes: gauge(
                "dfs_fuse_dirty_bytes",
                "written bytes not yet committed (buffers and uploads)",
            ),
            requests: IntCounterVec::new(
                Opts::new("dfs_fuse_requests_total", "FUSE requests by operation"),
                &["op"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            errors: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_request_errors_total",
                    "FUSE requests answered with an error",
                ),
                &["op", "errno"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "dfs_fuse_request_duration_seconds",
                    "FUSE request latency by operation",
                )
                .buckets(prometheus::exponential_buckets(0.00005, 4.0, 10).unwrap_or_default()),
                &["op"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            read_bytes: counter(
                "dfs_fuse_read_bytes_total",
                "bytes returned to applications by read",
            ),
            write_bytes: counter(
                "dfs_fuse_write_bytes_total",
                "bytes accepted from applications by write",
            ),
            meta_retries: counter(
                "dfs_fuse_meta_retries_total",
                "metadata calls sent again because no meta answered (failover, restarts)",
            ),
            meta_timeouts: counter(
                "dfs_fuse_meta_timeouts_total",
                "metadata calls given up after meta_timeout (the application got ETIMEDOUT)",
            ),
            sessions_lost: counter(
                "dfs_fuse_sessions_lost_total",
                "sessions meta expired while this mount lived (its locks and orphans were released)",
            ),
            invalidations: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_invalidations_total",
                    "kernel cache invalidations passed on from meta, by kind (entry, inode; epoch: every entry made stale at once when one waited too long for a directory lock)",
                ),
                &["kind"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            meta_calls: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_meta_calls_total",
                    "metadata RPCs this mount made, by method (retries not counted)",
                ),
                &["method"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            watch_live: gauge(
                "dfs_fuse_watch_live",
                "1 while meta's invalidations reach this mount (long kernel cache times)",
            ),
            deferred_unlinks: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_deferred_unlinks_total",
                    "unlinks answered before meta had them, by outcome on meta (done, gone, failed)",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            deferred_creates: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_deferred_creates_total",
                    "creates answered before meta had them, by outcome on meta (done, failed)",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            open_maps: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_open_maps_total",
                    "files opened (first handle here), by where their chunk map came from (cache, meta)",
                ),
                &["source"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            listings: IntCounterVec::new(
                Opts::new(
                    "dfs_fuse_listings_total",
                    "directory listings (opendir and read), by where their entries came from (cache, meta)",
                ),
                &["source"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.cache_hits.clone()),
            Box::new(m.cache_misses.clone()),
            Box::new(m.cache_evictions.clone()),
            Box::new(m.cache_bytes.clone()),
            Box::new(m.cache_capacity.clone()),
            Box::new(m.prefetch_hits.clone()),
            Box::new(m.prefetches.clone()),
            Box::new(m.dirty_bytes.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.request_seconds.clone()),
            Box::new(m.read_bytes.clone()),
            Box::new(m.write_bytes.clone()),
            Box::new(m.meta_retries.clone()),
            Box::new(m.meta_timeouts.clone()),
            Box::new(m.sessions_lost.clone()),
            Box::new(m.invalidations.clone()),
            Box::new(m.meta_calls.clone()),
            Box::new(m.watch_live.clone()),
            Box::new(m.deferred_unlinks.clone()),
            Box::new(m.deferred_creates.clone()),
            Box::new(m.open_maps.clone()),
            Box::new(m.listings.clone()),
        ];
        register_all(&m.registry, all);
        m
    }
}

impl FuseMetrics {
    /// Brings the metadata channel's counters over (they count on their own).
    pub fn record_meta_stats(&self, stats: &dfs_client::meta::MetaStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (counter, now) in [
            (&self.meta_retries, stats.retries.load(Relaxed)),
            (&self.meta_timeouts, stats.timeouts.load(Relaxed)),
            (&self.sessions_lost, stats.sessions_lost.load(Relaxed)),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        for (method, now) in stats.calls() {
            let counter = self.meta_calls.with_label_values(&[&method]);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }
}

impl Default for FuseMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A short, bounded label for an errno.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENODATA => "ENODATA",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EBADF => "EBADF",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "other",
    }
}
