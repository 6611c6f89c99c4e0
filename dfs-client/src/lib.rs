//! dfs client library, shared by the `dfs` CLI, storage nodes (repair copies)
//! and the FUSE daemon: connections, metadata calls with errno-carrying errors,
//! chunk writes down a replication chain with retry on other nodes, and
//! checksum-verified chunk reads that fall back across replicas.

pub mod channels;
pub mod chunk_io;
pub mod error;
pub mod files;

pub use channels::Channels;
pub use error::ClientError;

use dfs_proto::pb::meta_client::MetaClient;
use tonic::transport::Channel;

/// Connects to the metadata server at `addr` (HOST:PORT). Fails fast when it is unreachable.
pub async fn connect_meta(addr: &str) -> Result<MetaClient<Channel>, ClientError> {
    let channel = channels::endpoint(addr)?
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable(format!("metadata server {addr}: {e}")))?;
    Ok(MetaClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
