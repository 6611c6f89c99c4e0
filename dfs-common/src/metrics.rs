//! Building and registering Prometheus metrics with static definitions, shared
//! by every daemon's `metrics.rs`. A definition error is a programming error
//! caught by the first test run, hence `unreachable!`.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

pub fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

/// A histogram with exponential buckets from `start`, `count` of them, each `factor` apart.
pub fn histogram(name: &str, help: &str, start: f64, factor: f64, count: usize) -> Histogram {
    let buckets = prometheus::exponential_buckets(start, factor, count).unwrap_or_default();
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

/// Registers every collector, logging (not failing on) a duplicate.
pub fn register_all(registry: &Registry, collectors: Vec<Box<dyn Collector>>) {
    for c in collectors {
        if let Err(e) = registry.register(c) {
            tracing::warn!(error = %e, "metric registration failed");
        }
    }
}
