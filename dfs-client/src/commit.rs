//! Committing uploaded chunks to a file: one rule for every writer (the
//! mount's open files and `dfs put`). A commit lists the chunks written and
//! the file's new size; meta never makes a file smaller in a commit (only
//! truncate does), and refuses with ESTALE a chunk whose base changed.

use dfs_proto::pb;

use crate::chunk_io::UploadedChunk;
use crate::{ClientError, Meta};

/// A chunk a writer uploaded for one index of a file.
pub struct Written<'a> {
    pub index: u64,
    pub chunk: &'a UploadedChunk,
    /// With `Some`: the chunk it was made from (`None` inside: a hole). Meta
    /// refuses the commit (ESTALE) if the file's chunk there is another by
    /// now; the writer merges its bytes into the current one and commits again.
    pub base: Option<Option<u64>>,
}

/// The size a commit gives the file: as far as the committed data reaches
/// (`committed_size` or the end of the furthest chunk written), and for a
/// final commit (close, fsync) at least the writer's own size, holes and
/// truncations included.
pub fn commit_size(
    chunk_size: u64,
    committed_size: u64,
    written: &[Written<'_>],
    final_size: Option<u64>,
) -> u64 {
    let end = written
        .iter()
        .map(|w| w.index * chunk_size + w.chunk.stored_len)
        .fold(committed_size, u64::max);
    final_size.map_or(end, |s| s.max(end))
}

/// The chunks of a commit to `size`: a chunk's bytes past the end of file
/// do not belong to it.
pub fn committed_chunks(
    chunk_size: u64,
    size: u64,
    written: &[Written<'_>],
) -> Vec<pb::CommittedChunk> {
    written
        .iter()
        .map(|w| pb::CommittedChunk {
            index: w.index,
            chunk_id: w.chunk.chunk_id,
            stored_len: w.chunk.stored_len,
            crc32c: w.chunk.crc32c,
            valid_len: w
                .chunk
                .stored_len
                .min(size.saturating_sub(w.index * chunk_size)),
            node_ids: w.chunk.node_ids.clone(),
            base_chunk_id: w.base.flatten().unwrap_or(0),
            check_base: w.base.is_some(),
        })
        .collect()
}

/// Commits `written` with the file at `size` (see `commit_size`); with
/// `return_chunks` the reply carries the chunk map after the commit.
pub async fn commit(
    meta: &Meta,
    ino: u64,
    chunk_size: u64,
    size: u64,
    written: &[Written<'_>],
    mtime: Option<pb::Timespec>,
    return_chunks: bool,
) -> Result<pb::GetChunksReply, ClientError> {
    let request = pb::CommitWriteRequest {
        ino,
        size,
        chunks: committed_chunks(chunk_size, size, written),
        mtime,
        return_chunks,
        attrs: None,
        create: None,
    };
    Ok(meta.clone().commit_write(request).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u64, len: u64) -> UploadedChunk {
        UploadedChunk {
            chunk_id: id,
            stored_len: len,
            crc32c: 0,
            node_ids: vec![1, 2, 3],
            replication: 3,
        }
    }

    #[test]
    fn sizes_and_valid_lengths() {
        let (a, b) = (chunk(7, 100), chunk(8, 40));
        let written = [
            Written {
                index: 0,
                chunk: &a,
                base: None,
            },
            Written {
                index: 2,
                chunk: &b,
                base: Some(None),
            },
        ];
        // A batch commit reaches as far as its data, never back.
        assert_eq!(commit_size(100, 0, &written, None), 240);
        assert_eq!(commit_size(100, 500, &written, None), 500);
        // A final commit also keeps the writer's size (a hole at the end).
        assert_eq!(commit_size(100, 0, &written, Some(1000)), 1000);
        // A truncation below a chunk's end cuts its valid bytes.
        let c = committed_chunks(100, 220, &written);
        assert_eq!((c[0].valid_len, c[1].valid_len), (100, 20));
        assert!(!c[0].check_base && c[1].check_base && c[1].base_chunk_id == 0);
    }
}
