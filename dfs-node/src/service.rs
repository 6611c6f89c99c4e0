//! The chunk service. A write is stored locally while each piece is forwarded
//! to the next node of the chain as it arrives (pipelined replication); the
//! reply lists every node that stored the chunk and why any did not.

use std::sync::Arc;
use std::time::Instant;

use dfs_auth::ChunkOp;
use dfs_client::chunk_io::downstream_deadline_for;
use dfs_client::Channels;
use dfs_proto::pb::{self, chunk_server::Chunk, write_chunk_request::Msg, WriteChunkRequest};
use dfs_proto::zero_runs;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::chunk_store::{ChunkError, ChunkStore, ChunkWriter};
use crate::metrics::NodeMetrics;
use crate::NodeIdentity;

/// How long forwarding one piece down the chain may wait for room.
const FORWARD_STALL: std::time::Duration = std::time::Duration::from_secs(3);
/// Largest piece sent back on a read.
const READ_PIECE: usize = 1 << 20;
/// Chunks up to this size that this node stores last in its chain are
/// gathered in memory and stored in one step (`store_gathered`).
const GATHER_MAX: u64 = 256 * 1024;
/// A gathered chunk up to this size that need not be durable is written on
/// the request's own thread: it only reaches the page cache (tens of
/// microseconds), less than the hand-off to the blocking pool and back, two
/// thread wake-ups. 4 KiB creates on 3 nodes sharing 2 cores: 425 -> 481
/// files/s. Durable writes (fsync) and larger chunks still go to the pool.
const INLINE_MAX: u64 = 64 * 1024;

pub struct ChunkService {
    store: Arc<ChunkStore>,
    channels: Channels,
    identity: Arc<NodeIdentity>,
    metrics: Arc<NodeMetrics>,
}

impl ChunkService {
    pub fn new(
        store: Arc<ChunkStore>,
        channels: Channels,
        identity: Arc<NodeIdentity>,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        ChunkService {
            store,
            channels,
            identity,
            metrics,
        }
    }
}

/// Runs a blocking disk step on the blocking pool.
/// Chunk ids per ListChunks message (about 400 KB).
const LIST_PAGE: usize = 50_000;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("disk task failed: {e}")))?
        .map_err(Status::from)
}

impl ChunkService {
    /// Stores a small chunk this node is the last of its chain for: its
    /// pieces are gathered (at most the announced length, which is at most
    /// `GATHER_MAX`) and written, checked and installed in one step: on this
    /// thread up to `INLINE_MAX` when not durable, otherwise on the blocking
    /// pool, instead of one hand-off there and back per piece.
    /// Returns the bytes received.
    async fn store_gathered(
        &self,
        header: &pb::WriteHeader,
        stream: &mut Streaming<WriteChunkRequest>,
    ) -> Result<u64, Status> {
        let (id, length) = (header.chunk_id, header.length);
        let mut pieces = Vec::new();
        let mut bytes = 0u64;
        while let Some(msg) = stream.message().await? {
            let n = match &msg.msg {
                Some(Msg::Data(data)) => data.len() as u64,
                Some(Msg::Zeros(n)) => *n,
                _ => return Err(Status::invalid_argument("only data may follow the header")),
            };
            bytes = bytes.saturating_add(n);
            if bytes > length {
                let e = ChunkError::Invalid(format!("chunk {id} got more than {length} bytes"));
                return Err(e.into());
            }
            pieces.push(msg.msg);
        }
        let store = self.store.clone();
        let (crc, durable) = (header.crc32c, header.durable);
        let work = move || {
            let mut writer = store.begin_write(id, length, crc)?;
            for piece in pieces {
                match piece {
                    Some(Msg::Data(data)) => writer.append(&data)?,
                    Some(Msg::Zeros(n)) => writer.append_zeros(n)?,
                    _ => {}
                }
            }
            writer.finish(&store, durable)
        };
        if !durable && length <= INLINE_MAX {
            work().map_err(Status::from)?;
        } else {
            blocking(work).await?;
        }
        Ok(bytes)
    }
}

#[tonic::async_trait]
impl Chunk for ChunkService {
    async fn write_chunk(
        &self,
        req: Request<Streaming<WriteChunkRequest>>,
    ) -> Result<Response<pb::WriteChunkReply>, Status> {
        let start = Instant::now();
        let caller = dfs_auth::authz::caller(&req).cloned();
        let mut stream = req.into_inner();
        let header = match stream.message().await?.and_then(|m| m.msg) {
            Some(Msg::Header(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a chunk write starts with its header",
                ))
            }
        };
        crate::capability::check(
            &self.identity,
            caller.as_ref(),
            ChunkOp::Write,
            header.chunk_id,
            header.token.as_ref(),
            &header.forward,
        )?;
        if header.forward.len() > 15 {
            return Err(Status::invalid_argument("replication chain too long"));
        }
        let my_id = self.identity.node_id();
        if my_id == 0 {
            // Meta may already count this node as up while its reply with our id
            // is still on the way; a write acknowledged as "node 0" could not commit.
            return Err(Status::unavailable("node is not registered with meta yet"));
        }
        if header.forward.is_empty() && header.length <= GATHER_MAX {
            let bytes = self.store_gathered(&header, &mut stream).await?;
            self.metrics.write_bytes.inc_by(bytes);
            self.metrics
                .write_seconds
                .observe(start.elapsed().as_secs_f64());
            return Ok(Response::new(pb::WriteChunkReply {
                stored: vec![my_id],
                failures: vec![],
            }));
        }
        // Start the downstream write first, so pieces flow on as they arrive.
        let (forward_tx, downstream) = match header.forward.split_first() {
            Some((next, rest)) => {
                let (tx, rx) = mpsc::channel::<WriteChunkRequest>(8);
                let first = WriteChunkRequest {
                    msg: Some(Msg::Header(pb::WriteHeader {
                        forward: rest.to_vec(),
                        ..header.clone()
                    })),
                };
                let _ = tx.send(first).await;
                let channels = self.channels.clone();
                let next = next.clone();
                let deadline = downstream_deadline_for(header.length as usize);
                let task = tokio::spawn(async move {
                    let mut client = channels
                        .chunk(&next.addr)
                        .map_err(|e| (e.to_string(), e.errno()))?;
                    let call = client.write_chunk(ReceiverStream::new(rx));
                    match tokio::time::timeout(deadline, call).await {
                        Ok(reply) => reply.map(|r| r.into_inner()).map_err(|s| {
                            (
                                format!("{}: {}", next.addr, s.message()),
                                dfs_proto::errno_of(&s),
                            )
                        }),
                        Err(_) => Err((format!("{}: timed out", next.addr), libc::ETIMEDOUT)),
                    }
                });
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let store = self.store.clone();
        let (id, len, crc) = (header.chunk_id, header.length, header.crc32c);
        let mut writer: ChunkWriter = blocking(move || store.begin_write(id, len, crc)).await?;
        let mut forward_tx = forward_tx;
        let mut bytes = 0u64;
        while let Some(msg) = stream.message().await? {
            // Bytes, or a run of zero bytes (None, n).
            let (data, zeros) = match &msg.msg {
                Some(Msg::Data(data)) => (Some(data.clone()), 0),
                Some(Msg::Zeros(n)) => (None, *n),
                _ => return Err(Status::invalid_argument("only data may follow the header")),
            };
            if let Some(tx) = &forward_tx {
                // A downstream node that stops taking pieces (stalled) is
                // given up on, so it cannot stall this node's own write.
                if tx.send_timeout(msg, FORWARD_STALL).await.is_err() {
                    // Downstream gave up or stalled; its task reports why.
                    forward_tx = None;
                }
            }
            writer = match data {
                Some(data) => {
                    bytes += data.len() as u64;
                    blocking(move || writer.append(&data).map(|()| writer)).await?
                }
                None => {
                    bytes += zeros;
                    blocking(move || writer.append_zeros(zeros).map(|()| writer)).await?
                }
            };
        }
        drop(forward_tx);
        let store = self.store.clone();
        let durable = header.durable;
        blocking(move || writer.finish(&store, durable)).await?;
        self.metrics.write_bytes.inc_by(bytes);
        self.metrics
            .write_seconds
            .observe(start.elapsed().as_secs_f64());
        let mut reply = pb::WriteChunkReply {
            stored: vec![my_id],
            failures: vec![],
        };
        if let Some(task) = downstream {
            let outcome = task
                .await
                .map_err(|e| (e.to_string(), libc::EIO))
                .and_then(|r| r);
            match outcome {
                Ok(down) => {
                    self.metrics.replication_bytes.inc_by(bytes);
                    reply.stored.extend(down.stored);
                    reply.failures.extend(down.failures);
                }
                Err((message, errno)) => {
                    tracing::warn!(chunk = id, %message, "forwarding down the chain failed");
                    // The next node failed; those after it were never reached.
                    if let Some(next) = header.forward.first() {
                        reply.failures.push(pb::ReplicaFailure {
                            addr: next.addr.clone(),
                            node_id: next.node_id,
                            message,
                            errno,
                        });
                    }
                }
            }
        }
        Ok(Response::new(reply))
    }

    type ReadChunkStream = ReceiverStream<Result<pb::ReadChunkReply, Status>>;

    async fn read_chunk(
        &self,
        req: Request<pb::ReadChunkRequest>,
    ) -> Result<Response<Self::ReadChunkStream>, Status> {
        let caller = dfs_auth::authz::caller(&req).cloned();
        let r = req.into_inner();
        crate::capability::check(
            &self.identity,
            caller.as_ref(),
            ChunkOp::Read,
            r.chunk_id,
            r.token.as_ref(),
            &[],
        )?;
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || {
            // Bytes collect up to READ_PIECE; all-zero blocks travel as a count.
            let mut pending = ReadReply::default();
            let mut sent = 0u64;
            let send = |reply: ReadReply, sent: &mut u64| {
                *sent += reply.data.len() as u64 + reply.zeros;
                tx.blocking_send(Ok(reply.into())).is_ok()
            };
            let result = store.read(r.chunk_id, r.offset, r.length, |piece| {
                let zero = zero_runs::is_zero(piece);
                // Bytes and zero runs do not mix in one reply.
                if zero != (pending.zeros > 0)
                    && !pending.is_empty()
                    && !send(std::mem::take(&mut pending), &mut sent)
                {
                    return false;
                }
                if zero {
                    pending.zeros += piece.len() as u64;
                } else {
                    pending.data.extend_from_slice(piece);
                }
                if pending.data.len() >= READ_PIECE {
                    return send(std::mem::take(&mut pending), &mut sent);
                }
                true
            });
            let end = match result {
                Ok(()) if !pending.is_empty() => {
                    sent += pending.data.len() as u64 + pending.zeros;
                    Ok(pending.into())
                }
                Ok(()) => return finish_read(&metrics, sent, start),
                Err(e) => {
                    if matches!(e, ChunkError::Corrupt { .. }) {
                        metrics.crc_failures.inc();
                    }
                    Err(Status::from(e))
                }
            };
            let _ = tx.blocking_send(end);
            finish_read(&metrics, sent, start);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delete_chunks(
        &self,
        req: Request<pb::DeleteChunksRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let ids = req.into_inner().chunk_ids;
        let store = self.store.clone();
        blocking(move || store.delete(&ids)).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn sync_chunks(
        &self,
        req: Request<pb::SyncChunksRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let ids = req.into_inner().chunk_ids;
        let store = self.store.clone();
        blocking(move || store.sync(&ids)).await?;
        Ok(Response::new(pb::Empty {}))
    }

    type ListChunksStream = ReceiverStream<Result<pb::ListChunksReply, Status>>;

    /// Every chunk id on this node's disk, in pages (fsck compares them with
    /// what meta knows).
    async fn list_chunks(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<Self::ListChunksStream>, Status> {
        let store = self.store.clone();
        let mut ids = blocking(move || store.list()).await?;
        ids.sort_unstable();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            for page in ids.chunks(LIST_PAGE) {
                let reply = pb::ListChunksReply {
                    chunk_ids: page.to_vec(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn check_chunk(
        &self,
        req: Request<pb::CheckChunkRequest>,
    ) -> Result<Response<pb::CheckChunkReply>, Status> {
        let id = req.into_inner().chunk_id;
        let store = self.store.clone();
        match blocking(move || store.check(id)).await {
            Ok(intact) => Ok(Response::new(pb::CheckChunkReply {
                intact,
                corrupt: !intact,
            })),
            // Missing: neither intact nor corrupt.
            Err(s) if s.code() == tonic::Code::NotFound => {
                Ok(Response::new(pb::CheckChunkReply::default()))
            }
            Err(s) => Err(s),
        }
    }

    async fn node_info(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeInfoReply>, Status> {
        Ok(Response::new(pb::NodeInfoReply {
            node_id: self.identity.node_id(),
            chunk_count: self.store.chunk_count(),
            used_bytes: self.store.used_bytes(),
        }))
    }
}

/// One read reply being gathered: bytes, or a run of zeros.
#[derive(Default)]
struct ReadReply {
    data: Vec<u8>,
    zeros: u64,
}

impl ReadReply {
    fn is_empty(&self) -> bool {
        self.data.is_empty() && self.zeros == 0
    }
}

impl From<ReadReply> for pb::ReadChunkReply {
    fn from(r: ReadReply) -> Self {
        pb::ReadChunkReply {
            data: r.data.into(),
            zeros: r.zeros,
        }
    }
}

fn finish_read(metrics: &NodeMetrics, bytes: u64, start: Instant) {
    metrics.read_bytes.inc_by(bytes);
    metrics.read_seconds.observe(start.elapsed().as_secs_f64());
}
