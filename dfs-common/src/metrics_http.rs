//! Serves a Prometheus registry at `GET /metrics` in the text exposition format.

use std::net::SocketAddr;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds `addr` now (so a bad address fails start-up) and serves until `shutdown` fires.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    addr: &str,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(registry);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%local, "metrics at http://{local}/metrics");
    Ok(local)
}

async fn render(State(registry): State<Registry>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
}
