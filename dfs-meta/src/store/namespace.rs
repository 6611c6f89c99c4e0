//! The namespace: inodes, directory entries, hard links, symlinks, xattrs.
//! Each public method is one transaction; the `*_in` helpers work inside one.

use super::db::{self, DbConn};
use std::sync::LazyLock;

use dfs_proto::{validate_name, ROOT_INO};

use super::chunks::{self, delete_inode};
use super::ids::Counter;
use super::rows::{
    inode_columns_as, inode_from_prefixed, inode_from_row, to_i64, FileKind, Inode, OwnerChanges,
    Timespec, S_ISGID,
};
use super::sessions;
use super::tables::{is_orphan, require_inode, store_attrs, Origin};
use super::{in_tx, in_tx_once, Result, Store, StoreError};

/// Largest xattr value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

#[derive(Debug, Clone)]
pub struct CreateArgs {
    pub parent: u64,
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub symlink_target: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct SetAttrArgs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    /// The times were given (utimensat with values), not "now".
    pub explicit_times: bool,
    /// New inode flags (chattr).
    pub flags: Option<u32>,
}

/// A change of a name, with its directory as the change left it: a reply
/// carries the directory's attributes, and reading them again after the
/// commit would cost a round trip (on PostgreSQL) per call. `dir` is None
/// when the answer is the record of an earlier run (a retried request).
#[derive(Debug, Clone)]
pub struct NameChange<T> {
    pub done: T,
    pub dir: Option<Inode>,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Inode,
}

impl Store {
    pub async fn getattr(&self, ino: u64) -> Result<Inode> {
        let mut conn = self.conn().await?;
        require_inode(&mut conn, ino).await
    }

    /// The inode `name` in directory `parent` names, in one query (the parent,
    /// the entry and the inode together: a lookup is the most frequent call).
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        validate_name(name)?;
        let mut conn = self.conn().await?;
        dir_and_entry(&mut conn, parent, name)
            .await?
            .1
            .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))
    }

    /// Walks an absolute path from the root ("/" and "" name the root).
    pub async fn resolve_path(&self, path: &[u8]) -> Result<Inode> {
        self.resolve_path_in(ROOT_INO, path).await
    }

    /// `resolve_path` with directory `base` as the root: `..` never leads
    /// above it (an exported subtree's clients resolve paths this way).
    pub async fn resolve_path_in(&self, base: u64, path: &[u8]) -> Result<Inode> {
        if path.len() > dfs_proto::MAX_PATH_LEN {
            return Err(StoreError::Name(dfs_proto::NameError::TooLong(path.len())));
        }
        let mut conn = self.conn().await?;
        let mut inode = require_inode(&mut conn, base).await?;
        for part in path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            if inode.kind != FileKind::Directory {
                return Err(StoreError::NotDir);
            }
            if part == b".." {
                if inode.ino == base {
                    continue;
                }
                let parent = parent_of(&mut conn, inode.ino).await?;
                inode = require_inode(&mut conn, parent).await?;
                continue;
            }
            validate_name(part)?;
            let ino = entry_ino(&mut conn, inode.ino, part)
                .await?
                .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(path).into_owned()))?;
            inode = require_inode(&mut conn, ino).await?;
        }
        Ok(inode)
    }

    pub async fn create(&self, args: CreateArgs, origin: Origin) -> Result<Inode> {
        Ok(self.create_named(args, origin).await?.done)
    }

    /// `create`, with the directory as the create left it.
    pub async fn create_named(
        &self,
        args: CreateArgs,
        origin: Origin,
    ) -> Result<NameChange<Inode>> {
        validate_name(&args.name)?;
        if args.kind == FileKind::Symlink
            && (args.symlink_target.is_empty()
                || args.symlink_target.len() > dfs_proto::MAX_PATH_LEN
                || args.symlink_target.contains(&0))
        {
            return Err(StoreError::Invalid(
                "symlink target must be 1..4095 bytes without NUL".into(),
            ));
        }
        let ino = *self.take_ids(Counter::Ino, 1).await?.start();
        let now = Timespec::now();
        in_tx_once!(
            self,
            origin,
            |tx| create_in(&mut tx, ino, &args, None, now).await,
            replay | ino | replayed_create(&mut tx, ino).await,
            made | made | made.done.ino as i64
        )
    }

    /// A create the client already answered (an early create): the inode
    /// number is the client's, from numbers meta granted it (the caller
    /// checks the grant), and `time` the one it gave the file and the
    /// directory. A number in use is refused, not reused, unless it already
    /// names this file under this name (the same create, sent again).
    pub async fn create_numbered(
        &self,
        args: CreateArgs,
        ino: u64,
        time: Timespec,
        origin: Origin,
    ) -> Result<NameChange<Inode>> {
        check_numbered(&args)?;
        self.create_batched(super::together::CreateCall {
            args,
            ino,
            time,
            origin,
        })
        .await
    }

    /// `create_numbered` in a transaction of its own.
    pub(super) async fn create_numbered_alone(
        &self,
        c: &super::together::CreateCall,
    ) -> Result<NameChange<Inode>> {
        in_tx_once!(
            self,
            c.origin,
            |tx| create_numbered_in(&mut tx, &c.args, c.ino, c.time).await,
            replay | ino | replayed_create(&mut tx, ino).await,
            made | made | made.done.ino as i64
        )
    }

    /// `create_numbered` and then the file's first `commit_write`, in one
    /// transaction: a new small file's close costs one. Returns the file as
    /// the commit left it, and the directory as the create did. If either
    /// fails, neither is done.
    pub async fn create_and_commit(
        &self,
        create: (CreateArgs, u64, Timespec),
        commit: chunks::CommitArgs<'_>,
        origin: Origin,
    ) -> Result<NameChange<chunks::Committed>> {
        let (args, ino, time) = create;
        check_numbered(&args)?;
        if commit.ino != ino {
            return Err(StoreError::Invalid(
                "a commit carries the create of its own file only".into(),
            ));
        }
        commit.validate(self.chunk_size)?;
        in_tx_once!(
            self,
            origin,
            |tx| create_committed_in(&mut tx, &args, ino, time, &commit, self.chunk_size).await,
            replay | _prev | {
                let made = replayed_create(&mut tx, ino as i64).await?;
                Ok(NameChange {
                    done: chunks::Committed {
                        inode: made.done,
                        chunks: None,
                    },
                    dir: made.dir,
                })
            },
            made | _made | ino as i64
        )
    }

    /// open(O_TMPFILE): a regular file in `parent` with no name (nlink 0),
    /// kept as an orphan until its last close, or until linkat gives it a
    /// name. `args.name` is ignored.
    pub async fn create_unnamed(&self, args: CreateArgs, origin: Origin) -> Result<Inode> {
        if args.kind != FileKind::Regular {
            return Err(StoreError::Invalid(
                "an unnamed file is a regular file".into(),
            ));
        }
        let ino = *self.take_ids(Counter::Ino, 1).await?.start();
        let now = Timespec::now();
        in_tx_once!(
            self,
            origin,
            |tx| Ok(create_in(&mut tx, ino, &args, Some(origin.session), now)
                .await?
                .done),
            replay | ino | require_inode(&mut tx, ino as u64).await,
            made | inode | inode.ino as i64
        )
    }

    /// Removes a name and returns the inode it named. With `keep_open` (the
    /// session holding the file open) an inode losing its last name becomes
    /// an orphan instead of being deleted.
    pub async fn unlink(
        &self,
        parent: u64,
        name: &[u8],
        keep_open: Option<u64>,
        origin: Origin,
    ) -> Result<u64> {
        Ok(self
            .unlink_if(parent, name, None, keep_open, origin)
            .await?
            .done)
    }

    /// `unlink`, done only if `name` names inode `expect` (when given): a name
    /// that now names another inode is NotFound and nothing changes. Commits
    /// with the other unlinks in flight (`together.rs`).
    pub async fn unlink_if(
        &self,
        parent: u64,
        name: &[u8],
        expect: Option<u64>,
        keep_open: Option<u64>,
        origin: Origin,
    ) -> Result<NameChange<u64>> {
        validate_name(name)?;
        self.unlink_batched(super::together::UnlinkCall {
            parent,
            name: name.to_vec(),
            expect,
            keep_open,
            origin,
        })
        .await
    }

    /// `unlink_if` in a transaction of its own.
    pub(super) async fn unlink_alone(
        &self,
        c: &super::together::UnlinkCall,
    ) -> Result<NameChange<u64>> {
        in_tx_once!(
            self,
            c.origin,
            |tx| {
                let keep = self.keep_open(c.keep_open, c.origin);
                unlink_in(&mut tx, c.parent, &c.name, c.expect, keep).await
            },
            replay
                | prev
                | Ok(NameChange {
                    done: prev as u64,
                    dir: None
                }),
            made | unlinked | unlinked.done as i64
        )
    }

    /// Session `holder`'s last handle on an orphan closed: once no session
    /// holds it, delete it and its data. Anything else (not an orphan, already
    /// gone) is a no-op, so a retry is harmless.
    pub async fn release_orphan(&self, ino: u64, holder: u64) -> Result<()> {
        in_tx!(self, |tx| sessions::drop_orphan_holder(
            &mut tx, ino, holder
        )
        .await)
    }

    /// Deletes orphans older than `cutoff_ms` that no session holds (left by
    /// clients without a session that never came back). Returns how many.
    pub async fn expire_orphans(&self, cutoff_ms: i64) -> Result<usize> {
        let stale: Vec<i64> = {
            let mut conn = self.conn().await?;
            db::query(
                "SELECT ino FROM orphans o WHERE since_ms < $1 AND NOT EXISTS
                   (SELECT 1 FROM orphan_holders h WHERE h.ino = o.ino AND h.session_id <> 0)",
            )
            .bind(cutoff_ms)
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?
        };
        for ino in &stale {
            self.release_orphan(*ino as u64, 0).await?;
        }
        Ok(stale.len())
    }

    /// Deletes up to `limit` files whose last name and holder are gone (see
    /// `chunks::queue_deletion`), in one transaction. Returns how many left
    /// the queue: fewer than `limit` once it is empty.
    pub async fn purge_deleted(&self, limit: i64) -> Result<usize> {
        in_tx!(self, |tx| chunks::purge_deleted(&mut tx, limit).await)
    }

    /// Removes an empty directory and returns its inode number.
    pub async fn rmdir(&self, parent: u64, name: &[u8], origin: Origin) -> Result<u64> {
        validate_name(name)?;
        in_tx_once!(
            self,
            origin,
            |tx| {
                let now = Timespec::now();
                let (dir, entry) = dir_and_entry(&mut tx, parent, name).await?;
                dir.require_unpinned("rmdir")?;
                let inode = entry.ok_or_else(|| {
                    StoreError::NotFound(String::from_utf8_lossy(name).into_owned())
                })?;
                let ino = inode.ino;
                if inode.kind != FileKind::Directory {
                    return Err(StoreError::NotDir);
                }
                inode.require_unpinned("rmdir")?;
                if has_entries(&mut tx, ino).await? {
                    return Err(StoreError::NotEmpty);
                }
                delete_entry(&mut tx, parent, name).await?;
                touch_dir(&mut tx, parent, -1, now).await?;
                delete_inode(&mut tx, ino).await?;
                Ok(ino)
            },
            replay | prev | Ok(prev as u64),
            made | ino | ino as i64
        )
    }

    /// renameat2(2): its arguments, plus the session holding a replaced
    /// file open and the request's origin. Returns the inodes involved (both
    /// 0 when the reply of a retried request is replayed).
    #[allow(clippy::too_many_arguments)]
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        keep_open: Option<u64>,
        origin: Origin,
    ) -> Result<Renamed> {
        validate_name(name)?;
        validate_name(new_name)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(StoreError::Invalid(format!("rename flags {flags:#x}")));
        }
        in_tx_once!(
            self,
            origin,
            |tx| {
                let keep = self.keep_open(keep_open, origin);
                rename_in(&mut tx, parent, name, new_parent, new_name, flags, keep).await
            },
            replay | _prev | Ok(Renamed::default()),
            made | _out | 0
        )
    }

    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
        origin: Origin,
    ) -> Result<Inode> {
        validate_name(new_name)?;
        in_tx_once!(
            self,
            origin,
            |tx| {
                let now = Timespec::now();
                let inode = require_inode(&mut tx, ino).await?;
                if inode.kind == FileKind::Directory {
                    return Err(StoreError::NotPermitted("hard links to directories".into()));
                }
                inode.require_unpinned("link")?;
                if inode.nlink == 0 && !is_orphan(&mut tx, ino).await? {
                    // Deleted, and no one holds it: it waits for the purge.
                    return Err(StoreError::NotFound(format!("inode {ino}")));
                }
                require_dir(&mut tx, new_parent)
                    .await?
                    .require_mutable("link")?;
                if entry_ino(&mut tx, new_parent, new_name).await?.is_some() {
                    return Err(StoreError::Exists(
                        String::from_utf8_lossy(new_name).into_owned(),
                    ));
                }
                insert_entry(&mut tx, new_parent, new_name, ino).await?;
                touch_dir(&mut tx, new_parent, 0, now).await?;
                if inode.nlink == 0 {
                    // An O_TMPFILE (or open unlinked file) linked in: no orphan now.
                    for table in ["orphans", "orphan_holders"] {
                        db::query(&format!("DELETE FROM {table} WHERE ino = $1"))
                            .bind(to_i64(ino, "inode")?)
                            .execute(&mut tx)
                            .await?;
                    }
                }
                db::query(
                "UPDATE inodes SET nlink = nlink + 1, ctime_s = $2, ctime_ns = $3 WHERE ino = $1",
            )
            .bind(to_i64(ino, "inode")?)
            .bind(now.sec)
            .bind(i64::from(now.nsec))
            .execute(&mut tx)
            .await?;
                require_inode(&mut tx, ino).await
            },
            replay | _prev | require_inode(&mut tx, ino).await,
            made | _out | ino as i64
        )
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let mut conn = self.conn().await?;
        let row = db::query("SELECT kind, target FROM inodes WHERE ino = $1")
            .bind(to_i64(ino, "inode")?)
            .fetch_optional(&mut conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("inode {ino}")))?;
        let kind: i64 = row.try_get(0)?;
        if kind != FileKind::Symlink as i64 {
            return Err(StoreError::Invalid("not a symlink".into()));
        }
        let target: Option<Vec<u8>> = row.try_get(1)?;
        target.ok_or_else(|| StoreError::Corrupt(format!("symlink {ino} has no target")))
    }

    /// One page of a directory, in byte order of names, starting after `after`.
    /// Returns the entries and whether more follow.
    pub async fn readdir(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
    ) -> Result<(Vec<DirEntry>, bool)> {
        let limit = limit.clamp(1, 10_000);
        let mut conn = self.conn().await?;
        require_dir(&mut conn, ino).await?;
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT d.name, {} FROM dentries d JOIN inodes i ON i.ino = d.ino
                 WHERE d.parent = $1 AND d.name > $2 ORDER BY d.name LIMIT $3",
                inode_columns_as("i", "")
            )
        });
        let rows = db::query(&SQL)
            .bind(to_i64(ino, "inode")?)
            .bind(after.to_vec())
            .bind(i64::from(limit) + 1)
            .fetch_all(&mut conn)
            .await?;
        let more = rows.len() > limit as usize;
        let entries = rows
            .iter()
            .take(limit as usize)
            .map(|row| {
                Ok(DirEntry {
                    name: row.try_get(0)?,
                    attr: inode_from_row(row)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((entries, more))
    }

    pub async fn setattr(&self, ino: u64, args: SetAttrArgs, origin: Origin) -> Result<Inode> {
        in_tx_once!(
            self,
            origin,
            |tx| setattr_in(&mut tx, self.chunk_size, ino, &args).await,
            replay | _prev | require_inode(&mut tx, ino).await,
            made | _out | 0
        )
    }

    pub async fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let mut conn = self.conn().await?;
        require_inode(&mut conn, ino).await?;
        db::query("SELECT value FROM xattrs WHERE ino = $1 AND name = $2")
            .bind(to_i64(ino, "inode")?)
            .bind(name.to_vec())
            .fetch_optional(&mut conn)
            .await?
            .map(|r| r.try_get::<Vec<u8>, _>(0))
            .transpose()?
            .ok_or(StoreError::NoXattr)
    }

    pub async fn set_xattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        origin: Origin,
    ) -> Result<()> {
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(StoreError::Invalid(
                "xattr name must be 1..255 bytes without NUL".into(),
            ));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(StoreError::XattrTooBig);
        }
        in_tx_once!(
            self,
            origin,
            |tx| {
                let now = Timespec::now();
                require_inode(&mut tx, ino)
                    .await?
                    .require_unpinned("setxattr")?;
                let key = to_i64(ino, "inode")?;
                let exists = db::query("SELECT 1 FROM xattrs WHERE ino = $1 AND name = $2")
                    .bind(key)
                    .bind(name.to_vec())
                    .fetch_optional(&mut tx)
                    .await?
                    .is_some();
                if exists && flags & XATTR_CREATE != 0 {
                    return Err(StoreError::Exists("xattr".into()));
                }
                if !exists && flags & XATTR_REPLACE != 0 {
                    return Err(StoreError::NoXattr);
                }
                let sql = if exists {
                    "UPDATE xattrs SET value = $3 WHERE ino = $1 AND name = $2"
                } else {
                    "INSERT INTO xattrs (ino, name, value) VALUES ($1, $2, $3)"
                };
                db::query(sql)
                    .bind(key)
                    .bind(name.to_vec())
                    .bind(value.to_vec())
                    .execute(&mut tx)
                    .await?;
                set_ctime(&mut tx, ino, now).await
            },
            replay | _prev | Ok(()),
            made | _out | 0
        )
    }

    pub async fn list_xattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut conn = self.conn().await?;
        require_inode(&mut conn, ino).await?;
        db::query("SELECT name FROM xattrs WHERE ino = $1 ORDER BY name")
            .bind(to_i64(ino, "inode")?)
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| Ok(r.try_get::<Vec<u8>, _>(0)?))
            .collect()
    }

    pub async fn remove_xattr(&self, ino: u64, name: &[u8], origin: Origin) -> Result<()> {
        in_tx_once!(
            self,
            origin,
            |tx| {
                let now = Timespec::now();
                require_inode(&mut tx, ino)
                    .await?
                    .require_unpinned("removexattr")?;
                let done = db::query("DELETE FROM xattrs WHERE ino = $1 AND name = $2")
                    .bind(to_i64(ino, "inode")?)
                    .bind(name.to_vec())
                    .execute(&mut tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NoXattr);
                }
                set_ctime(&mut tx, ino, now).await
            },
            replay | _prev | Ok(()),
            made | _out | 0
        )
    }
}

/// Creates inode `ino` (a fresh id) named `args.name`, or with
/// `unnamed_holder` (the session holding it open) an unnamed one: an orphan
/// until linked.
async fn create_in(
    tx: &mut DbConn,
    ino: i64,
    args: &CreateArgs,
    unnamed_holder: Option<u64>,
    now: Timespec,
) -> Result<NameChange<Inode>> {
    let (parent, existing) = if unnamed_holder.is_none() {
        dir_and_entry(tx, args.parent, &args.name).await?
    } else {
        (require_dir(tx, args.parent).await?, None)
    };
    write_created(tx, ino, args, unnamed_holder, now, (parent, existing)).await
}

/// `create_in` once the directory and what `args.name` names in it are read.
async fn write_created(
    tx: &mut DbConn,
    ino: i64,
    args: &CreateArgs,
    unnamed_holder: Option<u64>,
    now: Timespec,
    read: (Inode, Option<Inode>),
) -> Result<NameChange<Inode>> {
    let (done, parent) = new_inode(ino, args, unnamed_holder.is_none(), now, read)?;
    let dir = insert_created(tx, &done, args, unnamed_holder, (parent, now)).await?;
    Ok(NameChange { done, dir })
}

/// The inode a create makes in directory `parent` (read with what
/// `args.name` names there), refused if it may not: no write. Returns it
/// with the directory.
fn new_inode(
    ino: i64,
    args: &CreateArgs,
    named: bool,
    now: Timespec,
    (parent, existing): (Inode, Option<Inode>),
) -> Result<(Inode, Inode)> {
    parent.require_mutable("create")?;
    if existing.is_some() {
        return Err(StoreError::Exists(
            String::from_utf8_lossy(&args.name).into_owned(),
        ));
    }
    let mut mode = args.mode & 0o7777;
    let mut gid = args.gid;
    // A setgid directory hands its group down, and its setgid bit to subdirectories.
    if parent.mode & S_ISGID != 0 {
        gid = parent.gid;
        if args.kind == FileKind::Directory {
            mode |= S_ISGID;
        }
    }
    let size = if args.kind == FileKind::Symlink {
        args.symlink_target.len() as u64
    } else {
        0
    };
    let nlink = match (named, args.kind == FileKind::Directory) {
        (false, _) => 0,
        (true, true) => 2,
        (true, false) => 1,
    };
    let inode = Inode {
        ino: ino as u64,
        kind: args.kind,
        mode,
        uid: args.uid,
        gid,
        size,
        nlink,
        atime: now,
        mtime: now,
        ctime: now,
        version: 0,
        rdev: args.rdev,
        has_xattrs: false,
        flags: 0,
    };
    Ok((inode, parent))
}

/// Writes inode `inode` (from `new_inode`, perhaps changed since: a
/// commit's size and times) and its name in `parent`, or with
/// `unnamed_holder` keeps it as that session's orphan. Returns the
/// directory as the create at time `now` leaves it (None for an unnamed
/// file).
async fn insert_created(
    tx: &mut DbConn,
    inode: &Inode,
    args: &CreateArgs,
    unnamed_holder: Option<u64>,
    (parent, now): (Inode, Timespec),
) -> Result<Option<Inode>> {
    let ino = to_i64(inode.ino, "inode")?;
    let target = (args.kind == FileKind::Symlink).then(|| args.symlink_target.clone());
    db::query(
        "INSERT INTO inodes (ino, kind, mode, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, version, rdev, target)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(ino)
    .bind(inode.kind as i64)
    .bind(i64::from(inode.mode))
    .bind(i64::from(inode.uid))
    .bind(i64::from(inode.gid))
    .bind(inode.size as i64)
    .bind(i64::from(inode.nlink))
    .bind(inode.atime.sec)
    .bind(i64::from(inode.atime.nsec))
    .bind(inode.mtime.sec)
    .bind(i64::from(inode.mtime.nsec))
    .bind(inode.ctime.sec)
    .bind(i64::from(inode.ctime.nsec))
    .bind(inode.version as i64)
    .bind(i64::from(inode.rdev))
    .bind(target)
    .defer_row(&mut *tx, ino)
    .await?;
    let Some(holder) = unnamed_holder else {
        insert_entry(tx, args.parent, &args.name, inode.ino).await?;
        let nlink_delta = if args.kind == FileKind::Directory {
            1
        } else {
            0
        };
        touch_dir(tx, args.parent, nlink_delta, now).await?;
        return Ok(Some(touched(parent, nlink_delta, now)));
    };
    db::query("INSERT INTO orphans (ino, since_ms) VALUES ($1, $2)")
        .bind(ino)
        .bind(super::now_ms())
        .execute(&mut *tx)
        .await?;
    sessions::hold_orphan(tx, inode.ino, holder).await?;
    Ok(None)
}

/// Refuses what may not be created under a number of the client's.
fn check_numbered(args: &CreateArgs) -> Result<()> {
    validate_name(&args.name)?;
    if args.kind != FileKind::Regular {
        return Err(StoreError::Invalid(
            "only a regular file is created under a number of the client's".into(),
        ));
    }
    Ok(())
}

/// A create under the client's inode number `ino` (see `create_numbered`).
pub(super) async fn create_numbered_in(
    tx: &mut DbConn,
    args: &CreateArgs,
    ino: u64,
    time: Timespec,
) -> Result<NameChange<Inode>> {
    let key = to_i64(ino, "inode")?;
    let (read, taken) = dir_entry_and_number(tx, args.parent, &args.name, Some(key)).await?;
    if taken {
        // The number is the client's alone: under its name, this is its own
        // create, landed before (a retry whose request id went with an
        // expired session).
        if let Some(made) = read.1.filter(|e| e.ino == ino) {
            return Ok(NameChange {
                done: made,
                dir: None,
            });
        }
        return Err(StoreError::Exists(format!("inode {ino}")));
    }
    write_created(tx, key, args, None, time, read).await
}

/// `create_numbered_in` and then `chunks::commit_in` of the new file, in
/// one read and one batch of writes: a new file has no chunks, so the
/// commit's checks need nothing the create writes, and the file's row is
/// written once, as the commit leaves it.
async fn create_committed_in(
    tx: &mut DbConn,
    args: &CreateArgs,
    ino: u64,
    time: Timespec,
    commit: &chunks::CommitArgs<'_>,
    chunk_size: u32,
) -> Result<NameChange<chunks::Committed>> {
    let key = to_i64(ino, "inode")?;
    let (read, taken, found) =
        dir_read(tx, args.parent, &args.name, Some(key), commit.chunks).await?;
    if taken {
        // Made before (or the number is taken): each step as alone.
        let made = create_numbered_in(tx, args, ino, time).await?;
        let done = chunks::commit_in(tx, commit, chunk_size).await?;
        return Ok(NameChange {
            done,
            dir: made.dir,
        });
    }
    let (created, parent) = new_inode(key, args, true, time, read)?;
    let inode = chunks::committed_inode(created, &found, commit, chunk_size)?;
    let dir = insert_created(tx, &inode, args, None, (parent, time)).await?;
    chunks::write_commit(tx, commit, &found).await?;
    let map = chunks::committed_map(commit.chunks, &found);
    Ok(NameChange {
        done: chunks::Committed {
            inode,
            chunks: Some(map),
        },
        dir,
    })
}

/// The inode a create's earlier run made (a replay): its directory unread.
pub(super) async fn replayed_create(tx: &mut DbConn, ino: i64) -> Result<NameChange<Inode>> {
    Ok(NameChange {
        done: require_inode(tx, ino as u64).await?,
        dir: None,
    })
}

async fn rename_in(
    tx: &mut DbConn,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    flags: u32,
    keep: KeepOpen<'_>,
) -> Result<Renamed> {
    let now = Timespec::now();
    require_dir(tx, parent).await?.require_unpinned("rename")?;
    let target_dir = require_dir(tx, new_parent).await?;
    target_dir.require_mutable("rename")?;
    let src_ino = entry_ino(tx, parent, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
    let src = require_inode(tx, src_ino).await?;
    src.require_unpinned("rename")?;
    let dst = match entry_ino(tx, new_parent, new_name).await? {
        Some(ino) => Some(require_inode(tx, ino).await?),
        None => None,
    };
    if let Some(dst) = &dst {
        // The name it had goes away: as an unlink in the target directory.
        target_dir.require_unpinned("rename")?;
        dst.require_unpinned("rename")?;
    }
    if src.kind == FileKind::Directory && is_within(tx, new_parent, src.ino).await? {
        return Err(StoreError::Invalid(
            "cannot move a directory into itself".into(),
        ));
    }
    if flags & RENAME_EXCHANGE != 0 {
        let dst = dst
            .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(new_name).into_owned()))?;
        if dst.kind == FileKind::Directory && is_within(tx, parent, dst.ino).await? {
            return Err(StoreError::Invalid(
                "cannot move a directory into itself".into(),
            ));
        }
        set_entry(tx, parent, name, dst.ino).await?;
        set_entry(tx, new_parent, new_name, src.ino).await?;
        if parent != new_parent {
            let src_dir = i64::from(src.kind == FileKind::Directory);
            let dst_dir = i64::from(dst.kind == FileKind::Directory);
            touch_dir(tx, parent, dst_dir - src_dir, now).await?;
            touch_dir(tx, new_parent, src_dir - dst_dir, now).await?;
        } else {
            touch_dir(tx, parent, 0, now).await?;
        }
        set_ctime(tx, src.ino, now).await?;
        set_ctime(tx, dst.ino, now).await?;
        return Ok(Renamed {
            moved: src.ino,
            replaced: Some(dst.ino),
        });
    }
    if let Some(dst) = &dst {
        if flags & RENAME_NOREPLACE != 0 {
            return Err(StoreError::Exists(
                String::from_utf8_lossy(new_name).into_owned(),
            ));
        }
        if dst.ino == src.ino {
            // Two names of one inode: POSIX says do nothing.
            return Ok(Renamed::default());
        }
        match (
            src.kind == FileKind::Directory,
            dst.kind == FileKind::Directory,
        ) {
            (true, false) => return Err(StoreError::NotDir),
            (false, true) => return Err(StoreError::IsDir),
            (true, true) if has_entries(tx, dst.ino).await? => return Err(StoreError::NotEmpty),
            _ => {}
        }
        delete_entry(tx, new_parent, new_name).await?;
        if dst.kind == FileKind::Directory {
            touch_dir(tx, new_parent, -1, now).await?;
            delete_inode(tx, dst.ino).await?;
        } else {
            drop_link(tx, dst, now, keep).await?;
        }
    }
    delete_entry(tx, parent, name).await?;
    insert_entry(tx, new_parent, new_name, src.ino).await?;
    let moved_dir = i64::from(src.kind == FileKind::Directory && parent != new_parent);
    touch_dir(tx, parent, -moved_dir, now).await?;
    if parent != new_parent {
        touch_dir(tx, new_parent, moved_dir, now).await?;
    }
    set_ctime(tx, src.ino, now).await?;
    Ok(Renamed {
        moved: src.ino,
        replaced: dst.map(|d| d.ino),
    })
}

/// The inodes a rename touched: the one moved and the one whose name it took
/// (exchanged, or unlinked).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub moved: u64,
    pub replaced: Option<u64>,
}

async fn setattr_in(
    tx: &mut DbConn,
    chunk_size: u32,
    ino: u64,
    args: &SetAttrArgs,
) -> Result<Inode> {
    let now = Timespec::now();
    let mut inode = require_inode(tx, ino).await?;
    if args.mode.is_some() || args.uid.is_some() || args.gid.is_some() || args.explicit_times {
        inode.require_unpinned("setattr")?;
    }
    if args.atime.is_some() || args.mtime.is_some() {
        inode.require_mutable("utimes")?;
    }
    if args.size.is_some_and(|s| s != inode.size) {
        inode.require_unpinned("truncate")?;
    }
    if let Some(flags) = args.flags {
        let unsupported = flags & !dfs_proto::inode_flags::SUPPORTED;
        if unsupported != 0 {
            return Err(StoreError::Unsupported(format!(
                "inode flags {unsupported:#x}"
            )));
        }
        inode.flags = flags;
    }
    if let Some(size) = args.size {
        match inode.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(StoreError::IsDir),
            _ => return Err(StoreError::Invalid("truncate of a special file".into())),
        }
        if size > dfs_proto::MAX_FILE_SIZE {
            return Err(StoreError::FileTooBig(size));
        }
        if size != inode.size {
            super::chunks::truncate_map(tx, ino, size, chunk_size).await?;
            inode.size = size;
            inode.version += 1;
            inode.mtime = now;
        }
    }
    OwnerChanges {
        mode: args.mode,
        uid: args.uid,
        gid: args.gid,
        atime: args.atime,
    }
    .apply(&mut inode);
    if let Some(t) = args.mtime {
        inode.mtime = t;
    }
    inode.ctime = now;
    store_attrs(&inode)?.execute(&mut *tx).await?;
    Ok(inode)
}

// ---- helpers used inside a transaction ----

async fn require_dir(conn: &mut DbConn, ino: u64) -> Result<Inode> {
    let inode = require_inode(conn, ino).await?;
    if inode.kind != FileKind::Directory {
        return Err(StoreError::NotDir);
    }
    Ok(inode)
}

/// Directory `parent` and the inode its entry `name` names (None: no such
/// entry), in one query: the directory, the entry and the inode together.
async fn dir_and_entry(
    conn: &mut DbConn,
    parent: u64,
    name: &[u8],
) -> Result<(Inode, Option<Inode>)> {
    Ok(dir_entry_and_number(conn, parent, name, None).await?.0)
}

/// `dir_and_entry`, and in the same query whether inode `number` exists
/// (false when not asked): a numbered create's checks in one round trip.
async fn dir_entry_and_number(
    conn: &mut DbConn,
    parent: u64,
    name: &[u8],
    number: Option<i64>,
) -> Result<((Inode, Option<Inode>), bool)> {
    let (read, taken, _) = dir_read(conn, parent, name, number, &[]).await?;
    Ok((read, taken))
}

/// `dir_entry_and_number`, and in the same query what a commit of `chunks`
/// to the new inode `number` checks (`chunks::check_columns`).
async fn dir_read(
    conn: &mut DbConn,
    parent: u64,
    name: &[u8],
    number: Option<i64>,
    chunks: &[chunks::CommitChunk],
) -> Result<((Inode, Option<Inode>), bool, Vec<chunks::CommitFound>)> {
    fn sql(taken: &str) -> String {
        format!(
            "SELECT d.ino AS found, {}, {}{taken} FROM inodes p
             LEFT JOIN dentries d ON d.parent = p.ino AND d.name = $2
             LEFT JOIN inodes i ON i.ino = d.ino
             WHERE p.ino = $1",
            inode_columns_as("p", "p_"),
            inode_columns_as("i", "c_")
        )
    }
    const TAKEN: &str = ", (SELECT COUNT(*) FROM inodes WHERE ino = $3) AS taken";
    static PLAIN: LazyLock<String> = LazyLock::new(|| sql(""));
    static NUMBERED: LazyLock<String> = LazyLock::new(|| sql(TAKEN));
    let no_dir = || StoreError::NotFound(format!("inode {parent}"));
    let key = i64::try_from(parent).map_err(|_| no_dir())?;
    let checked;
    let text: &str = match (number, chunks.is_empty()) {
        (None, _) => &PLAIN,
        (Some(_), true) => &NUMBERED,
        (Some(_), false) => {
            let mut columns = String::from(TAKEN);
            let mut first = 4;
            for (k, c) in chunks.iter().enumerate() {
                columns.push_str(", ");
                columns.push_str(&chunks::check_columns(k, first, c, false));
                first += 1 + c.node_ids.len();
            }
            checked = sql(&columns);
            &checked
        }
    };
    let mut q = db::query(text).bind(key).bind(name.to_vec());
    if let Some(n) = number {
        q = q.bind(n);
        for c in chunks {
            q = chunks::bind_checks(q, c, false)?;
        }
    }
    let row = q.fetch_optional(&mut *conn).await?.ok_or_else(no_dir)?;
    let taken = match number {
        Some(_) => row.try_get::<i64, _>("taken")? > 0,
        None => false,
    };
    let found = match number {
        Some(_) => chunks
            .iter()
            .enumerate()
            .map(|(k, c)| chunks::checked(&row, k, c, false))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    Ok((dir_and_entry_of(&row)?, taken, found))
}

/// The directory and the inode its entry names (None: no such entry) as
/// `dir_read`'s columns hold them (`p_`, `found`, `c_`).
fn dir_and_entry_of(row: &db::Row) -> Result<(Inode, Option<Inode>)> {
    let dir = inode_from_prefixed(row, "p_")?;
    if dir.kind != FileKind::Directory {
        return Err(StoreError::NotDir);
    }
    let Some(found) = row.try_get::<Option<i64>, _>("found")? else {
        return Ok((dir, None));
    };
    if row.try_get::<Option<i64>, _>("c_ino")?.is_none() {
        return Err(StoreError::NotFound(format!("inode {found}")));
    }
    Ok((dir, Some(inode_from_prefixed(row, "c_")?)))
}

/// `dir_and_entry` of each `(parent, name)`, in one query: `Err` in the
/// outer result when the database failed, in an inner one when that call's
/// directory is missing or not a directory.
pub(super) async fn dirs_and_entries(
    conn: &mut DbConn,
    names: &[(u64, &[u8])],
) -> Result<Vec<Result<(Inode, Option<Inode>)>>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let (sql, args) = match conn.sqlite() {
        Some(_) => entries_by_values(names),
        None => entries_by_arrays(names),
    };
    let q = args.into_iter().fold(db::query(&sql), db::Query::bind);
    let mut read: Vec<Result<(Inode, Option<Inode>)>> = names
        .iter()
        .map(|(parent, _)| Err(StoreError::NotFound(format!("inode {parent}"))))
        .collect();
    for row in q.fetch_all(&mut *conn).await? {
        let k = row.try_get::<i64, _>("k")?;
        if let Some(slot) = usize::try_from(k).ok().and_then(|k| read.get_mut(k)) {
            *slot = dir_and_entry_of(&row);
        }
    }
    Ok(read)
}

/// `dirs_and_entries`' query on SQLite: a VALUES list, padded to a power
/// of two with the last name again (a few statements to prepare, not one
/// per batch size). SQLite probes the indexes row by row anyway.
fn entries_by_values(names: &[(u64, &[u8])]) -> (String, Vec<db::Value>) {
    let rows = names.len().next_power_of_two();
    let values = (0..rows)
        .map(|k| format!("({})", db::placeholders(3 * k + 1, 3)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH q(k, parent, name) AS (VALUES {values})
         SELECT q.k AS k, d.ino AS found, {}, {} FROM q
         JOIN inodes p ON p.ino = q.parent
         LEFT JOIN dentries d ON d.parent = q.parent AND d.name = q.name
         LEFT JOIN inodes i ON i.ino = d.ino",
        inode_columns_as("p", "p_"),
        inode_columns_as("i", "c_")
    );
    let last = names.len().saturating_sub(1);
    let mut args = Vec::with_capacity(3 * rows);
    for k in 0..rows {
        let (parent, name) = names[k.min(last)];
        // A number past i64 names no directory: no row comes back for it.
        let parent = i64::try_from(parent).unwrap_or(-1);
        args.extend([
            db::Value::Int(k.min(last) as i64),
            db::Value::Int(parent),
            db::Value::Blob(name.to_vec()),
        ]);
    }
    (sql, args)
}

/// `dirs_and_entries`' query on PostgreSQL: one text for any number of
/// names (arrays), prepared once and planned once. Each name is probed
/// through the indexes (LATERAL ... LIMIT 1): joined as sets, PostgreSQL
/// hashes whole tables of a few thousand rows, which costs more than the
/// probes and, at SERIALIZABLE, locks the whole table against every other
/// writer.
fn entries_by_arrays(names: &[(u64, &[u8])]) -> (String, Vec<db::Value>) {
    let sql = format!(
        "SELECT q.k AS k, d.ino AS found, {}, {}
         FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS q(k, parent, name)
         JOIN LATERAL (SELECT * FROM inodes WHERE ino = q.parent LIMIT 1) p ON true
         LEFT JOIN LATERAL (SELECT ino FROM dentries
                            WHERE parent = q.parent AND name = q.name LIMIT 1) d ON true
         LEFT JOIN LATERAL (SELECT * FROM inodes WHERE ino = d.ino LIMIT 1) i ON true",
        inode_columns_as("p", "p_"),
        inode_columns_as("i", "c_")
    );
    let keys = (0..names.len()).map(|k| Some(k as i64)).collect();
    // A number past i64 names no directory: no row comes back for it.
    let parents = names
        .iter()
        .map(|(p, _)| Some(i64::try_from(*p).unwrap_or(-1)))
        .collect();
    let names = names.iter().map(|(_, n)| Some(n.to_vec())).collect();
    let args = vec![
        db::Value::Ints(keys),
        db::Value::Ints(parents),
        db::Value::Blobs(names),
    ];
    (sql, args)
}

async fn entry_ino(conn: &mut DbConn, parent: u64, name: &[u8]) -> Result<Option<u64>> {
    Ok(
        db::query("SELECT ino FROM dentries WHERE parent = $1 AND name = $2")
            .bind(to_i64(parent, "inode")?)
            .bind(name.to_vec())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .map(|v| v as u64),
    )
}

/// The directory holding directory `ino` (the root is its own parent).
async fn parent_of(conn: &mut DbConn, ino: u64) -> Result<u64> {
    if ino == ROOT_INO {
        return Ok(ROOT_INO);
    }
    let row = db::query("SELECT parent FROM dentries WHERE ino = $1 LIMIT 1")
        .bind(to_i64(ino, "inode")?)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("directory {ino} has no entry")))?;
    Ok(row.try_get::<i64, _>(0)? as u64)
}

/// Whether directory `dir` is `ancestor` or lies below it.
async fn is_within(conn: &mut DbConn, dir: u64, ancestor: u64) -> Result<bool> {
    let mut cur = dir;
    for _ in 0..100_000 {
        if cur == ancestor {
            return Ok(true);
        }
        if cur == ROOT_INO {
            return Ok(false);
        }
        cur = parent_of(conn, cur).await?;
    }
    Err(StoreError::Corrupt("directory loop".into()))
}

async fn has_entries(conn: &mut DbConn, dir: u64) -> Result<bool> {
    Ok(
        db::query("SELECT 1 FROM dentries WHERE parent = $1 LIMIT 1")
            .bind(to_i64(dir, "inode")?)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

async fn insert_entry(conn: &mut DbConn, parent: u64, name: &[u8], ino: u64) -> Result<()> {
    db::query("INSERT INTO dentries (parent, name, ino) VALUES ($1, $2, $3)")
        .bind(to_i64(parent, "inode")?)
        .bind(name.to_vec())
        .bind(to_i64(ino, "inode")?)
        .defer_row(&mut *conn, entry_key(parent, name))
        .await?;
    Ok(())
}

async fn set_entry(conn: &mut DbConn, parent: u64, name: &[u8], ino: u64) -> Result<()> {
    db::query("UPDATE dentries SET ino = $3 WHERE parent = $1 AND name = $2")
        .bind(to_i64(parent, "inode")?)
        .bind(name.to_vec())
        .bind(to_i64(ino, "inode")?)
        .defer_row(&mut *conn, entry_key(parent, name))
        .await?;
    Ok(())
}

/// The `defer_row` key of entry `name` in `parent` (`db::row_key`).
fn entry_key(parent: u64, name: &[u8]) -> i64 {
    db::row_key(&(parent, name))
}

pub(super) async fn delete_entry(conn: &mut DbConn, parent: u64, name: &[u8]) -> Result<()> {
    db::query("DELETE FROM dentries WHERE parent = $1 AND name = $2")
        .bind(to_i64(parent, "inode")?)
        .bind(name.to_vec())
        .defer_row(&mut *conn, entry_key(parent, name))
        .await?;
    Ok(())
}

/// A directory's contents changed: mtime and ctime move, nlink by `nlink_delta`.
/// Directory `dir` (read in this transaction) as `touch_dir` leaves it.
pub(super) fn touched(mut dir: Inode, nlink_delta: i64, now: Timespec) -> Inode {
    dir.nlink = (i64::from(dir.nlink) + nlink_delta).max(0) as u32;
    dir.mtime = now;
    dir.ctime = now;
    dir
}

pub(super) async fn touch_dir(
    conn: &mut DbConn,
    dir: u64,
    nlink_delta: i64,
    now: Timespec,
) -> Result<()> {
    db::query(
        "UPDATE inodes SET nlink = nlink + $2, mtime_s = $3, mtime_ns = $4, ctime_s = $3, ctime_ns = $4 WHERE ino = $1",
    )
    .bind(to_i64(dir, "inode")?)
    .bind(nlink_delta)
    .bind(now.sec)
    .bind(i64::from(now.nsec))
    .defer_row(&mut *conn, to_i64(dir, "inode")?)
    .await?;
    Ok(())
}

async fn set_ctime(conn: &mut DbConn, ino: u64, now: Timespec) -> Result<()> {
    db::query("UPDATE inodes SET ctime_s = $2, ctime_ns = $3 WHERE ino = $1")
        .bind(to_i64(ino, "inode")?)
        .bind(now.sec)
        .bind(i64::from(now.nsec))
        .defer_row(&mut *conn, to_i64(ino, "inode")?)
        .await?;
    Ok(())
}

/// Who keeps a file whose last name goes: the remover's session, if it has
/// the file open itself (`remover`; its own word, which meta's record of
/// its opens may lag), and every other session with it open.
#[derive(Clone, Copy)]
pub(super) struct KeepOpen<'a> {
    remover: Option<u64>,
    session: u64,
    open: &'a super::open_files::OpenFiles,
}

impl super::Store {
    pub(super) fn keep_open(&self, remover: Option<u64>, origin: Origin) -> KeepOpen<'_> {
        KeepOpen {
            remover,
            session: origin.session,
            open: &self.open_files,
        }
    }

    /// Which sessions have which files open (see `open_files.rs`).
    pub fn open_files(&self) -> &super::open_files::OpenFiles {
        &self.open_files
    }
}

/// Removes `name` from `parent` if it names a non-directory (inode `expect`
/// when given) and returns that inode. Every check comes before the first
/// write, so a failed unlink changed nothing (a batch relies on it).
pub(super) async fn unlink_in(
    conn: &mut DbConn,
    parent: u64,
    name: &[u8],
    expect: Option<u64>,
    keep: KeepOpen<'_>,
) -> Result<NameChange<u64>> {
    let now = Timespec::now();
    let (dir, entry) = dir_and_entry(conn, parent, name).await?;
    dir.require_unpinned("unlink")?;
    let inode = entry
        .filter(|i| expect.is_none_or(|e| e == i.ino))
        .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
    let ino = inode.ino;
    if inode.kind == FileKind::Directory {
        return Err(StoreError::IsDir);
    }
    inode.require_unpinned("unlink")?;
    delete_entry(conn, parent, name).await?;
    touch_dir(conn, parent, 0, now).await?;
    drop_link(conn, &inode, now, keep).await?;
    Ok(NameChange {
        done: ino,
        dir: Some(touched(dir, 0, now)),
    })
}

/// One name of a non-directory is gone: drop its link count, and the inode
/// with its data once no name is left, unless a client holds it open
/// (`keep`): then it stays as an orphan until every holder releases it or
/// ends.
pub(super) async fn drop_link(
    conn: &mut DbConn,
    inode: &Inode,
    now: Timespec,
    keep: KeepOpen<'_>,
) -> Result<()> {
    let holders: Vec<u64> = if inode.nlink <= 1 {
        keep.remover
            .into_iter()
            .chain(keep.open.claim(inode.ino, Some(keep.session)))
            .collect()
    } else {
        Vec::new()
    };
    if holders.is_empty() {
        if inode.nlink > 1 {
            return drop_one_link(conn, inode.ino, now).await;
        }
        if !chunks::may_hold_data(inode) {
            return delete_inode(conn, inode.ino).await;
        }
        // Queued for the purge, it keeps its inode till then: no links, new ctime.
        drop_one_link(conn, inode.ino, now).await?;
        return chunks::queue_deletion(conn, inode.ino).await;
    }
    db::query("INSERT INTO orphans (ino, since_ms) VALUES ($1, $2)")
        .bind(to_i64(inode.ino, "inode")?)
        .bind(super::now_ms())
        .execute(&mut *conn)
        .await?;
    for holder in holders {
        // Another session as meta remembers it may have ended meanwhile
        // (expired by another meta): then it holds nothing.
        if Some(holder) == keep.remover || sessions::exists(conn, holder).await? {
            sessions::hold_orphan(conn, inode.ino, holder).await?;
        }
    }
    drop_one_link(conn, inode.ino, now).await
}

async fn drop_one_link(conn: &mut DbConn, ino: u64, now: Timespec) -> Result<()> {
    db::query("UPDATE inodes SET nlink = nlink - 1, ctime_s = $2, ctime_ns = $3 WHERE ino = $1")
        .bind(to_i64(ino, "inode")?)
        .bind(now.sec)
        .bind(i64::from(now.nsec))
        .defer_row(&mut *conn, to_i64(ino, "inode")?)
        .await?;
    Ok(())
}
