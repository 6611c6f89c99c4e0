//! Whole-file transfer by path, as the CLI's `put` and `get` do it.
//!
//! `put` is atomic: data goes into a hidden temporary file, and only a fully
//! committed file is renamed to its name, so a failed upload never leaves a
//! partial file visible (the temporary one is removed on failure).

use std::collections::VecDeque;
use std::sync::Arc;

use dfs_proto::pb;
use futures::stream::{FuturesOrdered, StreamExt};
use prost::bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::chunk_io::{read_chunk, upload_chunk, UploadedChunk};
use crate::commit::{commit, commit_size, Written};
use crate::error::Refusal;
use crate::{Channels, ClientError};

/// Chunks transferred at once by one put or get (bounds memory to this many chunks).
const PARALLEL_CHUNKS: usize = 4;
/// Chunks committed to meta per transaction during a put.
const COMMIT_BATCH: usize = 8;

pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct PutOptions {
    /// fsync every replica before the put returns (fsync semantics), not only close semantics.
    pub durable: bool,
    /// Replace an existing file (atomically) instead of failing with EEXIST.
    pub overwrite: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub progress: Option<Progress>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            durable: false,
            overwrite: false,
            mode: 0o644,
            uid: 0,
            gid: 0,
            progress: None,
        }
    }
}

#[derive(Debug)]
pub struct PutOutcome {
    pub attr: pb::Attr,
    pub chunks: usize,
    /// Chunks stored on fewer nodes than the cluster wants (nodes were down).
    pub under_replicated: usize,
}

/// Splits "/a/b/c" into ("/a/b", "c"), validating the final name.
pub fn split_path(path: &str) -> Result<(&str, &str), ClientError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    dfs_proto::validate_name(name.as_bytes()).map_err(|e| {
        let refusal = Refusal::BadName {
            errno: e.errno(),
            reason: e.to_string(),
        };
        ClientError::refused(path, refusal)
    })?;
    Ok((if parent.is_empty() { "/" } else { parent }, name))
}

pub async fn resolve(meta: &mut crate::Meta, path: &str) -> Result<pb::Attr, ClientError> {
    let reply = meta
        .resolve_path(pb::ResolvePathRequest {
            path: path.as_bytes().to_vec(),
        })
        .await
        .map_err(|s| ClientError::from(s).with_path(path))?;
    reply
        .into_inner()
        .attr
        .ok_or_else(|| ClientError::BadReply("reply without attributes".into()))
}

/// Uploads everything `reader` yields to `path`.
pub async fn put(
    meta: &mut crate::Meta,
    channels: &Channels,
    path: &str,
    mut reader: impl AsyncRead + Unpin,
    opts: PutOptions,
) -> Result<PutOutcome, ClientError> {
    let (parent_path, name) = split_path(path)?;
    let parent = resolve(meta, parent_path).await?;
    if parent.kind != pb::FileKind::Directory as i32 {
        return Err(ClientError::refused(parent_path, Refusal::NotADirectory));
    }
    if !opts.overwrite {
        match resolve(meta, path).await {
            Ok(_) => return Err(ClientError::refused(path, Refusal::Exists)),
            Err(e) if e.errno() == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
    }
    let temp_name = format!(".dfs-put.{:016x}", rand_u64());
    let temp = meta
        .create(pb::CreateRequest {
            parent: parent.ino,
            name: temp_name.as_bytes().to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: opts.mode,
            uid: opts.uid,
            gid: opts.gid,
            rdev: 0,
            symlink_target: vec![],
            ..Default::default()
        })
        .await?
        .into_inner()
        .attr
        .ok_or_else(|| ClientError::BadReply("reply without attributes".into()))?;
    let result = async {
        let outcome = upload_into(meta, channels, temp.ino, &mut reader, &opts).await?;
        meta.rename(pb::RenameRequest {
            parent: parent.ino,
            name: temp_name.as_bytes().to_vec(),
            new_parent: parent.ino,
            new_name: name.as_bytes().to_vec(),
            flags: if opts.overwrite { 0 } else { 1 },
            keep_open: false,
        })
        .await
        .map_err(|s| ClientError::from(s).with_path(path))?;
        if opts.durable {
            // The file's name and chunk map must be on meta's disk too.
            meta.sync(pb::Empty {}).await?;
        }
        Ok(outcome)
    }
    .await;
    if result.is_err() {
        let cleanup = pb::UnlinkRequest {
            parent: parent.ino,
            name: temp_name.into_bytes(),
            keep_open: false,
            expect_ino: 0,
        };
        if let Err(e) = meta.unlink(cleanup).await {
            tracing::warn!(error = %e, "could not remove the temporary upload file");
        }
    }
    result
}

async fn upload_into(
    meta: &mut crate::Meta,
    channels: &Channels,
    ino: u64,
    reader: &mut (impl AsyncRead + Unpin),
    opts: &PutOptions,
) -> Result<PutOutcome, ClientError> {
    let stat = meta.stat_fs(pb::Empty {}).await?.into_inner();
    let chunk_size = stat.chunk_size.max(1) as usize;
    let mut in_flight = FuturesOrdered::new();
    let mut done: VecDeque<(u64, UploadedChunk)> = VecDeque::new();
    let mut total: u64 = 0;
    // Chunks of one large file: one placement per chunk, none pooled.
    let placements = crate::Placements::new(1, None);
    let mut committed_size: u64 = 0;
    let mut outcome = PutOutcome {
        attr: pb::Attr::default(),
        chunks: 0,
        under_replicated: 0,
    };
    let mut index = 0u64;
    let mut eof = false;
    while !eof || !in_flight.is_empty() {
        while !eof && in_flight.len() < PARALLEL_CHUNKS {
            let data = read_full(reader, chunk_size).await?;
            if data.is_empty() {
                eof = true;
                break;
            }
            eof = data.len() < chunk_size;
            total += data.len() as u64;
            let mut meta = meta.clone();
            let (channels, placements) = (channels.clone(), placements.clone());
            let durable = opts.durable;
            let i = index;
            in_flight.push_back(async move {
                upload_chunk(&mut meta, &channels, &placements, data, durable)
                    .await
                    .map(|c| (i, c))
            });
            index += 1;
        }
        if let Some(result) = in_flight.next().await {
            let (i, chunk) = result?;
            if let Some(progress) = &opts.progress {
                progress(chunk.stored_len);
            }
            done.push_back((i, chunk));
        }
        let last = eof && in_flight.is_empty();
        if done.len() >= COMMIT_BATCH || last {
            let batch: Vec<_> = done.drain(..).collect();
            outcome.chunks += batch.len();
            outcome.under_replicated += batch
                .iter()
                .filter(|(_, c)| c.node_ids.len() < c.replication as usize)
                .count();
            let written: Vec<Written<'_>> = batch
                .iter()
                .map(|(index, chunk)| Written {
                    index: *index,
                    chunk,
                    base: None,
                })
                .collect();
            let cs = chunk_size as u64;
            let size = commit_size(cs, committed_size, &written, last.then_some(total));
            let reply = commit(meta, ino, cs, size, &written, None, false).await?;
            outcome.attr = reply
                .attr
                .ok_or_else(|| ClientError::BadReply("reply without attributes".into()))?;
            committed_size = size;
        }
    }
    Ok(outcome)
}

/// Reads until `want` bytes or end of input.
async fn read_full(
    reader: &mut (impl AsyncRead + Unpin),
    want: usize,
) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        if buf.capacity() == buf.len() && buf.len() < want {
            buf.reserve(want - buf.len());
        }
    }
    buf.truncate(want);
    Ok(buf.freeze())
}

/// Downloads the regular file at `path` into `writer`; returns its size.
/// Every chunk's checksum is verified; holes read as zeros.
pub async fn get(
    meta: &mut crate::Meta,
    channels: &Channels,
    path: &str,
    writer: &mut (impl AsyncWrite + Unpin),
    progress: Option<Progress>,
) -> Result<u64, ClientError> {
    let attr = resolve(meta, path).await?;
    if attr.kind == pb::FileKind::Directory as i32 {
        return Err(ClientError::refused(path, Refusal::IsADirectory));
    }
    if attr.kind != pb::FileKind::Regular as i32 {
        return Err(ClientError::refused(path, Refusal::NotRegularFile));
    }
    let map = meta
        .get_chunks(pb::GetChunksRequest { ino: attr.ino })
        .await?
        .into_inner();
    let size = map.attr.as_ref().map_or(0, |a| a.size);
    let cs = u64::from(map.chunk_size.max(1));
    let count = size.div_ceil(cs);
    let mut by_index: std::collections::HashMap<u64, pb::ChunkRef> =
        map.chunks.into_iter().map(|c| (c.index, c)).collect();
    let ino = attr.ino;
    let fetches = (0..count).map(|index| {
        let chunk = by_index.remove(&index);
        let len = cs.min(size - index * cs) as usize;
        let mut meta = meta.clone();
        let channels = channels.clone();
        async move {
            let mut out = BytesMut::zeroed(len);
            if let Some(chunk) = chunk {
                let data = match read_chunk(Some(&mut meta), &channels, &chunk).await {
                    // A long download outlived the map's read tokens (or the
                    // file changed): the same chunk under a fresh map, if the
                    // file still has it; a changed file is an error.
                    Err(ClientError::ChunkGone { chunk_id }) => {
                        let fresh = meta
                            .get_chunks(pb::GetChunksRequest { ino })
                            .await?
                            .into_inner()
                            .chunks
                            .into_iter()
                            .find(|c| c.index == chunk.index && c.chunk_id == chunk_id)
                            .ok_or(ClientError::ChunkGone { chunk_id })?;
                        read_chunk(Some(&mut meta), &channels, &fresh).await?
                    }
                    other => other?,
                };
                let valid = (chunk.valid_len as usize).min(data.len()).min(len);
                out[..valid].copy_from_slice(&data[..valid]);
            }
            Ok::<_, ClientError>(out.freeze())
        }
    });
    let mut stream = futures::stream::iter(fetches).buffered(PARALLEL_CHUNKS);
    let mut written = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        writer.write_all(&piece).await?;
        written += piece.len() as u64;
        if let Some(progress) = &progress {
            progress(piece.len() as u64);
        }
    }
    writer.flush().await?;
    Ok(written)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn splits_paths() {
        assert_eq!(split_path("/a/b").unwrap(), ("/a", "b"));
        assert_eq!(split_path("b").unwrap(), ("/", "b"));
        assert_eq!(split_path("/b/").unwrap(), ("/", "b"));
        assert_eq!(split_path("/").unwrap_err().errno(), libc::ENOENT);
        assert_eq!(
            split_path(&format!("/{}", "x".repeat(256)))
                .unwrap_err()
                .errno(),
            libc::ENAMETOOLONG
        );
    }
}
