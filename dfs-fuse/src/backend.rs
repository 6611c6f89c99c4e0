//! The two narrow services a file's data path needs, as traits: the
//! metadata calls (`FileMeta`) and chunk I/O (`ChunkStore`). `Cluster`
//! implements both over gRPC; tests put in-memory fakes that fail on
//! purpose (`crate::fake`), so the open-file state machine (buffering,
//! upload, put-back on failure, commit, conflicts, read planning) is tested
//! without a kernel or a cluster.

use std::time::Duration;

use dfs_client::chunk_io::{
    read_chunk, read_chunk_range, upload_chunk, write_chain, UploadedChunk,
};
use dfs_client::{Channels, ClientError, Meta, Placements};
use dfs_proto::pb;
use futures::future::BoxFuture;
use futures::FutureExt;
use prost::bytes::Bytes;

/// One call's answer, owned, so it can be spawned.
pub type Call<T> = BoxFuture<'static, Result<T, ClientError>>;

/// Metadata calls made on behalf of open files.
pub trait FileMeta: Send + Sync {
    /// The file's attributes and chunk map.
    fn get_chunks(&self, ino: u64) -> Call<pb::GetChunksReply>;
    /// Commits uploaded chunks and a size; answers with the new map.
    fn commit_write(&self, request: pb::CommitWriteRequest) -> Call<pb::GetChunksReply>;
    fn punch_hole(&self, request: pb::PunchHoleRequest) -> Call<pb::AttrReply>;
    /// More targets for a chunk (a replica that could not be made durable).
    fn place_chunk(&self, request: pb::PlaceChunkRequest) -> Call<pb::PlaceChunkReply>;
    fn replica_added(&self, request: pb::ReplicaAddedRequest) -> Call<()>;
    fn forget_replica(&self, request: pb::ForgetReplicaRequest) -> Call<()>;
    /// fcntl-style locks (the append lock).
    fn lock(&self, request: pb::LockRequest) -> Call<pb::LockReply>;
}

/// Chunk bytes to and from the storage nodes.
pub trait ChunkStore: Send + Sync {
    /// Stores a new chunk on as many nodes as the cluster wants (under a
    /// fresh id); `durable`: each replica fsyncs before it answers.
    fn upload(&self, data: Bytes, durable: bool) -> Call<UploadedChunk>;
    /// A whole committed chunk, verified against its recorded checksum.
    fn read(&self, chunk: pb::ChunkRef) -> Call<Bytes>;
    /// `length` bytes at `offset` of a committed chunk.
    fn read_range(&self, chunk: pb::ChunkRef, offset: u64, length: u64) -> Call<Bytes>;
    /// Has the node at `addr` fsync these chunks, within `deadline`.
    fn sync(&self, addr: String, chunk_ids: Vec<u64>, deadline: Duration) -> Call<()>;
    /// Writes an existing chunk's bytes to `targets` (a replacement
    /// replica); answers with the nodes that stored it.
    /// `token` is the write token of the placement that chose `targets`.
    fn copy(
        &self,
        chunk_id: u64,
        data: Bytes,
        crc32c: u32,
        targets: Vec<pb::NodeRef>,
        token: Option<pb::ChunkToken>,
    ) -> BoxFuture<'static, Vec<u64>>;
}

/// The real cluster: meta over its failover channel, nodes over gRPC.
#[derive(Clone)]
pub struct Cluster {
    pub meta: Meta,
    pub channels: Channels,
    /// Fresh chunk ids and targets, fetched from meta a batch at a time.
    pub placements: Placements,
}

fn empty<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), ClientError> {
    r.map(|_| ()).map_err(ClientError::from)
}

fn inner<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, ClientError> {
    r.map(tonic::Response::into_inner)
        .map_err(ClientError::from)
}

impl FileMeta for Cluster {
    fn get_chunks(&self, ino: u64) -> Call<pb::GetChunksReply> {
        let mut meta = self.meta.clone();
        async move { inner(meta.get_chunks(pb::GetChunksRequest { ino }).await) }.boxed()
    }

    fn commit_write(&self, request: pb::CommitWriteRequest) -> Call<pb::GetChunksReply> {
        let mut meta = self.meta.clone();
        async move { inner(meta.commit_write(request).await) }.boxed()
    }

    fn punch_hole(&self, request: pb::PunchHoleRequest) -> Call<pb::AttrReply> {
        let mut meta = self.meta.clone();
        async move { inner(meta.punch_hole(request).await) }.boxed()
    }

    fn place_chunk(&self, request: pb::PlaceChunkRequest) -> Call<pb::PlaceChunkReply> {
        let mut meta = self.meta.clone();
        async move { inner(meta.place_chunk(request).await) }.boxed()
    }

    fn replica_added(&self, request: pb::ReplicaAddedRequest) -> Call<()> {
        let mut meta = self.meta.clone();
        async move { empty(meta.replica_added(request).await) }.boxed()
    }

    fn forget_replica(&self, request: pb::ForgetReplicaRequest) -> Call<()> {
        let mut meta = self.meta.clone();
        async move { empty(meta.forget_replica(request).await) }.boxed()
    }

    fn lock(&self, request: pb::LockRequest) -> Call<pb::LockReply> {
        let mut meta = self.meta.clone();
        async move { inner(meta.lock(request).await) }.boxed()
    }
}

impl ChunkStore for Cluster {
    fn upload(&self, data: Bytes, durable: bool) -> Call<UploadedChunk> {
        let this = self.clone();
        async move {
            let mut meta = this.meta.clone();
            upload_chunk(&mut meta, &this.channels, &this.placements, data, durable).await
        }
        .boxed()
    }

    fn read(&self, chunk: pb::ChunkRef) -> Call<Bytes> {
        let this = self.clone();
        async move {
            let mut meta = this.meta.clone();
            read_chunk(Some(&mut meta), &this.channels, &chunk).await
        }
        .boxed()
    }

    fn read_range(&self, chunk: pb::ChunkRef, offset: u64, length: u64) -> Call<Bytes> {
        let this = self.clone();
        async move {
            let mut meta = this.meta.clone();
            read_chunk_range(Some(&mut meta), &this.channels, &chunk, offset, length).await
        }
        .boxed()
    }

    fn sync(&self, addr: String, chunk_ids: Vec<u64>, deadline: Duration) -> Call<()> {
        let channels = self.channels.clone();
        async move {
            let mut client = channels.chunk(&addr)?;
            let call = client.sync_chunks(pb::SyncChunksRequest { chunk_ids });
            match tokio::time::timeout(deadline, call).await {
                Ok(r) => empty(r),
                Err(_) => Err(ClientError::Unreachable(format!("{addr}: sync timed out"))),
            }
        }
        .boxed()
    }

    fn copy(
        &self,
        chunk_id: u64,
        data: Bytes,
        crc32c: u32,
        targets: Vec<pb::NodeRef>,
        token: Option<pb::ChunkToken>,
    ) -> BoxFuture<'static, Vec<u64>> {
        let channels = self.channels.clone();
        async move {
            let t = token.as_ref();
            write_chain(&channels, chunk_id, &data, crc32c, true, &targets, t)
                .await
                .stored
        }
        .boxed()
    }
}
