//! What the store records about itself: transaction latency, conflict retries,
//! statements sent, and errors by kind (names `dfs_meta_store_*`).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::StoreError;

#[derive(Clone)]
pub struct StoreMetrics {
    pub transaction_seconds: Histogram,
    pub retries: IntCounter,
    pub errors: IntCounterVec,
    /// Statements sent to the database: a round trip each on PostgreSQL
    /// (deferred writes sent together count once).
    pub statements: IntCounter,
    /// Early unlinks and creates committed per transaction (`together.rs`).
    pub batches: Histogram,
}

impl StoreMetrics {
    pub fn new() -> StoreMetrics {
        StoreMetrics {
            transaction_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "dfs_meta_store_transaction_duration_seconds",
                    "metadata transaction latency, retries included",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10).unwrap_or_default()),
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            retries: IntCounter::new(
                "dfs_meta_store_transaction_retries_total",
                "transactions run again after a serialization conflict",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            errors: IntCounterVec::new(
                Opts::new(
                    "dfs_meta_store_errors_total",
                    "failed metadata transactions by kind",
                ),
                &["kind"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            statements: IntCounter::new(
                "dfs_meta_store_statements_total",
                "statements sent to the database (a round trip each on PostgreSQL)",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            batches: Histogram::with_opts(
                HistogramOpts::new(
                    "dfs_meta_store_batch_calls",
                    "early unlinks and creates committed in one transaction",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        }
    }

    pub fn observe(&self, elapsed: Duration, error: Option<&StoreError>) {
        self.transaction_seconds.observe(elapsed.as_secs_f64());
        if let Some(e) = error {
            self.errors.with_label_values(&[e.kind()]).inc();
        }
    }

    pub fn register(&self, registry: &Registry) {
        for c in [
            Box::new(self.transaction_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.retries.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.statements.clone()),
            Box::new(self.batches.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "metric registration failed");
            }
        }
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}
