//! Moving one chunk: writing it down a replication chain (retrying missing
//! replicas on other nodes) and reading it back with its checksum verified.

use std::collections::HashSet;
use std::time::Duration;

use dfs_proto::pb::{self, write_chunk_request::Msg, NodeRef, WriteChunkRequest, WriteHeader};
use dfs_proto::zero_runs;
use prost::bytes::Bytes;

use crate::error::Shortfall;
use crate::{Channels, ClientError};

/// Size of the data messages a chunk travels in; small enough to pipeline down the chain.
pub const PIECE: usize = 512 * 1024;
/// Rounds of "place more targets, write again" before a write gives up.
const MAX_WRITE_ROUNDS: usize = 6;

/// Which nodes of a chain stored the chunk, and which failed and why. Nodes in
/// neither list were never reached and may be tried again.
#[derive(Debug, Default)]
pub struct ChainOutcome {
    pub stored: Vec<u64>,
    pub failed: Vec<ReplicaFailure>,
}

/// A node that did not store a chunk, and why.
#[derive(Debug, Clone)]
pub struct ReplicaFailure {
    pub node_id: u64,
    pub reason: String,
    /// ENOSPC (its disk is full), ETIMEDOUT (stalled or unreachable), EIO...
    pub errno: i32,
}

/// A chunk that is on enough nodes to be committed.
#[derive(Debug, Clone)]
pub struct UploadedChunk {
    pub chunk_id: u64,
    pub crc32c: u32,
    pub stored_len: u64,
    pub node_ids: Vec<u64>,
    /// Replicas the cluster wants; more than `node_ids.len()` means under-replicated.
    pub replication: u32,
}

/// How long one chunk transfer (a chain write, a read) may take: 10 s plus
/// 1 s per 4 MiB. A node that misses it is treated as unavailable for this
/// transfer (the write goes to another node, the read to another replica),
/// so a stalled node costs a writer this long, not forever; a slow one only
/// costs a retry elsewhere.
pub fn deadline_for(len: usize) -> Duration {
    Duration::from_secs(10 + (len as u64 >> 22))
}

/// How long a node of a chain waits for the rest of the chain: less than
/// the writer waits for the head, so the head can still report which
/// downstream node failed.
pub fn downstream_deadline_for(len: usize) -> Duration {
    deadline_for(len).saturating_sub(Duration::from_secs(3))
}

/// Chunks up to this size go to every target at once instead of down a chain:
/// for small data the chain's serial hops are the whole cost (a 4 KiB file's
/// close waited for three nodes one after another).
pub const FAN_OUT_MAX: usize = 256 * 1024;

/// Stores `data` on every target: small chunks are sent to each target in
/// parallel, larger ones stream to `targets[0]`, which stores and forwards them
/// down the chain (each byte leaves the client once).
/// `token`: the client's write token for `targets` (None between nodes).
pub async fn write_chain(
    channels: &Channels,
    chunk_id: u64,
    data: &Bytes,
    crc32c: u32,
    durable: bool,
    targets: &[NodeRef],
    token: Option<&pb::ChunkToken>,
) -> ChainOutcome {
    let chunk = ChunkWrite {
        chunk_id,
        data,
        crc32c,
        durable,
        token,
    };
    if data.len() > FAN_OUT_MAX || targets.len() < 2 {
        return write_down_chain(channels, &chunk, targets).await;
    }
    let writes = targets
        .iter()
        .map(|t| write_down_chain(channels, &chunk, std::slice::from_ref(t)));
    let mut outcome = ChainOutcome::default();
    for one in futures::future::join_all(writes).await {
        outcome.stored.extend(one.stored);
        outcome.failed.extend(one.failed);
    }
    outcome
}

/// One chunk on its way to nodes.
struct ChunkWrite<'a> {
    chunk_id: u64,
    data: &'a Bytes,
    crc32c: u32,
    durable: bool,
    token: Option<&'a pb::ChunkToken>,
}

/// Streams `data` to `targets[0]`, which stores it and forwards it to the rest.
async fn write_down_chain(
    channels: &Channels,
    chunk: &ChunkWrite<'_>,
    targets: &[NodeRef],
) -> ChainOutcome {
    let (chunk_id, data, crc32c, durable) =
        (chunk.chunk_id, chunk.data, chunk.crc32c, chunk.durable);
    let Some(first) = targets.first() else {
        return ChainOutcome::default();
    };
    // When the head fails nothing is known of the rest: they stay untried, not failed.
    let all_failed = |reason: String, errno: i32| ChainOutcome {
        stored: Vec::new(),
        failed: vec![ReplicaFailure {
            node_id: first.node_id,
            reason,
            errno,
        }],
    };
    let mut client = match channels.chunk(&first.addr) {
        Ok(c) => c,
        Err(e) => return all_failed(e.to_string(), e.errno()),
    };
    let header = WriteChunkRequest {
        msg: Some(Msg::Header(WriteHeader {
            chunk_id,
            length: data.len() as u64,
            crc32c,
            durable,
            forward: targets[1..].to_vec(),
            token: chunk.token.cloned(),
        })),
    };
    let pieces = zero_runs::split(data, PIECE)
        .into_iter()
        .map(|piece| WriteChunkRequest {
            msg: Some(match piece {
                zero_runs::Piece::Data(range) => Msg::Data(data.slice(range)),
                zero_runs::Piece::Zeros(n) => Msg::Zeros(n),
            }),
        });
    let messages: Vec<WriteChunkRequest> = std::iter::once(header).chain(pieces).collect();
    let call = client.write_chunk(futures::stream::iter(messages));
    match tokio::time::timeout(deadline_for(data.len()), call).await {
        Ok(Ok(reply)) => {
            let reply = reply.into_inner();
            ChainOutcome {
                stored: reply.stored,
                failed: reply
                    .failures
                    .into_iter()
                    .map(|f| ReplicaFailure {
                        node_id: f.node_id,
                        reason: f.message,
                        errno: f.errno,
                    })
                    .collect(),
            }
        }
        Ok(Err(status)) => all_failed(
            format!("{}: {}", first.addr, status.message()),
            dfs_proto::errno_of(&status),
        ),
        Err(_) => all_failed(format!("{}: timed out", first.addr), libc::ETIMEDOUT),
    }
}

/// How long a small write waits for a node before a spare node is asked to
/// take its replica too (a hedged write): a stalled node (SIGSTOP, a hung
/// disk) then costs a writer this long, not the whole transfer deadline.
fn write_patience(durable: bool) -> Duration {
    Duration::from_millis(if durable { 3_000 } else { 1_500 })
}

/// Writes one chunk to as many nodes as the cluster wants. Nodes that fail are
/// replaced by others while any are left; a small chunk whose node is slow
/// past `write_patience` is also sent to a spare node, and the first copies
/// to land count; nodes that were that slow are passed over by the next
/// writes for a while (`Channels::mark_slow`). Without a spare node, the
/// write stops waiting for a slow one after four times its patience once
/// the minimum is stored (a degraded write). The write succeeds when every wanted replica holds the
/// data, or (with too few nodes up) at least the cluster's minimum does.
/// Otherwise it fails and nothing refers to the chunk.
pub async fn upload_chunk(
    meta: &mut crate::Meta,
    channels: &Channels,
    placements: &crate::Placements,
    data: Bytes,
    durable: bool,
) -> Result<UploadedChunk, ClientError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let crc32c = crc32c::crc32c(&data);
    let placement = placements.take(meta).await?;
    let chunk_id = placement.chunk_id;
    let replication = placement.replication.max(1) as usize;
    let min_replicas = placement.min_replicas.clamp(1, replication as u32) as usize;
    let fan_out = data.len() <= FAN_OUT_MAX;
    let mut stored: Vec<u64> = Vec::new();
    let mut failed: HashSet<u64> = HashSet::new();
    // Nodes written to that have not answered yet.
    let mut pending: HashSet<u64> = HashSet::new();
    let mut errors: Vec<String> = Vec::new();
    let mut errnos: Vec<i32> = Vec::new();
    let mut writes = FuturesUnordered::new();
    // Writes to `targets` under `token` (each placement comes with its own).
    let start = |more: Targets, pending: &mut HashSet<u64>| {
        let groups: Vec<Vec<NodeRef>> = if fan_out {
            more.targets.into_iter().map(|t| vec![t]).collect()
        } else {
            vec![more.targets]
        };
        groups
            .into_iter()
            .map(|group| {
                pending.extend(group.iter().map(|t| t.node_id));
                let (data, token) = (&data, more.token.clone());
                async move {
                    let chunk = ChunkWrite {
                        chunk_id,
                        data,
                        crc32c,
                        durable,
                        token: token.as_ref(),
                    };
                    let outcome = write_down_chain(channels, &chunk, &group).await;
                    (group, outcome)
                }
            })
            .collect::<Vec<_>>()
    };
    let first = Targets {
        targets: placement.targets,
        token: placement.token,
    };
    if fan_out && first.targets.iter().any(|t| channels.is_slow(t.node_id)) {
        // Nodes that just kept writes waiting: spare nodes take their place
        // where there are any (the slow ones are tried only if not).
        let (slow, fresh): (Vec<NodeRef>, Vec<NodeRef>) = first
            .targets
            .iter()
            .cloned()
            .partition(|t| channels.is_slow(t.node_id));
        let exclude = slow.iter().chain(&fresh).map(|t| t.node_id).collect();
        let spares = place_more(meta, chunk_id, slow.len(), exclude)
            .await
            .unwrap_or_default();
        let missing = slow.len().saturating_sub(spares.targets.len());
        let kept = fresh
            .into_iter()
            .chain(slow.into_iter().take(missing))
            .collect();
        writes.extend(start(
            Targets {
                targets: kept,
                token: first.token,
            },
            &mut pending,
        ));
        writes.extend(start(spares, &mut pending));
    } else {
        writes.extend(start(first, &mut pending));
    }
    let mut rounds = 1;
    let mut hedged = false;
    let mut no_spares = false;
    let give_up_slow_at = tokio::time::Instant::now() + 4 * write_patience(durable);
    loop {
        let patience = tokio::time::sleep(write_patience(durable));
        let can_hedge = fan_out && !hedged && !pending.is_empty() && rounds < MAX_WRITE_ROUNDS;
        let answer = tokio::select! {
            answer = writes.next() => answer,
            () = patience, if can_hedge => {
                // Slow nodes: spare nodes take their replicas too.
                hedged = true;
                rounds += 1;
                let exclude = failed.iter().chain(&stored).chain(&pending).copied().collect();
                let want = pending.len().min(replication.saturating_sub(stored.len()));
                tracing::info!(chunk_id, slow = ?pending, "slow replica write: a spare node takes a copy too");
                for node in &pending {
                    channels.mark_slow(*node);
                }
                match place_more(meta, chunk_id, want, exclude).await {
                    Ok(more) if !more.targets.is_empty() => writes.extend(start(more, &mut pending)),
                    _ => no_spares = true,
                }
                continue;
            }
            // No spare node, enough copies, and the slow ones still silent
            // long after: a degraded write (repair makes the missing copies
            // later) instead of waiting out the transfer deadline.
            () = tokio::time::sleep_until(give_up_slow_at), if no_spares && stored.len() >= min_replicas => {
                tracing::info!(chunk_id, slow = ?pending, "slow replica write: committing without it");
                break;
            }
        };
        let Some((group, outcome)) = answer else {
            // Every write answered and too few copies: place more.
            if stored.len() >= replication || rounds >= MAX_WRITE_ROUNDS {
                break;
            }
            rounds += 1;
            hedged = false;
            let exclude = failed.iter().chain(&stored).copied().collect();
            match place_more(meta, chunk_id, replication - stored.len(), exclude).await {
                Ok(more) if !more.targets.is_empty() => writes.extend(start(more, &mut pending)),
                Ok(_) => break,
                Err(e) if e.errno() == libc::ENOSPC => break,
                Err(e) => return Err(e),
            }
            continue;
        };
        for t in &group {
            pending.remove(&t.node_id);
        }
        for f in &outcome.failed {
            tracing::warn!(chunk_id, node = f.node_id, error = %f.reason, "replica write failed");
            failed.insert(f.node_id);
            errnos.push(f.errno);
            errors.push(format!("node {}: {}", f.node_id, f.reason));
        }
        for id in outcome.stored {
            channels.mark_answering(id);
            if !stored.contains(&id) {
                stored.push(id);
            }
        }
        if no_spares && stored.len() >= min_replicas && pending.iter().all(|n| channels.is_slow(*n))
        {
            break;
        }
        if stored.len() >= replication {
            // Writes still in flight (a slow node) are dropped: if one lands
            // anyway, the extra copy is trimmed later.
            break;
        }
    }
    if stored.len() < min_replicas {
        let detail = if errors.is_empty() {
            "not enough storage nodes are up".to_string()
        } else {
            errors.join("; ")
        };
        let message = format!(
            "chunk reached {} of {} replicas, at least {} needed: {}",
            stored.len(),
            replication,
            min_replicas,
            detail
        );
        return Err(ClientError::ReplicationShortfall {
            cause: shortfall_cause(&errnos),
            message,
        });
    }
    Ok(UploadedChunk {
        chunk_id,
        crc32c,
        stored_len: data.len() as u64,
        node_ids: stored,
        replication: replication as u32,
    })
}

/// Nodes to write a chunk to, and the token that lets this client.
#[derive(Debug, Default)]
struct Targets {
    targets: Vec<NodeRef>,
    token: Option<pb::ChunkToken>,
}

/// `count` more targets for a chunk, none of `exclude`.
async fn place_more(
    meta: &mut crate::Meta,
    chunk_id: u64,
    count: usize,
    exclude: Vec<u64>,
) -> Result<Targets, ClientError> {
    if count == 0 {
        return Ok(Targets::default());
    }
    let reply = meta
        .place_chunk(pb::PlaceChunkRequest {
            chunk_id,
            count: count as u32,
            exclude_node_ids: exclude,
            batch: 0,
        })
        .await?
        .into_inner();
    Ok(Targets {
        targets: reply.targets,
        token: reply.token,
    })
}

/// Why a write fell short, from the errnos of the nodes that failed it:
/// space ran out only if no node could be placed at all or every node that
/// failed was full. A stall, a timeout or an I/O error is not a full disk.
fn shortfall_cause(errnos: &[i32]) -> Shortfall {
    if errnos.iter().all(|e| *e == libc::ENOSPC) {
        Shortfall::NoSpace
    } else {
        Shortfall::NodesFailed
    }
}

/// Reads one replica's range of a chunk (the node checks its block checksums).
pub async fn read_replica(
    channels: &Channels,
    addr: &str,
    chunk: &pb::ChunkRef,
    offset: u64,
    length: u64,
) -> Result<Bytes, ClientError> {
    let mut client = channels.chunk(addr)?;
    let call = async {
        let mut stream = client
            .read_chunk(pb::ReadChunkRequest {
                chunk_id: chunk.chunk_id,
                offset,
                length,
                token: chunk.read_token.clone(),
            })
            .await?
            .into_inner();
        let mut buf = crate::buffers::take(length as usize);
        while let Some(msg) = stream.message().await? {
            if msg.data.is_empty() {
                let zeros =
                    (msg.zeros as usize).min(length as usize - buf.len().min(length as usize));
                let to = buf.len() + zeros;
                zero_runs::zero_extend(&mut buf, to);
            } else {
                buf.extend_from_slice(&msg.data);
            }
        }
        Ok::<_, ClientError>(crate::buffers::freeze(buf))
    };
    tokio::time::timeout(deadline_for(length as usize), call)
        .await
        .map_err(|_| ClientError::Unreachable(format!("{addr}: read timed out")))?
}

/// Reads a whole chunk from the first replica that returns it intact (length
/// and crc32c as committed). A replica with a bad checksum is reported to meta.
pub async fn read_chunk(
    meta: Option<&mut crate::Meta>,
    channels: &Channels,
    chunk: &pb::ChunkRef,
) -> Result<Bytes, ClientError> {
    read_verified(meta, channels, chunk, 0, chunk.stored_len, |data| {
        data.len() as u64 == chunk.stored_len && crc32c::crc32c(data) == chunk.crc32c
    })
    .await
}

/// Reads `length` bytes at `offset` of a chunk (clamped to its stored length)
/// from the first replica that returns them. The node verifies the checksum of
/// every block it serves; a replica that finds one bad is reported to meta.
pub async fn read_chunk_range(
    meta: Option<&mut crate::Meta>,
    channels: &Channels,
    chunk: &pb::ChunkRef,
    offset: u64,
    length: u64,
) -> Result<Bytes, ClientError> {
    let expected = length.min(chunk.stored_len.saturating_sub(offset));
    read_verified(meta, channels, chunk, offset, expected, |data| {
        data.len() as u64 == expected
    })
    .await
}

/// How long a replica may take to answer before the next one is asked too
/// (a hedged read): a stalled node (SIGSTOP, a hung disk) costs a reader this
/// much, not the whole read deadline.
fn hedge_after(length: u64) -> Duration {
    Duration::from_millis(500 + (length >> 16))
}

/// Reads from the replicas in order until one returns data that `intact`
/// accepts. A replica slower than `hedge_after` gets company: the next one
/// is asked too, and the first good answer wins.
async fn read_verified(
    meta: Option<&mut crate::Meta>,
    channels: &Channels,
    chunk: &pb::ChunkRef,
    offset: u64,
    length: u64,
    intact: impl Fn(&Bytes) -> bool,
) -> Result<Bytes, ClientError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut problems = Vec::new();
    let mut bad = Vec::new();
    let mut missing = 0;
    let read = |replica: &'_ pb::NodeRef| {
        let replica = replica.clone();
        async move {
            let result = read_replica(channels, &replica.addr, chunk, offset, length).await;
            (replica, result)
        }
    };
    let mut reads = FuturesUnordered::new();
    let mut next = 0;
    let mut found = None;
    while found.is_none() {
        if reads.is_empty() {
            let Some(replica) = chunk.replicas.get(next) else {
                break;
            };
            next += 1;
            reads.push(read(replica));
        }
        let answer = tokio::select! {
            answer = reads.next() => answer,
            () = tokio::time::sleep(hedge_after(length)), if next < chunk.replicas.len() => {
                let replica = &chunk.replicas[next];
                next += 1;
                tracing::debug!(chunk = chunk.chunk_id, addr = %replica.addr, "hedged read");
                reads.push(read(replica));
                continue;
            }
        };
        let Some((replica, result)) = answer else {
            continue;
        };
        match result {
            Ok(data) if intact(&data) => found = Some(data),
            // The node verified every block it sent, so a mismatch here is
            // not its disk's word: try the next replica, drop nothing.
            Ok(data) => {
                tracing::warn!(
                    chunk = chunk.chunk_id,
                    addr = %replica.addr,
                    "replica data does not match the committed checksum or length"
                );
                problems.push(format!(
                    "{}: checksum or length mismatch ({} bytes)",
                    replica.addr,
                    data.len()
                ));
            }
            // Corrupt, confirmed by the node (it re-read the block and moved
            // the chunk aside): the one case reported to meta. Anything else
            // (EIO, EMFILE, a timeout, a node down) is only unavailable now.
            Err(ClientError::Remote { errno, message }) if errno == libc::EBADMSG => {
                problems.push(format!("{}: {message}", replica.addr));
                bad.push(replica.node_id);
            }
            Err(e) => {
                // Gone from the node, or this map's token expired: either
                // way a fresh chunk map is what the caller needs.
                if e.errno() == libc::ENOENT || e.errno() == libc::EKEYEXPIRED {
                    missing += 1;
                }
                problems.push(format!("{}: {e}", replica.addr))
            }
        }
    }
    if let (Some(meta), false) = (meta, bad.is_empty()) {
        for node_id in bad {
            let report = pb::BadReplicaRequest {
                chunk_id: chunk.chunk_id,
                node_id,
            };
            if let Err(e) = meta.report_bad_replica(report).await {
                tracing::warn!(error = %e, "could not report a bad replica");
            }
        }
    }
    if let Some(data) = found {
        return Ok(data);
    }
    if missing > 0 && missing == chunk.replicas.len() {
        return Err(ClientError::ChunkGone {
            chunk_id: chunk.chunk_id,
        });
    }
    if chunk.replicas.is_empty() {
        problems.push("no replica is known".into());
    }
    Err(ClientError::ChunkUnreadable {
        chunk_id: chunk.chunk_id,
        detail: problems.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_disks_make_a_shortfall_enospc() {
        // No node could be placed at all: the cluster is out of space.
        assert_eq!(shortfall_cause(&[]), Shortfall::NoSpace);
        assert_eq!(
            shortfall_cause(&[libc::ENOSPC, libc::ENOSPC]),
            Shortfall::NoSpace
        );
        // One node timed out: that is a fault, not a full cluster.
        assert_eq!(
            shortfall_cause(&[libc::ENOSPC, libc::ETIMEDOUT]),
            Shortfall::NodesFailed
        );
        assert_eq!(shortfall_cause(&[libc::EIO]), Shortfall::NodesFailed);
    }
}
