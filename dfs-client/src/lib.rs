//! dfs client library, shared by the `dfs` CLI, storage nodes (repair copies)
//! and the FUSE daemon: connections, metadata calls with errno-carrying errors,
//! chunk writes down a replication chain with retry on other nodes, and
//! checksum-verified chunk reads that fall back across replicas. The metadata
//! channel (`meta`) fails over between metas and retries what no meta answered.

pub mod buffers;
pub mod channels;
pub mod chunk_io;
pub mod commit;
pub mod error;
pub mod files;
pub mod meta;
pub mod placements;

pub use channels::Channels;
pub use error::ClientError;
pub use meta::Meta;
pub use placements::Placements;
