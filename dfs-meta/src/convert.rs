//! Conversions between the wire types and the store's types. Incoming values are
//! validated here once; a malformed request becomes `invalid_argument`.

use dfs_proto::pb;
use tonic::Status;

use crate::store::{FileKind, Inode, NodeRecord, Timespec};

pub fn attr(i: &Inode) -> pb::Attr {
    pb::Attr {
        ino: i.ino,
        kind: kind_to_pb(i.kind) as i32,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: i.nlink,
        atime: Some(ts_to_pb(i.atime)),
        mtime: Some(ts_to_pb(i.mtime)),
        ctime: Some(ts_to_pb(i.ctime)),
        version: i.version,
        rdev: i.rdev,
        has_xattrs: i.has_xattrs,
        flags: i.flags,
    }
}

pub fn attr_reply(i: &Inode) -> pb::AttrReply {
    pb::AttrReply {
        attr: Some(attr(i)),
        parent: None,
    }
}

pub fn ts_to_pb(t: Timespec) -> pb::Timespec {
    pb::Timespec {
        sec: t.sec,
        nsec: t.nsec,
    }
}

pub fn ts_from_pb(t: &pb::Timespec) -> Result<Timespec, Status> {
    if t.nsec >= 1_000_000_000 {
        return Err(Status::invalid_argument("nanoseconds must be below 1e9"));
    }
    Ok(Timespec {
        sec: t.sec,
        nsec: t.nsec,
    })
}

pub fn kind_to_pb(k: FileKind) -> pb::FileKind {
    match k {
        FileKind::Regular => pb::FileKind::Regular,
        FileKind::Directory => pb::FileKind::Directory,
        FileKind::Symlink => pb::FileKind::Symlink,
        FileKind::Fifo => pb::FileKind::Fifo,
        FileKind::Socket => pb::FileKind::Socket,
        FileKind::CharDevice => pb::FileKind::CharDevice,
        FileKind::BlockDevice => pb::FileKind::BlockDevice,
    }
}

pub fn kind_from_pb(raw: i32) -> Result<FileKind, Status> {
    match pb::FileKind::try_from(raw) {
        Ok(pb::FileKind::Regular) => Ok(FileKind::Regular),
        Ok(pb::FileKind::Directory) => Ok(FileKind::Directory),
        Ok(pb::FileKind::Symlink) => Ok(FileKind::Symlink),
        Ok(pb::FileKind::Fifo) => Ok(FileKind::Fifo),
        Ok(pb::FileKind::Socket) => Ok(FileKind::Socket),
        Ok(pb::FileKind::CharDevice) => Ok(FileKind::CharDevice),
        Ok(pb::FileKind::BlockDevice) => Ok(FileKind::BlockDevice),
        Ok(pb::FileKind::Unspecified) | Err(_) => {
            Err(Status::invalid_argument(format!("file kind {raw}")))
        }
    }
}

pub fn node_ref(n: &NodeRecord) -> pb::NodeRef {
    pb::NodeRef {
        node_id: n.id,
        addr: n.addr.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends as a time or a kind is taken back
        /// exactly, or refused with INVALID_ARGUMENT: never a panic.
        #[test]
        fn times_and_kinds_convert_or_are_refused(sec in any::<i64>(), nsec in any::<u32>(), kind in any::<i32>()) {
            match ts_from_pb(&pb::Timespec { sec, nsec }) {
                Ok(t) => prop_assert_eq!(ts_to_pb(t), pb::Timespec { sec, nsec }),
                Err(s) => prop_assert_eq!(s.code(), tonic::Code::InvalidArgument),
            }
            match kind_from_pb(kind) {
                Ok(k) => prop_assert_eq!(kind_to_pb(k) as i32, kind),
                Err(s) => prop_assert_eq!(s.code(), tonic::Code::InvalidArgument),
            }
        }
    }
}
