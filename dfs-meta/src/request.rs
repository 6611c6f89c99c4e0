//! Every file request, checked once at the service's edge and turned into
//! the store's types (`TryFrom<pb::...>`): names, kinds, times, flags,
//! ranges and list sizes. A handler sees only well-formed requests; a
//! malformed one is answered INVALID_ARGUMENT (with the errno POSIX gives,
//! such as ENAMETOOLONG) before anything runs. The store keeps its own
//! checks too, as the invariants of a library that tests and tools also call.

use std::collections::HashSet;

use dfs_proto::{pb, status_from_errno, MAX_NAME_LEN, MAX_PATH_LEN};
use tonic::Status;

use crate::store::{
    CommitChunk, CreateArgs, FileKind, LockKind, LockRange, OwnerChanges, Timespec,
    MAX_PLACE_BATCH, MAX_XATTR_VALUE,
};

/// Chunks one commit may name (a 4 MiB chunk each: 64 GiB of writes).
pub const MAX_COMMIT_CHUNKS: usize = 16 * 1024;
/// Copies of one chunk a placement may ask for.
pub const MAX_PLACE_COUNT: u32 = 16;

const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

fn invalid(what: impl Into<String>) -> Status {
    Status::invalid_argument(what)
}

/// One directory entry name: 1..255 bytes, no `/` or NUL, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(Vec<u8>);

impl TryFrom<Vec<u8>> for Name {
    type Error = Status;

    fn try_from(name: Vec<u8>) -> Result<Name, Status> {
        dfs_proto::validate_name(&name).map_err(|e| status_from_errno(e.errno(), e.to_string()))?;
        Ok(Name(name))
    }
}

impl Name {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// An xattr name: 1..255 bytes without NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrName(Vec<u8>);

impl TryFrom<Vec<u8>> for XattrName {
    type Error = Status;

    fn try_from(name: Vec<u8>) -> Result<XattrName, Status> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(&0) {
            return Err(invalid("xattr name must be 1..255 bytes without NUL"));
        }
        Ok(XattrName(name))
    }
}

impl XattrName {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

pub fn kind(raw: i32) -> Result<FileKind, Status> {
    match pb::FileKind::try_from(raw) {
        Ok(pb::FileKind::Regular) => Ok(FileKind::Regular),
        Ok(pb::FileKind::Directory) => Ok(FileKind::Directory),
        Ok(pb::FileKind::Symlink) => Ok(FileKind::Symlink),
        Ok(pb::FileKind::Fifo) => Ok(FileKind::Fifo),
        Ok(pb::FileKind::Socket) => Ok(FileKind::Socket),
        Ok(pb::FileKind::CharDevice) => Ok(FileKind::CharDevice),
        Ok(pb::FileKind::BlockDevice) => Ok(FileKind::BlockDevice),
        Ok(pb::FileKind::Unspecified) | Err(_) => Err(invalid(format!("file kind {raw}"))),
    }
}

pub fn time(t: &pb::Timespec) -> Result<Timespec, Status> {
    if t.nsec >= 1_000_000_000 {
        return Err(invalid("nanoseconds must be below 1e9"));
    }
    Ok(Timespec {
        sec: t.sec,
        nsec: t.nsec,
    })
}

pub struct Lookup {
    pub parent: u64,
    pub name: Name,
}

impl TryFrom<pb::LookupRequest> for Lookup {
    type Error = Status;

    fn try_from(r: pb::LookupRequest) -> Result<Self, Status> {
        Ok(Lookup {
            parent: r.parent,
            name: r.name.try_into()?,
        })
    }
}

pub struct ResolvePath {
    pub path: Vec<u8>,
}

impl TryFrom<pb::ResolvePathRequest> for ResolvePath {
    type Error = Status;

    fn try_from(r: pb::ResolvePathRequest) -> Result<Self, Status> {
        if r.path.len() > MAX_PATH_LEN {
            return Err(status_from_errno(
                libc::ENAMETOOLONG,
                "a path is at most 4095 bytes",
            ));
        }
        if r.path.contains(&0) {
            return Err(invalid("a path without NUL"));
        }
        Ok(ResolvePath { path: r.path })
    }
}

/// A time a setattr sets: the caller's value, or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Keep,
    Now,
    At(Timespec),
}

impl SetTime {
    fn from_pb(at: Option<&pb::Timespec>, now: bool) -> Result<SetTime, Status> {
        match (at, now) {
            (_, true) => Ok(SetTime::Now),
            (Some(t), false) => Ok(SetTime::At(time(t)?)),
            (None, false) => Ok(SetTime::Keep),
        }
    }

    pub fn resolve(self, now: Timespec) -> Option<Timespec> {
        match self {
            SetTime::Keep => None,
            SetTime::Now => Some(now),
            SetTime::At(t) => Some(t),
        }
    }
}

pub struct SetAttr {
    pub ino: u64,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
    pub flags: Option<u32>,
}

impl SetAttr {
    /// Whether the caller gave times (utimensat with values), not "now".
    pub fn explicit_times(&self) -> bool {
        matches!(self.atime, SetTime::At(_)) || matches!(self.mtime, SetTime::At(_))
    }
}

impl TryFrom<pb::SetAttrRequest> for SetAttr {
    type Error = Status;

    fn try_from(r: pb::SetAttrRequest) -> Result<Self, Status> {
        if r.size.is_some_and(|s| s > i64::MAX as u64) {
            return Err(status_from_errno(libc::EFBIG, "size beyond 2^63"));
        }
        Ok(SetAttr {
            ino: r.ino,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime: SetTime::from_pb(r.atime.as_ref(), r.atime_now)?,
            mtime: SetTime::from_pb(r.mtime.as_ref(), r.mtime_now)?,
            flags: r.flags,
        })
    }
}

/// A create, as the store takes it (the name empty for an unnamed file).
pub struct Create {
    pub args: CreateArgs,
    /// open(O_TMPFILE): a regular file with no name.
    pub unnamed: bool,
    /// A create the client answered before sending it (an early create).
    pub numbered: Option<Numbered>,
    /// Inode numbers the client wants granted (at most `MAX_INO_GRANT`).
    pub want_inos: u32,
}

/// Inode numbers one grant holds at most.
pub const MAX_INO_GRANT: u32 = 1024;

/// An early create: the inode number the client chose, the grant it came
/// from (its token still to be checked against the caller), and the time.
pub struct Numbered {
    pub ino: u64,
    pub first: u64,
    pub count: u32,
    pub token: Vec<u8>,
    pub time: Timespec,
}

impl Numbered {
    fn parse(r: &pb::CreateRequest, kind: FileKind) -> Result<Option<Numbered>, Status> {
        if r.ino == 0 {
            return Ok(None);
        }
        if r.unnamed || kind != FileKind::Regular {
            return Err(invalid(
                "only a named regular file is created under the client's number",
            ));
        }
        let (Some(grant), Some(time)) = (&r.grant, &r.time) else {
            return Err(invalid("a numbered create needs its grant and time"));
        };
        let inside = r.ino >= grant.first && r.ino - grant.first < u64::from(grant.count);
        if !inside || grant.count > MAX_INO_GRANT {
            return Err(invalid("the inode number is not in its grant"));
        }
        Ok(Some(Numbered {
            ino: r.ino,
            first: grant.first,
            count: grant.count,
            token: grant.token.clone(),
            time: self::time(time)?,
        }))
    }
}

impl TryFrom<pb::CreateRequest> for Create {
    type Error = Status;

    fn try_from(r: pb::CreateRequest) -> Result<Self, Status> {
        let kind = kind(r.kind)?;
        let numbered = Numbered::parse(&r, kind)?;
        let name = if r.unnamed {
            if kind != FileKind::Regular {
                return Err(invalid("an unnamed file is a regular file"));
            }
            Vec::new()
        } else {
            Name::try_from(r.name)?.into_bytes()
        };
        let target_ok = !r.symlink_target.is_empty()
            && r.symlink_target.len() <= MAX_PATH_LEN
            && !r.symlink_target.contains(&0);
        if kind == FileKind::Symlink && !target_ok {
            return Err(invalid("symlink target must be 1..4095 bytes without NUL"));
        }
        Ok(Create {
            numbered,
            want_inos: r.want_inos.min(MAX_INO_GRANT),
            args: CreateArgs {
                parent: r.parent,
                name,
                kind,
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                rdev: r.rdev,
                symlink_target: r.symlink_target,
            },
            unnamed: r.unnamed,
        })
    }
}

pub struct Unlink {
    pub parent: u64,
    pub name: Name,
    pub keep_open: bool,
    /// Only if the name still names this inode.
    pub expect_ino: Option<u64>,
}

impl TryFrom<pb::UnlinkRequest> for Unlink {
    type Error = Status;

    fn try_from(r: pb::UnlinkRequest) -> Result<Self, Status> {
        Ok(Unlink {
            parent: r.parent,
            name: r.name.try_into()?,
            keep_open: r.keep_open,
            expect_ino: (r.expect_ino != 0).then_some(r.expect_ino),
        })
    }
}

/// Requests sent in one call (UnlinkMany, CreateMany), each with its own
/// (nonzero) request id, at most `max`. Each is validated as its own call
/// when it runs, so a bad one fails alone.
fn together<T>(
    what: &str,
    items: Vec<T>,
    ids: Vec<u64>,
    max: usize,
) -> Result<Vec<(T, u64)>, Status> {
    if items.len() > max || items.len() != ids.len() {
        return Err(invalid(format!(
            "at most {max} {what}s, each with its request id"
        )));
    }
    if ids.contains(&0) {
        return Err(invalid(format!("request id 0 (each {what} needs its own)")));
    }
    Ok(items.into_iter().zip(ids).collect())
}

/// UnlinkMany: at most `MAX_UNLINK_BATCH` unlinks (see `together`).
pub struct UnlinkMany {
    pub unlinks: Vec<(pb::UnlinkRequest, u64)>,
}

impl TryFrom<pb::UnlinkManyRequest> for UnlinkMany {
    type Error = Status;

    fn try_from(r: pb::UnlinkManyRequest) -> Result<Self, Status> {
        let max = dfs_proto::MAX_UNLINK_BATCH;
        Ok(UnlinkMany {
            unlinks: together("unlink", r.unlinks, r.request_ids, max)?,
        })
    }
}

/// CreateMany: at most `MAX_CREATE_BATCH` creates (see `together`).
pub struct CreateMany {
    pub creates: Vec<(pb::CreateRequest, u64)>,
}

impl TryFrom<pb::CreateManyRequest> for CreateMany {
    type Error = Status;

    fn try_from(r: pb::CreateManyRequest) -> Result<Self, Status> {
        let max = dfs_proto::MAX_CREATE_BATCH;
        Ok(CreateMany {
            creates: together("create", r.creates, r.request_ids, max)?,
        })
    }
}

pub struct Rmdir {
    pub parent: u64,
    pub name: Name,
}

impl TryFrom<pb::RmdirRequest> for Rmdir {
    type Error = Status;

    fn try_from(r: pb::RmdirRequest) -> Result<Self, Status> {
        Ok(Rmdir {
            parent: r.parent,
            name: r.name.try_into()?,
        })
    }
}

pub struct Rename {
    pub parent: u64,
    pub name: Name,
    pub new_parent: u64,
    pub new_name: Name,
    pub flags: u32,
    pub keep_open: bool,
}

impl TryFrom<pb::RenameRequest> for Rename {
    type Error = Status;

    fn try_from(r: pb::RenameRequest) -> Result<Self, Status> {
        let known = RENAME_NOREPLACE | RENAME_EXCHANGE;
        if r.flags & !known != 0 || r.flags == known {
            return Err(invalid(format!("rename flags {:#x}", r.flags)));
        }
        Ok(Rename {
            parent: r.parent,
            name: r.name.try_into()?,
            new_parent: r.new_parent,
            new_name: r.new_name.try_into()?,
            flags: r.flags,
            keep_open: r.keep_open,
        })
    }
}

pub struct Link {
    pub ino: u64,
    pub new_parent: u64,
    pub new_name: Name,
}

impl TryFrom<pb::LinkRequest> for Link {
    type Error = Status;

    fn try_from(r: pb::LinkRequest) -> Result<Self, Status> {
        Ok(Link {
            ino: r.ino,
            new_parent: r.new_parent,
            new_name: r.new_name.try_into()?,
        })
    }
}

pub struct ReadDir {
    pub ino: u64,
    /// Entries after this name (empty: from the start).
    pub after: Vec<u8>,
    pub limit: u32,
}

impl TryFrom<pb::ReadDirRequest> for ReadDir {
    type Error = Status;

    fn try_from(r: pb::ReadDirRequest) -> Result<Self, Status> {
        if r.after.len() > MAX_NAME_LEN {
            return Err(invalid(
                "a listing resumes after a name of at most 255 bytes",
            ));
        }
        Ok(ReadDir {
            ino: r.ino,
            after: r.after,
            limit: r.limit.clamp(1, 10_000),
        })
    }
}

pub struct SetXattr {
    pub ino: u64,
    pub name: XattrName,
    pub value: Vec<u8>,
    pub flags: u32,
}

impl TryFrom<pb::SetXattrRequest> for SetXattr {
    type Error = Status;

    fn try_from(r: pb::SetXattrRequest) -> Result<Self, Status> {
        let known = XATTR_CREATE | XATTR_REPLACE;
        if r.flags & !known != 0 || r.flags == known {
            return Err(invalid(format!("setxattr flags {:#x}", r.flags)));
        }
        if r.value.len() > MAX_XATTR_VALUE {
            return Err(status_from_errno(libc::E2BIG, "xattr value over 64 KiB"));
        }
        Ok(SetXattr {
            ino: r.ino,
            name: r.name.try_into()?,
            value: r.value,
            flags: r.flags,
        })
    }
}

/// An xattr named on an inode (get, remove).
pub struct XattrOf {
    pub ino: u64,
    pub name: XattrName,
}

impl TryFrom<pb::GetXattrRequest> for XattrOf {
    type Error = Status;

    fn try_from(r: pb::GetXattrRequest) -> Result<Self, Status> {
        Ok(XattrOf {
            ino: r.ino,
            name: r.name.try_into()?,
        })
    }
}

impl TryFrom<pb::RemoveXattrRequest> for XattrOf {
    type Error = Status;

    fn try_from(r: pb::RemoveXattrRequest) -> Result<Self, Status> {
        Ok(XattrOf {
            ino: r.ino,
            name: r.name.try_into()?,
        })
    }
}

pub struct Place {
    /// 0: new chunk ids; else more copies of this chunk.
    pub chunk_id: u64,
    /// Copies wanted (None: the cluster's replication).
    pub count: Option<u32>,
    pub exclude: Vec<u64>,
    pub batch: u32,
}

impl TryFrom<pb::PlaceChunkRequest> for Place {
    type Error = Status;

    fn try_from(r: pb::PlaceChunkRequest) -> Result<Self, Status> {
        if r.count > MAX_PLACE_COUNT {
            return Err(invalid(format!("at most {MAX_PLACE_COUNT} copies")));
        }
        if r.batch > MAX_PLACE_BATCH {
            return Err(invalid(format!("at most {MAX_PLACE_BATCH} ids at once")));
        }
        if r.exclude_node_ids.len() > 4096 {
            return Err(invalid("too many excluded nodes"));
        }
        Ok(Place {
            chunk_id: r.chunk_id,
            count: (r.count != 0).then_some(r.count),
            exclude: r.exclude_node_ids,
            batch: r.batch,
        })
    }
}

pub struct Commit {
    pub ino: u64,
    pub size: u64,
    pub chunks: Vec<CommitChunk>,
    pub mtime: Option<Timespec>,
    pub return_chunks: bool,
    /// The writer's chmod, chown and atime, applied with the commit.
    pub attrs: OwnerChanges,
}

impl TryFrom<pb::CommitWriteRequest> for Commit {
    type Error = Status;

    fn try_from(r: pb::CommitWriteRequest) -> Result<Self, Status> {
        if r.chunks.len() > MAX_COMMIT_CHUNKS {
            return Err(invalid(format!(
                "at most {MAX_COMMIT_CHUNKS} chunks per commit"
            )));
        }
        if r.size > i64::MAX as u64 {
            return Err(status_from_errno(libc::EFBIG, "size beyond 2^63"));
        }
        let mut chunks = Vec::with_capacity(r.chunks.len());
        for c in r.chunks {
            let unique: HashSet<_> = c.node_ids.iter().collect();
            if c.node_ids.is_empty() || unique.len() != c.node_ids.len() {
                return Err(invalid(format!("chunk {} replica list", c.chunk_id)));
            }
            if c.valid_len > c.stored_len {
                return Err(invalid(format!(
                    "chunk {} holds less than it says is valid",
                    c.chunk_id
                )));
            }
            chunks.push(CommitChunk {
                index: c.index,
                chunk_id: c.chunk_id,
                stored_len: c.stored_len,
                crc32c: c.crc32c,
                valid_len: c.valid_len,
                node_ids: c.node_ids,
                base: c
                    .check_base
                    .then_some((c.base_chunk_id != 0).then_some(c.base_chunk_id)),
            });
        }
        Ok(Commit {
            ino: r.ino,
            size: r.size,
            chunks,
            mtime: r.mtime.as_ref().map(time).transpose()?,
            return_chunks: r.return_chunks,
            attrs: match r.attrs {
                Some(a) => OwnerChanges {
                    mode: a.mode,
                    uid: a.uid,
                    gid: a.gid,
                    atime: a.atime.as_ref().map(time).transpose()?,
                },
                None => OwnerChanges::NONE,
            },
        })
    }
}

pub struct PunchHole {
    pub ino: u64,
    pub first_index: u64,
    pub end_index: u64,
}

impl TryFrom<pb::PunchHoleRequest> for PunchHole {
    type Error = Status;

    fn try_from(r: pb::PunchHoleRequest) -> Result<Self, Status> {
        if r.first_index >= r.end_index {
            return Err(invalid("empty chunk range"));
        }
        Ok(PunchHole {
            ino: r.ino,
            first_index: r.first_index,
            end_index: r.end_index,
        })
    }
}

pub struct Lock {
    pub ino: u64,
    pub owner: u64,
    pub flock: bool,
    pub kind: LockKind,
    pub range: LockRange,
    pub pid: u32,
    pub wait: bool,
    pub test: bool,
}

impl TryFrom<pb::LockRequest> for Lock {
    type Error = Status;

    fn try_from(r: pb::LockRequest) -> Result<Self, Status> {
        Ok(Lock {
            ino: r.ino,
            owner: r.owner,
            flock: r.flock,
            kind: match pb::LockType::try_from(r.r#type) {
                Ok(pb::LockType::Unlock) => LockKind::Unlock,
                Ok(pb::LockType::Read) => LockKind::Read,
                Ok(pb::LockType::Write) => LockKind::Write,
                Err(_) => return Err(invalid("unknown lock type")),
            },
            range: LockRange::new(r.start, r.end)
                .ok_or_else(|| invalid("lock range ends before it starts"))?,
            pid: r.pid,
            wait: r.wait,
            test: r.test,
        })
    }
}

/// The requests this module validates, by RPC name.
pub const VALIDATED: &[&str] = &[
    "Lookup",
    "ResolvePath",
    "SetAttr",
    "Create",
    "CreateMany",
    "Unlink",
    "UnlinkMany",
    "Rmdir",
    "Rename",
    "Link",
    "ReadDir",
    "GetXattr",
    "SetXattr",
    "RemoveXattr",
    "PlaceChunk",
    "CommitWrite",
    "PunchHole",
    "Lock",
];

/// Meta's other RPCs: their requests carry nothing to check beyond what
/// decoding does (inode and session numbers, node reports the node's own
/// certificate vouches for), so fuzzing only decodes them.
pub const DECODED: &[&str] = &[
    "Watch",
    "Recalled",
    "Applied",
    "OpenFiles",
    "GetAttr",
    "ReleaseOrphan",
    "ReadLink",
    "ListXattr",
    "GetChunks",
    "RegisterNode",
    "Heartbeat",
    "ReplicaAdded",
    "ForgetReplica",
    "ReportBadReplica",
    "Fsck",
    "NodeAdmin",
    "OpenSession",
    "RenewSession",
    "CloseSession",
];

/// Decodes `bytes` as the request of RPC `method` (one of `VALIDATED` or
/// `DECODED`) and validates it, as the service does: what fuzzing and the property tests drive. A message that
/// does not decode is INVALID_ARGUMENT (tonic answers it so too).
pub fn validate_wire(method: &str, bytes: &[u8]) -> Result<(), Status> {
    use prost::Message;
    fn check<M: Message + Default, T: TryFrom<M, Error = Status>>(
        bytes: &[u8],
    ) -> Result<(), Status> {
        let message = M::decode(bytes).map_err(|e| invalid(e.to_string()))?;
        T::try_from(message).map(|_| ())
    }
    fn decode<M: Message + Default>(bytes: &[u8]) -> Result<(), Status> {
        M::decode(bytes)
            .map(|_| ())
            .map_err(|e| invalid(e.to_string()))
    }
    match method {
        "Lookup" => check::<pb::LookupRequest, Lookup>(bytes),
        "ResolvePath" => check::<pb::ResolvePathRequest, ResolvePath>(bytes),
        "SetAttr" => check::<pb::SetAttrRequest, SetAttr>(bytes),
        "Create" => check::<pb::CreateRequest, Create>(bytes),
        "Unlink" => check::<pb::UnlinkRequest, Unlink>(bytes),
        "CreateMany" => check::<pb::CreateManyRequest, CreateMany>(bytes),
        "UnlinkMany" => check::<pb::UnlinkManyRequest, UnlinkMany>(bytes),
        "Rmdir" => check::<pb::RmdirRequest, Rmdir>(bytes),
        "Rename" => check::<pb::RenameRequest, Rename>(bytes),
        "Link" => check::<pb::LinkRequest, Link>(bytes),
        "ReadDir" => check::<pb::ReadDirRequest, ReadDir>(bytes),
        "GetXattr" => check::<pb::GetXattrRequest, XattrOf>(bytes),
        "SetXattr" => check::<pb::SetXattrRequest, SetXattr>(bytes),
        "RemoveXattr" => check::<pb::RemoveXattrRequest, XattrOf>(bytes),
        "PlaceChunk" => check::<pb::PlaceChunkRequest, Place>(bytes),
        "CommitWrite" => check::<pb::CommitWriteRequest, Commit>(bytes),
        "PunchHole" => check::<pb::PunchHoleRequest, PunchHole>(bytes),
        "Lock" => check::<pb::LockRequest, Lock>(bytes),
        "Watch" => decode::<pb::WatchRequest>(bytes),
        "Recalled" => decode::<pb::Recall>(bytes),
        "Applied" => decode::<pb::AppliedRequest>(bytes),
        "OpenFiles" => decode::<pb::OpenFilesRequest>(bytes),
        "GetAttr" => decode::<pb::GetAttrRequest>(bytes),
        "ReleaseOrphan" => decode::<pb::ReleaseOrphanRequest>(bytes),
        "ReadLink" => decode::<pb::ReadLinkRequest>(bytes),
        "ListXattr" => decode::<pb::ListXattrRequest>(bytes),
        "GetChunks" => decode::<pb::GetChunksRequest>(bytes),
        "RegisterNode" => decode::<pb::RegisterNodeRequest>(bytes),
        "Heartbeat" => decode::<pb::HeartbeatRequest>(bytes),
        "ReplicaAdded" => decode::<pb::ReplicaAddedRequest>(bytes),
        "ForgetReplica" => decode::<pb::ForgetReplicaRequest>(bytes),
        "ReportBadReplica" => decode::<pb::BadReplicaRequest>(bytes),
        "Fsck" => decode::<pb::FsckRequest>(bytes),
        "NodeAdmin" => decode::<pb::NodeAdminRequest>(bytes),
        "OpenSession" => decode::<pb::OpenSessionRequest>(bytes),
        "RenewSession" => decode::<pb::RenewSessionRequest>(bytes),
        "CloseSession" => decode::<pb::CloseSessionRequest>(bytes),
        _ => Err(invalid(format!("no such request: {method}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{kind_to_pb, ts_to_pb};
    use proptest::prelude::*;
    use prost::Message;

    /// A refusal is INVALID_ARGUMENT or carries the errno POSIX gives a bad
    /// argument (ENOENT for an empty name, ENAMETOOLONG, E2BIG, EFBIG), never
    /// anything that would read as a server fault.
    fn refused_properly(s: &Status) -> bool {
        let bad_argument = [
            libc::EINVAL,
            libc::ENOENT,
            libc::ENAMETOOLONG,
            libc::E2BIG,
            libc::EFBIG,
        ];
        s.code() == tonic::Code::InvalidArgument || bad_argument.contains(&dfs_proto::errno_of(s))
    }

    fn names() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "[a-z./]{0,4}".prop_map(String::into_bytes),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(vec![b'n'; 255]),
            Just(vec![b'n'; 256]),
        ]
    }

    proptest! {
        /// Whatever a client sends as a time or a kind is taken back
        /// exactly, or refused with INVALID_ARGUMENT: never a panic.
        #[test]
        fn times_and_kinds_convert_or_are_refused(sec in any::<i64>(), nsec in any::<u32>(), raw in any::<i32>()) {
            match time(&pb::Timespec { sec, nsec }) {
                Ok(t) => prop_assert_eq!(ts_to_pb(t), pb::Timespec { sec, nsec }),
                Err(s) => prop_assert!(refused_properly(&s)),
            }
            match kind(raw) {
                Ok(k) => prop_assert_eq!(kind_to_pb(k) as i32, raw),
                Err(s) => prop_assert!(refused_properly(&s)),
            }
        }

        /// Any bytes as any request: validated or refused, never a panic.
        #[test]
        fn any_bytes_as_any_request_are_validated_or_refused(
            method in proptest::sample::select([VALIDATED, DECODED].concat()),
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Err(s) = validate_wire(method, &bytes) {
                prop_assert!(refused_properly(&s), "{}: {:?}", method, s);
            }
        }

        /// Names: a request is accepted exactly when every name in it is a
        /// valid entry name.
        #[test]
        fn entry_names_are_checked_in_every_request(a in names(), b in names()) {
            let valid = |n: &[u8]| dfs_proto::validate_name(n).is_ok();
            let lookup = Lookup::try_from(pb::LookupRequest { parent: 1, name: a.clone() });
            prop_assert_eq!(lookup.is_ok(), valid(&a));
            let rename = Rename::try_from(pb::RenameRequest {
                parent: 1, name: a.clone(), new_parent: 1, new_name: b.clone(), ..Default::default()
            });
            prop_assert_eq!(rename.is_ok(), valid(&a) && valid(&b));
            let create = Create::try_from(pb::CreateRequest {
                parent: 1, name: a.clone(), kind: pb::FileKind::Symlink as i32,
                symlink_target: b.clone(), ..Default::default()
            });
            let target_ok = !b.is_empty() && !b.contains(&0) && b.len() <= MAX_PATH_LEN;
            prop_assert_eq!(create.is_ok(), valid(&a) && target_ok);
            let xattr = SetXattr::try_from(pb::SetXattrRequest { ino: 1, name: a.clone(), value: b.clone(), flags: 0 });
            prop_assert_eq!(xattr.is_ok(), !a.is_empty() && a.len() <= 255 && !a.contains(&0));
        }

        /// A commit is accepted only with lengths that fit and replica lists
        /// without repeats; flags only as Linux defines them.
        #[test]
        fn commits_and_flags_are_checked(
            stored in 0u64..10, valid_len in 0u64..10,
            nodes in proptest::collection::vec(0u64..4, 0..4),
            rename_flags in 0u32..8, xattr_flags in 0u32..8,
        ) {
            let commit = Commit::try_from(pb::CommitWriteRequest {
                ino: 2,
                size: 100,
                chunks: vec![pb::CommittedChunk {
                    stored_len: stored, valid_len, node_ids: nodes.clone(), ..Default::default()
                }],
                ..Default::default()
            });
            let distinct = nodes.iter().collect::<HashSet<_>>().len() == nodes.len();
            prop_assert_eq!(commit.is_ok(), valid_len <= stored && !nodes.is_empty() && distinct);
            let rename = Rename::try_from(pb::RenameRequest {
                parent: 1, name: b"a".to_vec(), new_parent: 1, new_name: b"b".to_vec(),
                flags: rename_flags, ..Default::default()
            });
            prop_assert_eq!(rename.is_ok(), rename_flags <= 2);
            let xattr = SetXattr::try_from(pb::SetXattrRequest {
                ino: 1, name: b"user.a".to_vec(), value: vec![], flags: xattr_flags,
            });
            prop_assert_eq!(xattr.is_ok(), xattr_flags <= 2);
        }
    }

    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        // One well-formed request per RPC (accepted), and every truncation
        // of it (validated or refused, never a panic).
        for method in VALIDATED {
            let seed = seed(method);
            assert!(validate_wire(method, &seed).is_ok(), "{method}");
            for cut in 0..seed.len() {
                let _ = validate_wire(method, &seed[..cut]);
            }
        }
    }

    /// A well-formed request of each validated RPC.
    pub fn seed(method: &str) -> Vec<u8> {
        let name = b"name".to_vec();
        match method {
            "Lookup" => pb::LookupRequest { parent: 1, name }.encode_to_vec(),
            "ResolvePath" => pb::ResolvePathRequest {
                path: b"/a/b".to_vec(),
            }
            .encode_to_vec(),
            "SetAttr" => pb::SetAttrRequest {
                ino: 2,
                mode: Some(0o600),
                ..Default::default()
            }
            .encode_to_vec(),
            "Create" => pb::CreateRequest {
                parent: 1,
                name,
                kind: pb::FileKind::Regular as i32,
                mode: 0o644,
                ..Default::default()
            }
            .encode_to_vec(),
            "Unlink" => pb::UnlinkRequest {
                parent: 1,
                name,
                ..Default::default()
            }
            .encode_to_vec(),
            "CreateMany" => pb::CreateManyRequest {
                creates: vec![pb::CreateRequest {
                    parent: 1,
                    name,
                    kind: pb::FileKind::Regular as i32,
                    mode: 0o644,
                    ..Default::default()
                }],
                request_ids: vec![7],
            }
            .encode_to_vec(),
            "UnlinkMany" => pb::UnlinkManyRequest {
                unlinks: vec![pb::UnlinkRequest {
                    parent: 1,
                    name,
                    ..Default::default()
                }],
                request_ids: vec![7],
            }
            .encode_to_vec(),
            "Rmdir" => pb::RmdirRequest { parent: 1, name }.encode_to_vec(),
            "Rename" => pb::RenameRequest {
                parent: 1,
                name: name.clone(),
                new_parent: 1,
                new_name: b"other".to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
            "Link" => pb::LinkRequest {
                ino: 2,
                new_parent: 1,
                new_name: name,
            }
            .encode_to_vec(),
            "ReadDir" => pb::ReadDirRequest {
                ino: 1,
                limit: 100,
                ..Default::default()
            }
            .encode_to_vec(),
            "GetXattr" => pb::GetXattrRequest {
                ino: 2,
                name: b"user.x".to_vec(),
            }
            .encode_to_vec(),
            "SetXattr" => pb::SetXattrRequest {
                ino: 2,
                name: b"user.x".to_vec(),
                value: b"v".to_vec(),
                flags: 0,
            }
            .encode_to_vec(),
            "RemoveXattr" => pb::RemoveXattrRequest {
                ino: 2,
                name: b"user.x".to_vec(),
            }
            .encode_to_vec(),
            "PlaceChunk" => pb::PlaceChunkRequest {
                count: 3,
                ..Default::default()
            }
            .encode_to_vec(),
            "CommitWrite" => pb::CommitWriteRequest {
                ino: 2,
                size: 10,
                chunks: vec![pb::CommittedChunk {
                    chunk_id: 7,
                    stored_len: 10,
                    valid_len: 10,
                    node_ids: vec![1, 2, 3],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec(),
            "PunchHole" => pb::PunchHoleRequest {
                ino: 2,
                first_index: 0,
                end_index: 1,
            }
            .encode_to_vec(),
            "Lock" => pb::LockRequest {
                ino: 2,
                r#type: pb::LockType::Write as i32,
                start: 0,
                end: 10,
                ..Default::default()
            }
            .encode_to_vec(),
            _ => Vec::new(),
        }
    }
}
