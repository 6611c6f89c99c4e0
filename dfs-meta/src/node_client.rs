//! Meta's own calls to nodes (fsck's chunk listings, checks of bad-replica
//! reports), with meta's certificate.

use std::time::Duration;

use dfs_auth::{ClientTls, Role};
use dfs_proto::pb::chunk_client::ChunkClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// A chunk-service client for the node at `addr` (plaintext without `tls`).
pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<ChunkClient<Channel>, Status> {
    let bad = |e: tonic::transport::Error| Status::invalid_argument(e.to_string());
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(bad)?
            .tls_config(tls.to(Role::Node))
            .map_err(bad)?,
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(bad)?,
    }
    .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(ChunkClient::new(channel))
}
