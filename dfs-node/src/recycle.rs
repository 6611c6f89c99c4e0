//! Recycled chunk files. Creating a file allocates an inode, and ext4
//! without a journal (as on the benchmark machine) scans past every inode
//! freed in the last minutes to find one (`recently_deleted` in
//! `find_inode_bit`): under create/delete churn that scan was a quarter of a
//! node's CPU. So a deleted chunk's file is emptied and kept in `spare/`,
//! and the next write fills it: no inode is freed or allocated.
//!
//! Files are also made ahead (`Spares::make_ahead`, by a thread of the
//! lowest CPU priority, see `lib.rs`): a write then never waits for ext4 to
//! find an inode, which after another process's mass delete (the
//! benchmark's other systems) was half of a node's CPU per small write.
//!
//! A file a read has open is never recycled (the reader would see it emptied
//! or refilled): `Readers` counts open reads per chunk, and such a chunk is
//! deleted the usual way, which leaves its reader the data.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// How many empty files a node keeps at most (an inode each, no data).
pub const MAX_SPARES: usize = 16384;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool of empty files in `dir`.
pub struct Spares {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    max: usize,
}

impl Spares {
    /// Opens (creating) the pool in `dir`. Empty files found there are kept;
    /// any other (one being filled when the node stopped) is removed.
    pub fn open(dir: &Path, max: usize) -> io::Result<Spares> {
        fs::create_dir_all(dir)?;
        let mut free = Vec::new();
        let mut next = 0u64;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let number = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            let empty = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0);
            match number {
                Some(n) if empty && free.len() < max => {
                    next = next.max(n + 1);
                    free.push(path);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(Spares {
            dir: dir.to_path_buf(),
            free: Mutex::new(free),
            next: AtomicU64::new(next),
            max,
        })
    }

    /// An empty file to write a chunk into, if the pool has one.
    pub fn take(&self) -> Option<PathBuf> {
        lock(&self.free).pop()
    }

    /// Moves the file at `path` into the pool's directory under a new name
    /// (the first half of `keep`; the caller makes sure no one reads it).
    /// None: the pool is full, the file stays where it is.
    pub fn adopt(&self, path: &Path) -> Option<io::Result<PathBuf>> {
        if lock(&self.free).len() >= self.max {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let spare = self.dir.join(format!("{n:016x}"));
        Some(fs::rename(path, &spare).map(|()| spare))
    }

    /// Empties an adopted file and puts it in the pool; when that fails or
    /// the pool is full, the file is deleted instead.
    pub fn keep(&self, spare: PathBuf) {
        let emptied = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&spare)
            .is_ok();
        let mut free = lock(&self.free);
        if emptied && free.len() < self.max {
            free.push(spare);
        } else {
            drop(free);
            let _ = fs::remove_file(&spare);
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.free).len()
    }

    /// Makes empty files until the pool holds `want` (never past its
    /// maximum), at most `step` of them now. Returns how many it made.
    pub fn make_ahead(&self, want: usize, step: usize) -> io::Result<usize> {
        let mut made = 0;
        while made < step && self.len() < want.min(self.max) {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let spare = self.dir.join(format!("{n:016x}"));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&spare)?;
            lock(&self.free).push(spare);
            made += 1;
        }
        Ok(made)
    }
}

/// Open reads per chunk id.
#[derive(Default)]
pub struct Readers(Mutex<HashMap<u64, u32>>);

/// One open read of a chunk; counted until dropped.
pub struct Reading<'a> {
    readers: &'a Readers,
    id: u64,
}

impl Readers {
    /// Counts a read of chunk `id` from now until the guard drops. Take it
    /// before opening the file.
    pub fn start(&self, id: u64) -> Reading<'_> {
        *lock(&self.0).entry(id).or_insert(0) += 1;
        Reading { readers: self, id }
    }

    /// Runs `f` unless chunk `id` has a read open, with new reads held off
    /// meanwhile (they open the file after `f`, and find it gone).
    pub fn unless_read<R>(&self, id: u64, f: impl FnOnce() -> R) -> Option<R> {
        let readers = lock(&self.0);
        if readers.contains_key(&id) {
            return None;
        }
        let r = f();
        drop(readers);
        Some(r)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut readers = lock(&self.readers.0);
        if let Some(n) = readers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_file_comes_back_empty_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("spare");
        let spares = Spares::open(&pool, 2).unwrap();
        assert!(spares.take().is_none());
        let chunk = dir.path().join("chunk");
        fs::write(&chunk, b"old chunk bytes").unwrap();
        let adopted = spares.adopt(&chunk).unwrap().unwrap();
        assert!(!chunk.exists());
        spares.keep(adopted);
        let reused = spares.take().unwrap();
        assert_eq!(fs::metadata(&reused).unwrap().len(), 0);
        spares.keep(spares.adopt(&reused).unwrap().unwrap());
        // A file being filled when the node stopped is not reused.
        fs::write(pool.join("00000000000000ff"), b"half").unwrap();
        let again = Spares::open(&pool, 2).unwrap();
        assert_eq!(again.len(), 1);
        assert!(!pool.join("00000000000000ff").exists());
        // New names do not collide with kept ones.
        let kept = again.take().unwrap();
        again.keep(kept.clone());
        let next = dir.path().join("next");
        fs::write(&next, b"x").unwrap();
        let named = again.adopt(&next).unwrap().unwrap();
        assert_ne!(named, kept);
        assert!(kept.exists() && named.exists());
    }

    #[test]
    fn files_made_ahead_fill_the_pool_up_to_what_is_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("spare");
        let spares = Spares::open(&pool, 5).unwrap();
        assert_eq!(spares.make_ahead(3, 2).unwrap(), 2, "one step at a time");
        assert_eq!(spares.make_ahead(3, 2).unwrap(), 1);
        assert_eq!(spares.make_ahead(3, 2).unwrap(), 0, "as many as wanted");
        assert_eq!(
            spares.make_ahead(9, 9).unwrap(),
            2,
            "never past the maximum"
        );
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 5);
        let taken = spares.take().unwrap();
        assert_eq!(fs::metadata(&taken).unwrap().len(), 0);
        assert_eq!(
            Spares::open(&pool, 5).unwrap().len(),
            5,
            "kept across a restart"
        );
    }

    #[test]
    fn a_full_pool_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(&dir.path().join("spare"), 1).unwrap();
        for i in 0..3 {
            let f = dir.path().join(format!("c{i}"));
            fs::write(&f, b"data").unwrap();
            if let Some(adopted) = spares.adopt(&f) {
                spares.keep(adopted.unwrap());
            }
        }
        assert_eq!(spares.len(), 1);
        assert_eq!(fs::read_dir(dir.path().join("spare")).unwrap().count(), 1);
    }

    #[test]
    fn a_chunk_being_read_is_not_recycled() {
        let readers = Readers::default();
        let reading = readers.start(7);
        let also = readers.start(7);
        assert_eq!(readers.unless_read(7, || ()), None);
        assert_eq!(readers.unless_read(8, || 1), Some(1));
        drop(reading);
        assert_eq!(readers.unless_read(7, || ()), None);
        drop(also);
        assert_eq!(readers.unless_read(7, || 2), Some(2));
    }
}
