//! O_APPEND from several mounts: every append lands whole at the end of the
//! file as the cluster has it, none on top of another mount's.
//!
//! A mount appending to a file holds the file's *append lock* on meta (a lock
//! on a key no user lock can name, so it never meets fcntl or flock locks).
//! Taking it, the mount commits what it had and reads the file's end afresh;
//! appends then go to that end, however stale the kernel's idea of the size.
//! The lock is given back once the appends are committed: at close, flush or
//! fsync, or at the latest `HOLD` after it was taken, so appenders on several
//! mounts take turns (one waits at most about that long) and each turn's
//! appends are contiguous. A mount that dies holding it loses it with its
//! session's lease.

use std::time::Duration;

use dfs_proto::pb;

use crate::error::FsResult;
use crate::io::Io;
use crate::open_file::OpenFile;

/// The longest a mount keeps the append lock while other mounts may wait.
pub const HOLD: Duration = Duration::from_secs(1);

/// The lock key of a file's append lock: the inode with a bit no inode
/// number has (ids are counters far below 2^62).
fn key(ino: u64) -> u64 {
    ino | (1 << 62)
}

/// The owner of append locks within this mount's session.
const OWNER: u64 = u64::MAX;

fn request(ino: u64, typ: pb::LockType) -> pb::LockRequest {
    pb::LockRequest {
        ino: key(ino),
        owner: OWNER,
        flock: false,
        r#type: typ as i32,
        start: 0,
        end: 0,
        pid: std::process::id(),
        wait: typ != pb::LockType::Unlock,
        test: false,
    }
}

/// Takes `file`'s append lock if this mount does not hold it yet, waiting
/// for another mount's turn to end, and then makes the file's local end the
/// cluster's. Returns whether it was taken now (the caller schedules the
/// give-back).
pub async fn take(io: &Io, file: &mut OpenFile) -> FsResult<bool> {
    if file.append_lock_held {
        return Ok(false);
    }
    // Local changes go first: they were written where they belong.
    file.flush(io, false).await?;
    loop {
        let reply = io
            .files
            .lock(request(file.ino, pb::LockType::Write))
            .await?;
        if reply.granted {
            break;
        }
    }
    file.append_lock_held = true;
    file.refresh(io).await?;
    Ok(true)
}

/// Gives the append lock back once everything appended is committed (the
/// caller just flushed); with changes still pending it stays held, so no
/// other mount appends at an end this one is about to move.
pub async fn give_back_if_committed(io: &Io, file: &mut OpenFile) -> FsResult<()> {
    if !file.append_lock_held || file.has_changes() {
        return Ok(());
    }
    give_back(io, file).await
}

/// Gives the append lock back whatever is pending: the last close failed,
/// and the bytes it could not commit are dropped with the file's state.
pub async fn give_back(io: &Io, file: &mut OpenFile) -> FsResult<()> {
    if !file.append_lock_held {
        return Ok(());
    }
    io.files
        .lock(request(file.ino, pb::LockType::Unlock))
        .await?;
    file.append_lock_held = false;
    Ok(())
}
