//! What every dfs daemon shares: logging setup, the Prometheus `/metrics`
//! endpoint, and the SIGTERM/SIGINT shutdown signal.

pub mod batches;
pub mod incoming;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod shutdown;
