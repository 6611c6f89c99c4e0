//! The store's types as the wire carries them in replies (requests come in
//! through `request`).

use dfs_proto::pb;

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
        ..Default::default()
    }
}

pub fn ts_to_pb(t: Timespec) -> pb::Timespec {
    pb::Timespec {
        sec: t.sec,
        nsec: t.nsec,
    }
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

pub fn node_ref(n: &NodeRecord) -> pb::NodeRef {
    pb::NodeRef {
        node_id: n.id,
        addr: n.addr.clone(),
    }
}
