//! Keeps freed chunk buffers from staying in the process.
//!
//! glibc serves an allocation above the mmap threshold (128 KiB) with its own
//! mapping, returned to the kernel on free, but it raises the threshold to the
//! size of each such block freed. After the first 4 MiB chunk buffer is freed,
//! chunk buffers come from the heap arenas of 8 FUSE and several runtime
//! threads, and freed ones stay resident: a 1 GiB write with a 512 MiB bound
//! peaked at 720 MiB RSS. A fixed threshold brought that to 530 MiB.
#![allow(unsafe_code)]

/// Fixes glibc's mmap threshold at 128 KiB. Call first thing in `main`, before
/// any thread starts.
pub fn keep_large_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; called before other
        // threads exist, it cannot race with allocations.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if ok != 1 {
            eprintln!(
                "dfs-fuse: mallopt(M_MMAP_THRESHOLD) failed; memory use may exceed the cache bound"
            );
        }
    }
}
