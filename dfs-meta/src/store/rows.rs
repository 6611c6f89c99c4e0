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

/// The column list `inode_from_row` expects, for SELECTs (prefix with a table alias as needed).
pub(crate) const INODE_COLUMNS: &str =
    "ino, kind, mode, uid, gid, size, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, version, rdev, flags";

/// Appended to a SELECT of `INODE_COLUMNS` from `inodes` aliased `alias`.
pub(crate) fn has_xattrs_column(alias: &str) -> String {
    format!("(SELECT COUNT(*) FROM xattrs x WHERE x.ino = {alias}.ino) AS xattr_count")
}

pub(crate) fn inode_from_row(row: &db::Row) -> Result<Inode> {
    let kind_raw: i64 = row.try_get("kind")?;
    let kind = FileKind::from_i64(kind_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("inode kind {kind_raw}")))?;
    let ts = |s: &str, ns: &str| -> Result<Timespec> {
        Ok(Timespec {
            sec: row.try_get(s)?,
            nsec: row.try_get::<i64, _>(ns)? as u32,
        })
    };
    Ok(Inode {
        ino: row.try_get::<i64, _>("ino")? as u64,
        kind,
        mode: row.try_get::<i64, _>("mode")? as u32,
        uid: row.try_get::<i64, _>("uid")? as u32,
        gid: row.try_get::<i64, _>("gid")? as u32,
        size: row.try_get::<i64, _>("size")? as u64,
        nlink: row.try_get::<i64, _>("nlink")? as u32,
        atime: ts("atime_s", "atime_ns")?,
        mtime: ts("mtime_s", "mtime_ns")?,
        ctime: ts("ctime_s", "ctime_ns")?,
        version: row.try_get::<i64, _>("version")? as u64,
        rdev: row.try_get::<i64, _>("rdev")? as u32,
        has_xattrs: row.try_get::<i64, _>("xattr_count")? > 0,
        flags: row.try_get::<i64, _>("flags")? as u32,
    })
}

/// Converts a u64 from the wire to the i64 SQL stores, refusing values that do not fit.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} is too large")))
}
