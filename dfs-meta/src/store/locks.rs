//! Cluster-wide file locks: fcntl(2) byte-range locks and flock(2) whole-file
//! locks, shared by every mount. A lock belongs to (session, owner): the
//! owner is what the kernel names (a process's file table for fcntl, an open
//! file description for flock). As on Linux, fcntl and flock locks do not
//! conflict with each other. Locks go when their owner unlocks, closes, or
//! its session ends.

use super::db::{self, DbConn};

use super::rows::to_i64;
use super::{in_tx, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Unlock,
    Read,
    Write,
}

/// An inclusive byte range; `end` is `i64::MAX` for "to the end of file".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRange {
    pub start: i64,
    pub end: i64,
}

impl LockRange {
    /// The range from the wire: ends past i64 mean "to the end of file".
    pub fn new(start: u64, end: u64) -> Option<LockRange> {
        let start = i64::try_from(start).ok()?;
        let end = i64::try_from(end).unwrap_or(i64::MAX);
        (start <= end).then_some(LockRange { start, end })
    }

    fn overlaps(&self, other: &LockRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

#[derive(Debug, Clone)]
pub struct LockSpec {
    pub ino: u64,
    pub session: u64,
    pub owner: u64,
    pub flock: bool,
    pub kind: LockKind,
    pub range: LockRange,
    pub pid: u32,
}

/// A lock someone holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    pub session: u64,
    pub owner: u64,
    pub exclusive: bool,
    pub range: LockRange,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Granted,
    Conflict(HeldLock),
}

/// The locks of one kind (fcntl or flock) on an inode.
async fn held(conn: &mut DbConn, ino: i64, flock: bool) -> Result<Vec<HeldLock>> {
    db::query(
        "SELECT session_id, owner, exclusive, range_start, range_end, pid FROM locks WHERE ino = $1 AND flock = $2",
    )
    .bind(ino)
    .bind(i64::from(flock))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(HeldLock {
            session: r.try_get::<i64, _>(0)? as u64,
            owner: r.try_get::<i64, _>(1)? as u64,
            exclusive: r.try_get::<i64, _>(2)? != 0,
            range: LockRange {
                start: r.try_get(3)?,
                end: r.try_get(4)?,
            },
            pid: r.try_get::<i64, _>(5)? as u32,
        })
    })
    .collect()
}

/// The first lock of another owner that keeps `spec` from being taken.
fn conflict(spec: &LockSpec, locks: &[HeldLock]) -> Option<HeldLock> {
    if spec.kind == LockKind::Unlock {
        return None;
    }
    locks
        .iter()
        .find(|l| {
            (l.session, l.owner) != (spec.session, spec.owner)
                && l.range.overlaps(&spec.range)
                && (l.exclusive || spec.kind == LockKind::Write)
        })
        .cloned()
}

/// What is left of `mine` (the owner's own locks) once `range` is cut out of
/// them: POSIX locks split, and a new lock replaces the owner's old ones in
/// its range.
fn cut(mine: &[HeldLock], range: &LockRange) -> Vec<HeldLock> {
    let mut out = Vec::new();
    for l in mine {
        if !l.range.overlaps(range) {
            out.push(l.clone());
            continue;
        }
        if l.range.start < range.start {
            out.push(HeldLock {
                range: LockRange {
                    start: l.range.start,
                    end: range.start - 1,
                },
                ..l.clone()
            });
        }
        if l.range.end > range.end {
            out.push(HeldLock {
                range: LockRange {
                    start: range.end + 1,
                    end: l.range.end,
                },
                ..l.clone()
            });
        }
    }
    out
}

impl Store {
    /// Takes, changes or releases a lock, or with `test` only looks for a
    /// conflict (F_GETLK). Never waits: the caller retries a conflict.
    /// Returns whether anything was released (waiters may now proceed).
    pub async fn lock(&self, spec: &LockSpec, test: bool) -> Result<(LockOutcome, bool)> {
        let ino = to_i64(spec.ino, "inode")?;
        let session = to_i64(spec.session, "session")?;
        let owner = spec.owner as i64;
        in_tx!(self, |tx| {
            let locks = held(&mut tx, ino, spec.flock).await?;
            if let Some(c) = conflict(spec, &locks) {
                return Ok((LockOutcome::Conflict(c), false));
            }
            if test {
                return Ok((LockOutcome::Granted, false));
            }
            let mine: Vec<HeldLock> = locks
                .into_iter()
                .filter(|l| (l.session, l.owner) == (spec.session, spec.owner))
                .collect();
            // flock locks cover the whole file: a new one replaces the old.
            let whole = LockRange {
                start: 0,
                end: i64::MAX,
            };
            let kept = cut(&mine, if spec.flock { &whole } else { &spec.range });
            let released = kept != mine || spec.kind == LockKind::Unlock && !mine.is_empty();
            db::query(
                "DELETE FROM locks WHERE ino = $1 AND session_id = $2 AND owner = $3 AND flock = $4",
            )
            .bind(ino)
            .bind(session)
            .bind(owner)
            .bind(i64::from(spec.flock))
            .execute(&mut tx)
            .await?;
            let new = (spec.kind != LockKind::Unlock).then(|| HeldLock {
                session: spec.session,
                owner: spec.owner,
                exclusive: spec.kind == LockKind::Write,
                range: spec.range,
                pid: spec.pid,
            });
            for l in kept.iter().chain(new.iter()) {
                db::query(
                    "INSERT INTO locks (ino, session_id, owner, flock, exclusive, range_start, range_end, pid)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(ino)
                .bind(session)
                .bind(owner)
                .bind(i64::from(spec.flock))
                .bind(i64::from(l.exclusive))
                .bind(l.range.start)
                .bind(l.range.end)
                .bind(i64::from(l.pid))
                .execute(&mut tx)
                .await?;
            }
            Ok((LockOutcome::Granted, released))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(owner: u64, exclusive: bool, start: i64, end: i64) -> HeldLock {
        HeldLock {
            session: 1,
            owner,
            exclusive,
            range: LockRange { start, end },
            pid: 7,
        }
    }

    fn spec(owner: u64, kind: LockKind, start: i64, end: i64) -> LockSpec {
        LockSpec {
            ino: 5,
            session: 1,
            owner,
            flock: false,
            kind,
            range: LockRange { start, end },
            pid: 7,
        }
    }

    #[test]
    fn readers_share_writers_exclude() {
        let held = [lock(1, false, 0, 99)];
        assert_eq!(conflict(&spec(2, LockKind::Read, 50, 60), &held), None);
        assert!(conflict(&spec(2, LockKind::Write, 50, 60), &held).is_some());
        assert_eq!(conflict(&spec(2, LockKind::Write, 100, 200), &held), None);
        // One's own locks never conflict.
        assert_eq!(conflict(&spec(1, LockKind::Write, 0, 10), &held), None);
    }

    #[test]
    fn unlocking_the_middle_splits() {
        let kept = cut(&[lock(1, true, 0, 99)], &LockRange { start: 10, end: 19 });
        assert_eq!(kept, vec![lock(1, true, 0, 9), lock(1, true, 20, 99)]);
        assert!(cut(&[lock(1, true, 10, 19)], &LockRange { start: 0, end: 99 }).is_empty());
    }

    #[test]
    fn wire_ranges() {
        assert_eq!(
            LockRange::new(5, u64::MAX),
            Some(LockRange {
                start: 5,
                end: i64::MAX
            })
        );
        assert_eq!(LockRange::new(9, 3), None);
    }
}
