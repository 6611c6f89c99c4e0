//! SQLite's WAL checkpoints, on a connection and a thread of their own.
//!
//! A checkpoint copies committed pages from the WAL into the database file and
//! fsyncs both: milliseconds. Left to SQLite's automatic checkpoint, it ran at
//! the end of whichever commit took the WAL past 1,000 pages, holding the one
//! connection every transaction needs, so that request and every request
//! queued behind it waited: a quarter of the store's time over 5,000 unlinks
//! (0.30 ms a transaction with it, 0.22 ms without). WAL mode lets another
//! connection checkpoint while the writer goes on, so a thread does it here,
//! every `CHECKPOINT_EVERY` commits and after a quiet second.
//!
//! The writer's automatic checkpoint stays, at SQLite's 1,000 pages
//! (`WAL_BACKSTOP_PAGES`): it bounds the unsynced tail (and so the ids a power
//! cut can lose, `ID_GAP_AFTER_OPEN`), and it is what starts the WAL over
//! from its beginning (a checkpoint that runs beside the writer never catches
//! up with it under steady writes). By then the thread has copied all but the
//! last few commits, so it costs the writer little. (With a 10,000-page
//! backstop instead, creates in two `make bench` runs were slower against
//! MooseFS than before this thread; the cause is not established, a WAL that
//! stays large being one suspect.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::db::DbError;

/// The WAL size (pages) at which the writer checkpoints by itself.
pub const WAL_BACKSTOP_PAGES: u32 = 1_000;
/// Commits between two checkpoints of the thread (tens to hundreds of pages).
const CHECKPOINT_EVERY: u32 = 32;
/// A checkpoint follows the last commit after at most this long.
const QUIET: Duration = Duration::from_secs(1);

/// Checkpoints the database it was started on; the thread ends when this is
/// dropped.
pub struct Checkpointer {
    conn: Arc<Mutex<rusqlite::Connection>>,
    wake: SyncSender<()>,
    commits: AtomicU32,
}

impl Checkpointer {
    /// Opens a second connection to the (WAL-mode) database at `path` and
    /// starts the thread.
    pub fn start(path: &str) -> Result<Checkpointer, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        // NORMAL (as FULL) makes a checkpoint fsync the WAL before copying and
        // the database after.
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;")?;
        let conn = Arc::new(Mutex::new(conn));
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let shared = conn.clone();
        let spawned = std::thread::Builder::new()
            .name("dfs-meta-checkpoint".into())
            .spawn(move || loop {
                match woken.recv_timeout(QUIET) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = checkpoint(&shared) {
                            tracing::warn!(error = %e, "WAL checkpoint failed; retrying later");
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            });
        spawned.map_err(|e| DbError::Thread("checkpoint", e))?;
        Ok(Checkpointer {
            conn,
            wake,
            commits: AtomicU32::new(0),
        })
    }

    /// A write transaction committed: every `CHECKPOINT_EVERY`, wake the thread.
    pub fn committed(&self) {
        if self.commits.fetch_add(1, Ordering::Relaxed) + 1 >= CHECKPOINT_EVERY {
            self.commits.store(0, Ordering::Relaxed);
            // Full: a checkpoint is already due, which covers this commit too.
            let _ = self.wake.try_send(());
        }
    }

    /// Checkpoints now, on the caller's thread (it fsyncs): every transaction
    /// committed before the call is then on disk. The writer is the only
    /// other connection and its snapshot always includes its own commits, so
    /// nothing it committed is beyond what this checkpoint may copy; and the
    /// fsync covers the whole WAL file.
    pub fn checkpoint(&self) -> Result<(), rusqlite::Error> {
        checkpoint(&self.conn)
    }
}

fn checkpoint(conn: &Mutex<rusqlite::Connection>) -> Result<(), rusqlite::Error> {
    // A panic elsewhere while holding the lock leaves the connection usable.
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database file's size: it grows only when a checkpoint copies the
    /// WAL's pages into it.
    fn db_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_thread_checkpoints_after_commits_and_after_a_quiet_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t (v BLOB);",
            )
            .unwrap();
        let checkpointer = Checkpointer::start(path.to_str().unwrap()).unwrap();
        let wait_for_growth = |from: u64| {
            let start = std::time::Instant::now();
            while db_len(&path) <= from {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no checkpoint copied the WAL into the database"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // One commit, then quiet: the timer checkpoints it.
        let before = db_len(&path);
        writer
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap();
        wait_for_growth(before);
        // A burst of commits wakes the thread at once.
        let before = db_len(&path);
        for _ in 0..CHECKPOINT_EVERY {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
                .unwrap();
            checkpointer.committed();
        }
        wait_for_growth(before);
        // An explicit checkpoint copies everything committed, at once.
        writer
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap();
        checkpointer.checkpoint().unwrap();
        let pages: u64 = writer
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let page_size: u64 = writer
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(db_len(&path), pages * page_size);
    }
}
