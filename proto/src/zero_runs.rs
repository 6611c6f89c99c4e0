//! Zero runs: a chunk's all-zero 64 KiB blocks travel as a count instead of
//! as bytes (writes and reads), and nodes store them as holes, so sparse and
//! preallocated files cost neither network nor disk.

use std::ops::Range;

/// The unit of zero detection (the nodes' checksum block).
pub const BLOCK: usize = 64 * 1024;

static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// `n` zero bytes, at most `BLOCK` of them.
pub fn zeros(n: usize) -> &'static [u8] {
    &ZEROS[..n.min(BLOCK)]
}

/// Extends `buf` with zeros to `len`, a block-wise copy: `Vec::resize`
/// writes byte by byte in an unoptimized build, which made sparse writes and
/// reads of debug builds CPU-bound.
pub fn zero_extend(buf: &mut Vec<u8>, len: usize) {
    buf.reserve(len.saturating_sub(buf.len()));
    while buf.len() < len {
        let n = (len - buf.len()).min(BLOCK);
        buf.extend_from_slice(zeros(n));
    }
}

/// Whether every byte is zero (compared a block at a time: a memcmp).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(BLOCK).all(|c| c == zeros(c.len()))
}

/// A piece of a chunk as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// These bytes of the data.
    Data(Range<usize>),
    /// This many zero bytes.
    Zeros(u64),
}

/// Cuts `data` into data pieces of at most `max` bytes and runs of whole
/// zero blocks, in order.
pub fn split(data: &[u8], max: usize) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let at = i * BLOCK;
        let zero = block.len() == BLOCK && is_zero(block);
        match (zero, pieces.last_mut()) {
            (true, Some(Piece::Zeros(n))) => *n += BLOCK as u64,
            (true, _) => pieces.push(Piece::Zeros(BLOCK as u64)),
            (false, Some(Piece::Data(r))) if r.len() + block.len() <= max => {
                r.end = at + block.len()
            }
            (false, _) => pieces.push(Piece::Data(at..at + block.len())),
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_become_runs_and_data_stays_whole() {
        let mut data = vec![0u8; 5 * BLOCK + 10];
        data[BLOCK + 3] = 1; // block 1 holds data
        data[5 * BLOCK + 9] = 2; // the short last block too
        let pieces = split(&data, 2 * BLOCK);
        assert_eq!(
            pieces,
            vec![
                Piece::Zeros(BLOCK as u64),
                Piece::Data(BLOCK..2 * BLOCK),
                Piece::Zeros(3 * BLOCK as u64),
                Piece::Data(5 * BLOCK..5 * BLOCK + 10),
            ]
        );
        let mut rebuilt = Vec::new();
        for p in pieces {
            match p {
                Piece::Data(r) => rebuilt.extend_from_slice(&data[r]),
                Piece::Zeros(n) => rebuilt.resize(rebuilt.len() + n as usize, 0),
            }
        }
        assert_eq!(rebuilt, data);
        // Data pieces never exceed the limit.
        let dense = vec![7u8; 5 * BLOCK];
        assert!(split(&dense, 2 * BLOCK).iter().all(|p| match p {
            Piece::Data(r) => r.len() <= 2 * BLOCK,
            Piece::Zeros(_) => false,
        }));
        assert!(split(&[], BLOCK).is_empty());
    }
}
