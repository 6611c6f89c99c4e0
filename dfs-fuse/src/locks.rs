//! fcntl(2) and flock(2) locks through meta, so they exclude across mounts.
//!
//! Meta keeps the locks (per session and kernel lock owner) and releases a
//! session's locks when its lease runs out, so a killed mount's locks go
//! within the lease. A waiting F_SETLKW / flock(LOCK_EX) asks meta, which
//! holds the request until the lock is free or a few seconds pass, and asks
//! again; a signal to the waiting process (FUSE_INTERRUPT) ends the wait
//! with EINTR. The mount remembers which (inode, owner) may hold a lock, so
//! a close releases locks with a round trip only where there are some.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use dfs_proto::pb;
use tokio::sync::oneshot;

use crate::error::{FsError, FsResult};

/// A lock as the kernel names it: fcntl(2) types F_RDLCK / F_WRLCK / F_UNLCK.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest {
    pub ino: u64,
    pub owner: u64,
    pub flock: bool,
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// A conflicting lock, for F_GETLK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// What the mount knows about its own locks.
#[derive(Default)]
pub struct Locks {
    /// (inode, owner, flock) that took a lock here and may still hold one.
    holders: Mutex<HashSet<(u64, u64, bool)>>,
    /// Waiting lock requests by the kernel's request id: an interrupt fires it.
    waiters: Mutex<Waiters>,
}

/// Interrupts may arrive before the request they name is registered (the
/// kernel sends them at once when a signal comes): those are kept a while.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<u64, oneshot::Sender<()>>,
    early: HashMap<u64, std::time::Instant>,
}

/// How long, and how many, interrupts of requests not (yet) waiting are kept.
const EARLY_INTERRUPT_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const EARLY_INTERRUPTS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_type(typ: i32) -> FsResult<pb::LockType> {
    match typ {
        libc::F_RDLCK => Ok(pb::LockType::Read),
        libc::F_WRLCK => Ok(pb::LockType::Write),
        libc::F_UNLCK => Ok(pb::LockType::Unlock),
        _ => Err(FsError::new(libc::EINVAL, "unknown lock type")),
    }
}

impl Locks {
    /// A lock request may wait: `unique` (the kernel's request id) can now
    /// be interrupted. The receiver fires on interrupt.
    pub fn waiting(&self, unique: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut w = lock(&self.waiters);
        if w.early.remove(&unique).is_some() {
            // Interrupted before it got here.
            let _ = tx.send(());
        } else {
            w.waiting.insert(unique, tx);
        }
        rx
    }

    pub fn done_waiting(&self, unique: u64) {
        lock(&self.waiters).waiting.remove(&unique);
    }

    /// FUSE_INTERRUPT for request `unique`: a waiting lock request ends (EINTR),
    /// also one that starts waiting only after the interrupt came.
    pub fn interrupt(&self, unique: u64) {
        let mut w = lock(&self.waiters);
        if let Some(tx) = w.waiting.remove(&unique) {
            let _ = tx.send(());
            return;
        }
        if w.early.len() >= EARLY_INTERRUPTS {
            w.early.retain(|_, t| t.elapsed() < EARLY_INTERRUPT_TTL);
            if w.early.len() >= EARLY_INTERRUPTS {
                w.early.clear();
            }
        }
        w.early.insert(unique, std::time::Instant::now());
    }

    /// Whether `owner` may hold a lock of this kind on `ino` (taken here).
    pub fn may_hold(&self, ino: u64, owner: u64, flock: bool) -> bool {
        lock(&self.holders).contains(&(ino, owner, flock))
    }

    /// Takes, changes or releases a lock. Without `wait`, a conflict is
    /// EAGAIN; with it, the call waits until granted or `interrupted` fires
    /// (EINTR).
    pub async fn set(
        &self,
        meta: &dfs_client::Meta,
        req: LockRequest,
        wait: bool,
        interrupted: Option<oneshot::Receiver<()>>,
    ) -> FsResult<()> {
        let interrupted = async move {
            match interrupted {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(interrupted);
        let typ = lock_type(req.typ)?;
        if typ != pb::LockType::Unlock {
            lock(&self.holders).insert((req.ino, req.owner, req.flock));
        }
        let request = pb::LockRequest {
            ino: req.ino,
            owner: req.owner,
            flock: req.flock,
            r#type: typ as i32,
            start: req.start,
            end: req.end,
            pid: req.pid,
            wait,
            test: false,
        };
        loop {
            let mut meta = meta.clone();
            let call = meta.lock(request);
            let reply = tokio::select! {
                reply = call => reply?.into_inner(),
                _ = &mut interrupted => {
                    return Err(FsError::new(libc::EINTR, "lock wait interrupted"));
                }
            };
            if reply.granted {
                if typ == pb::LockType::Unlock && req.start == 0 && req.end >= i64::MAX as u64 {
                    lock(&self.holders).remove(&(req.ino, req.owner, req.flock));
                }
                return Ok(());
            }
            if !wait {
                return Err(FsError::new(libc::EAGAIN, "the lock is held elsewhere"));
            }
        }
    }

    /// F_GETLK: the first lock that would conflict, or None.
    pub async fn test(
        &self,
        meta: &dfs_client::Meta,
        req: LockRequest,
    ) -> FsResult<Option<Conflict>> {
        let typ = lock_type(req.typ)?;
        let reply = meta
            .clone()
            .lock(pb::LockRequest {
                ino: req.ino,
                owner: req.owner,
                flock: req.flock,
                r#type: typ as i32,
                start: req.start,
                end: req.end,
                pid: req.pid,
                wait: false,
                test: true,
            })
            .await?
            .into_inner();
        Ok(reply.conflict.filter(|_| !reply.granted).map(|c| Conflict {
            typ: if c.r#type == pb::LockType::Write as i32 {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            },
            start: c.start,
            end: c.end,
            pid: c.pid,
        }))
    }

    /// Releases every lock of this kind `owner` holds on `ino` (close for
    /// fcntl locks, the last close of the open file for flock), if it took any.
    pub async fn release_owner(
        &self,
        meta: &dfs_client::Meta,
        ino: u64,
        owner: u64,
        flock: bool,
    ) -> FsResult<()> {
        if !self.may_hold(ino, owner, flock) {
            return Ok(());
        }
        self.set(
            meta,
            LockRequest {
                ino,
                owner,
                flock,
                typ: libc::F_UNLCK,
                start: 0,
                end: u64::MAX,
                pid: 0,
            },
            false,
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_before_the_wait_is_not_lost() {
        let locks = Locks::default();
        locks.interrupt(7);
        let mut fired = locks.waiting(7);
        assert!(
            fired.try_recv().is_ok(),
            "the early interrupt fires the wait"
        );
        let mut other = locks.waiting(8);
        assert!(other.try_recv().is_err());
        locks.interrupt(8);
        assert!(other.try_recv().is_ok());
        locks.done_waiting(8);
    }
}
