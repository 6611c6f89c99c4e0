//! A client's chunk token, checked before a node reads or stores a chunk for
//! it (`dfs_auth::token`). Nodes and meta (by certificate role) need none:
//! chain forwarding and repair copies are the nodes' own work. On a cluster
//! run `--insecure` there are no identities and nothing is checked.

use dfs_auth::token::{self, ChunkOp, Grant, TokenError};
use dfs_auth::{Identity, Role};
use dfs_proto::pb;
use tonic::Status;

use crate::NodeIdentity;

/// Whether `caller` may `op` chunk `chunk_id` here with `token`; for a write,
/// also that this node and every node it is asked to forward to are among
/// the write's targets.
pub fn check(
    node: &NodeIdentity,
    caller: Option<&Identity>,
    op: ChunkOp,
    chunk_id: u64,
    token: Option<&pb::ChunkToken>,
    forward: &[pb::NodeRef],
) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(());
    };
    if matches!(caller.role, Role::Node | Role::Meta) {
        return Ok(());
    }
    let Some(key) = node.token_key() else {
        return Err(Status::unavailable("node is not registered with meta yet"));
    };
    let Some(token) = token else {
        return Err(refused(TokenError::Missing));
    };
    let grant = Grant {
        op,
        chunk_id,
        expires_ms: token.expires_ms,
        holder: &caller.name,
        targets: token
            .targets
            .iter()
            .map(|t| (t.node_id, t.addr.as_str()))
            .collect(),
    };
    token::verify(&key, &grant, &token.mac, now_ms()).map_err(refused)?;
    if op == ChunkOp::Write {
        let me = node.node_id();
        if !token.targets.iter().any(|t| t.node_id == me) {
            return Err(Status::permission_denied(
                "this node is not a target of the write",
            ));
        }
        let allowed = |f: &pb::NodeRef| {
            token
                .targets
                .iter()
                .any(|t| t.node_id == f.node_id && t.addr == f.addr)
        };
        if !forward.iter().all(allowed) {
            return Err(Status::permission_denied(
                "the write may not be forwarded to a node outside its targets",
            ));
        }
    }
    Ok(())
}

/// PERMISSION_DENIED; an expired token also carries EKEYEXPIRED, which tells
/// a reader to fetch a fresh chunk map (with fresh tokens) and go on.
fn refused(e: TokenError) -> Status {
    let mut status = Status::permission_denied(e.to_string());
    if e == TokenError::Expired {
        status.metadata_mut().insert(
            dfs_proto::ERRNO_METADATA_KEY,
            tonic::metadata::MetadataValue::from(libc::EKEYEXPIRED),
        );
    }
    status
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
