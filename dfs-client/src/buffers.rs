//! Chunk-sized buffers kept for reuse.
//!
//! A chunk buffer (4 MiB, the default chunk size) is far above glibc's mmap
//! threshold, which the FUSE daemon fixes at 128 KiB so that freed buffers
//! leave the process. Each new buffer is then a fresh mapping: the kernel
//! faults in and zeroes every page as it is first written, and unmapping it
//! shoots down TLB entries on every core. perf of a 1 GiB write put a third of
//! the mount's CPU there, and a cold read a quarter.
//!
//! Buffers of exactly [`POOLED_CAPACITY`] bytes come back here when the last
//! `Bytes` over them is dropped (a chunk leaving the cache, a finished
//! upload), and the next chunk takes one. At most [`MAX_IDLE`] wait here, so
//! the pool adds at most 16 MiB to the process beyond the mount's bound.

use std::sync::Mutex;

use bytes::Bytes;

/// The one size pooled: a whole chunk of the default size.
pub const POOLED_CAPACITY: usize = 4 << 20;
/// Idle buffers kept at most.
pub const MAX_IDLE: usize = 4;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for `capacity` bytes: a reused one when
/// `capacity` is the pooled size.
pub fn take(capacity: usize) -> Vec<u8> {
    if capacity == POOLED_CAPACITY {
        if let Some(buf) = idle().pop() {
            return buf;
        }
    }
    Vec::with_capacity(capacity)
}

/// The buffer as `Bytes`. A pooled buffer goes back to the pool when the
/// last `Bytes` over it is dropped; one filled less than 7/8 is copied out
/// to its own exact size first and goes back at once, so a short chunk never
/// keeps a whole chunk's memory in the cache.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    if buf.capacity() != POOLED_CAPACITY {
        return Bytes::from(buf);
    }
    if buf.len() < POOLED_CAPACITY / 8 * 7 {
        let copy = Bytes::copy_from_slice(&buf);
        give_back(buf);
        return copy;
    }
    Bytes::from_owner(Pooled(buf))
}

/// How many buffers wait for reuse now.
pub fn idle_count() -> usize {
    idle().len()
}

fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() != POOLED_CAPACITY {
        return;
    }
    buf.clear();
    let mut idle = idle();
    if idle.len() < MAX_IDLE {
        idle.push(buf);
    }
}

/// A pooled buffer under a `Bytes`; dropping it returns the buffer.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the pool is process-wide, and parallel tests would share it.
    #[test]
    fn whole_chunks_come_back_and_short_or_odd_ones_do_not_stay() {
        while idle_count() > 0 {
            let _ = take(POOLED_CAPACITY);
        }
        // A full chunk: shared, and back in the pool when the last clone goes.
        let mut buf = take(POOLED_CAPACITY);
        buf.resize(POOLED_CAPACITY, 7);
        let ptr = buf.as_ptr();
        let bytes = freeze(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(idle_count(), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(idle_count(), 1);
        let again = take(POOLED_CAPACITY);
        assert_eq!(again.as_ptr(), ptr, "the same memory is reused");
        assert!(again.is_empty());
        // A short one is copied out and its buffer is free at once.
        let mut short = again;
        short.extend_from_slice(b"tail");
        let bytes = freeze(short);
        assert_eq!(&bytes[..], b"tail");
        assert_eq!(idle_count(), 1);
        // Other sizes are neither pooled nor kept.
        let odd = freeze(take(1000));
        drop(odd);
        assert_eq!(idle_count(), 1);
        // At most MAX_IDLE wait.
        let many: Vec<Bytes> = (0..MAX_IDLE + 2)
            .map(|_| {
                let mut b = take(POOLED_CAPACITY);
                b.resize(POOLED_CAPACITY, 1);
                freeze(b)
            })
            .collect();
        drop(many);
        assert_eq!(idle_count(), MAX_IDLE);
    }
}
