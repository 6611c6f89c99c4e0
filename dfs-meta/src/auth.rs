//! Who may call what on meta (`policy`), and the checks that need more than
//! a role: a node registers and reports only as the node its certificate
//! was first bound to, and repairs from fsck need an admin.

use dfs_auth::token::{self, ChunkOp, Grant};
use dfs_auth::{Identity, Role};
use dfs_proto::pb;
use tonic::Status;

const FILES: &[Role] = &[Role::Client, Role::Admin];
const NODES: &[Role] = &[Role::Node];
const ADMIN: &[Role] = &[Role::Admin];
/// Replica reports: nodes (repair copies, the scrubber) and clients (a
/// replaced fsync replica, a checksum failure a node confirmed).
const REPORTERS: &[Role] = &[Role::Client, Role::Admin, Role::Node];

/// The roles each Meta method serves. Unknown methods serve nobody.
pub fn policy(method: &str) -> &'static [Role] {
    match method {
        "RegisterNode" | "Heartbeat" | "ReportFence" => NODES,
        "ReplicaAdded" | "ReportBadReplica" => REPORTERS,
        "NodeAdmin" | "ListSessions" => ADMIN,
        "Lookup" | "GetAttr" | "ResolvePath" | "SetAttr" | "Create" | "CreateMany" | "Unlink"
        | "UnlinkMany" | "Rmdir" | "Rename" | "ReleaseOrphan" | "Link" | "ReadLink" | "ReadDir"
        | "GetXattr" | "SetXattr" | "ListXattr" | "RemoveXattr" | "StatFs" | "Sync"
        | "GetChunks" | "PlaceChunk" | "CommitWrite" | "PunchHole" | "ClusterStatus" | "Fsck"
        | "ForgetReplica" | "OpenSession" | "RenewSession" | "CloseSession" | "Lock" | "Watch"
        | "Recalled" | "Applied" | "OpenFiles" => FILES,
        _ => &[],
    }
}

/// The caller of a request (None on an `--insecure` meta: everything goes).
pub fn caller<T>(req: &tonic::Request<T>) -> Option<Identity> {
    dfs_auth::authz::caller(req).cloned()
}

/// Cluster-changing actions (drain, remove, fsck --repair) need an admin.
pub fn require_admin(caller: Option<&Identity>, what: &str) -> Result<(), Status> {
    match caller {
        Some(id) if id.role != Role::Admin => Err(Status::permission_denied(format!(
            "{what} needs an admin certificate"
        ))),
        _ => Ok(()),
    }
}

/// How long a chunk token lasts. A reader holding a chunk map longer gets
/// "expired" from the node and reads the map again (with fresh tokens).
pub const TOKEN_TTL_MS: i64 = 10 * 60 * 1000;

/// The certificate name chunk tokens are made out to ("" when insecure).
pub fn holder<T>(req: &tonic::Request<T>) -> String {
    dfs_auth::authz::caller(req)
        .map(|id| id.name.clone())
        .unwrap_or_default()
}

/// Signs chunk tokens for one caller.
pub struct Tokens<'a> {
    key: &'a [u8],
    holder: &'a str,
    expires_ms: i64,
}

impl<'a> Tokens<'a> {
    pub fn new(key: &'a [u8], holder: &'a str) -> Tokens<'a> {
        Tokens {
            key,
            holder,
            expires_ms: crate::store::now_ms() + TOKEN_TTL_MS,
        }
    }

    /// Reading `chunk_id` from any of its replicas.
    pub fn read(&self, chunk_id: u64) -> pb::ChunkToken {
        let grant = Grant {
            op: ChunkOp::Read,
            chunk_id,
            expires_ms: self.expires_ms,
            holder: self.holder,
            targets: Vec::new(),
        };
        pb::ChunkToken {
            expires_ms: self.expires_ms,
            mac: token::sign(self.key, &grant),
            targets: Vec::new(),
        }
    }

    /// Writing `chunk_id` to `targets` (and forwarding among them only).
    pub fn write(&self, chunk_id: u64, targets: &[pb::NodeRef]) -> pb::ChunkToken {
        let grant = Grant {
            op: ChunkOp::Write,
            chunk_id,
            expires_ms: self.expires_ms,
            holder: self.holder,
            targets: targets
                .iter()
                .map(|t| (t.node_id, t.addr.as_str()))
                .collect(),
        };
        pb::ChunkToken {
            expires_ms: self.expires_ms,
            mac: token::sign(self.key, &grant),
            targets: targets.to_vec(),
        }
    }
}
