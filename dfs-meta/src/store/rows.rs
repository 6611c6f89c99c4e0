//! The store's own types for what rows hold, and decoding a row into them.

use super::db;
use dfs_proto::inode_flags;

use super::{Result, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum FileKind {
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl FileKind {
    pub fn from_i64(v: i64) -> Option<FileKind> {
        Some(match v {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch; 64-bit seconds, so dates past 2106 work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Timespec {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(_) => Timespec::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub version: u64,
    pub rdev: u32,
    pub has_xattrs: bool,
    /// chattr flags (`FS_*_FL`): see `Inode::immutable` and `Inode::append_only`.
    pub flags: u32,
}

impl Inode {
    /// chattr +i: no change to data, attributes or names, by anyone.
    pub fn immutable(&self) -> bool {
        self.flags & inode_flags::IMMUTABLE != 0
    }

    /// chattr +a: data may only grow at the end; no rename, unlink, link,
    /// chmod, chown or explicit times (a directory: entries are only added).
    pub fn append_only(&self) -> bool {
        self.flags & inode_flags::APPEND != 0
    }

    /// EPERM for an inode that is immutable or append-only.
    pub fn require_unpinned(&self, what: &str) -> Result<()> {
        if self.immutable() || self.append_only() {
            return Err(StoreError::NotPermitted(format!(
                "{what}: the inode is immutable or append-only"
            )));
        }
        Ok(())
    }

    /// EPERM for an immutable inode.
    pub fn require_mutable(&self, what: &str) -> Result<()> {
        if self.immutable() {
            return Err(StoreError::NotPermitted(format!(
                "{what}: the inode is immutable"
            )));
        }
        Ok(())
    }
}

/// An inode's columns, as `inode_from_row` reads them (with `xattr_count`).
const INODE_COLUMNS: &str =
    "ino, kind, mode, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, version, rdev, flags";

/// The columns of inode table `alias`, each named `{prefix}{column}`, for
/// `inode_from_prefixed` (a prefix tells apart several inodes in one row;
/// with none, `inode_from_row` reads them).
pub(crate) fn inode_columns_as(alias: &str, prefix: &str) -> String {
    INODE_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c} AS {prefix}{c}"))
        .chain(std::iter::once(format!(
            "(SELECT COUNT(*) FROM xattrs x WHERE x.ino = {alias}.ino) AS {prefix}xattr_count"
        )))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn inode_from_row(row: &db::Row) -> Result<Inode> {
    inode_from_prefixed(row, "")
}

/// The inode in the columns named `{prefix}{column}` (`inode_columns_as`).
pub(crate) fn inode_from_prefixed(row: &db::Row, prefix: &str) -> Result<Inode> {
    // (No allocation per column without a prefix: readdir decodes thousands.)
    let int = |c: &str| -> Result<i64> {
        Ok(if prefix.is_empty() {
            row.try_get::<i64, _>(c)?
        } else {
            row.try_get::<i64, _>(format!("{prefix}{c}").as_str())?
        })
    };
    let kind_raw = int("kind")?;
    let kind = FileKind::from_i64(kind_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("inode kind {kind_raw}")))?;
    let ts = |s: &str, ns: &str| -> Result<Timespec> {
        Ok(Timespec {
            sec: int(s)?,
            nsec: int(ns)? as u32,
        })
    };
    Ok(Inode {
        ino: int("ino")? as u64,
        kind,
        mode: int("mode")? as u32,
        uid: int("uid")? as u32,
        gid: int("gid")? as u32,
        size: int("size")? as u64,
        nlink: int("nlink")? as u32,
        atime: ts("atime_s", "atime_ns")?,
        mtime: ts("mtime_s", "mtime_ns")?,
        ctime: ts("ctime_s", "ctime_ns")?,
        version: int("version")? as u64,
        rdev: int("rdev")? as u32,
        has_xattrs: int("xattr_count")? > 0,
        flags: int("flags")? as u32,
    })
}

/// Converts a u64 from the wire to the i64 SQL stores, refusing values that do not fit.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} is too large")))
}

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;

/// chmod, chown and an access time: what SetAttr and a commit carrying a
/// writer's attribute changes (`Store::commit_write_with`) both apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timespec>,
}

impl OwnerChanges {
    pub const NONE: OwnerChanges = OwnerChanges {
        mode: None,
        uid: None,
        gid: None,
        atime: None,
    };

    pub fn is_empty(&self) -> bool {
        *self == OwnerChanges::NONE
    }

    /// Applies the changes to `inode` (ctime is the caller's).
    pub fn apply(&self, inode: &mut Inode) {
        if let Some(mode) = self.mode {
            inode.mode = mode & 0o7777;
        }
        let owner_changed =
            self.uid.is_some_and(|u| u != inode.uid) || self.gid.is_some_and(|g| g != inode.gid);
        if let Some(uid) = self.uid {
            inode.uid = uid;
        }
        if let Some(gid) = self.gid {
            inode.gid = gid;
        }
        // chown clears setuid, and setgid when it means "setgid" (group-executable).
        if owner_changed && inode.kind != FileKind::Directory && self.mode.is_none() {
            inode.mode &= !S_ISUID;
            if inode.mode & S_IXGRP != 0 {
                inode.mode &= !S_ISGID;
            }
        }
        if let Some(t) = self.atime {
            inode.atime = t;
        }
    }
}
