//! Chunk capabilities. Meta hands a client, with each chunk map and each
//! placement, a short-lived token per chunk: an HMAC-SHA256, under a key
//! only meta and the nodes hold, over what it allows (read or write, which
//! chunk, until when, for which certificate name, and for a write the nodes
//! it may go to). A node serves a client only with a token that verifies
//! (as HDFS's block tokens and SeaweedFS's per-file JWTs do): a guessed
//! chunk id is worth nothing, and a write's forwarding list cannot name a
//! node the placement did not.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the shared key.
pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOp {
    Read = 1,
    Write = 2,
}

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub op: ChunkOp,
    pub chunk_id: u64,
    /// Meta's clock, in ms since the epoch.
    pub expires_ms: i64,
    /// The certificate name of the client it was given to.
    pub holder: &'a str,
    /// For a write: the nodes (id, address) it may be stored on.
    pub targets: Vec<(u64, &'a str)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no chunk token")]
    Missing,
    #[error("the chunk token expired")]
    Expired,
    #[error("the chunk token does not allow this")]
    Forged,
}

/// The bytes the MAC covers: every field, length-prefixed, targets in id
/// order (the order of a placement does not matter).
fn message(grant: &Grant<'_>) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + grant.holder.len());
    m.extend_from_slice(b"dfs-chunk-token-v1\0");
    m.push(grant.op as u8);
    m.extend_from_slice(&grant.chunk_id.to_be_bytes());
    m.extend_from_slice(&grant.expires_ms.to_be_bytes());
    m.extend_from_slice(&(grant.holder.len() as u32).to_be_bytes());
    m.extend_from_slice(grant.holder.as_bytes());
    let mut targets = grant.targets.clone();
    targets.sort_unstable();
    m.extend_from_slice(&(targets.len() as u32).to_be_bytes());
    for (id, addr) in targets {
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&(addr.len() as u32).to_be_bytes());
        m.extend_from_slice(addr.as_bytes());
    }
    m
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_key(),
    }
}

#[cold]
fn unreachable_key() -> ! {
    // new_from_slice fails only for MACs with a fixed key size, not HMAC.
    panic!("HMAC accepts keys of any length")
}

/// The token for `grant` under `key`.
pub fn sign(key: &[u8], grant: &Grant<'_>) -> Vec<u8> {
    let mut m = mac(key);
    m.update(&message(grant));
    m.finalize().into_bytes().to_vec()
}

/// Checks `token` against `grant` (what the request asks for) at `now_ms`.
pub fn verify(key: &[u8], grant: &Grant<'_>, token: &[u8], now_ms: i64) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let mut m = mac(key);
    m.update(&message(grant));
    m.verify_slice(token).map_err(|_| TokenError::Forged)?;
    if grant.expires_ms < now_ms {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The bytes an inode grant's MAC covers.
fn inos_message(holder: &str, first: u64, count: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(48 + holder.len());
    m.extend_from_slice(b"dfs-ino-grant-v1\0");
    m.extend_from_slice(&first.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&(holder.len() as u32).to_be_bytes());
    m.extend_from_slice(holder.as_bytes());
    m
}

/// The token for inode numbers `[first, first + count)` handed to `holder`
/// (its certificate name) for creates it answers itself. It does not expire:
/// the numbers are the holder's for good, and meta refuses a number already
/// in use.
pub fn sign_inos(key: &[u8], holder: &str, first: u64, count: u32) -> Vec<u8> {
    let mut m = mac(key);
    m.update(&inos_message(holder, first, count));
    m.finalize().into_bytes().to_vec()
}

/// Checks an inode grant's token.
pub fn verify_inos(
    key: &[u8],
    holder: &str,
    first: u64,
    count: u32,
    token: &[u8],
) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let mut m = mac(key);
    m.update(&inos_message(holder, first, count));
    m.verify_slice(token).map_err(|_| TokenError::Forged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    fn grant<'a>(holder: &'a str, targets: Vec<(u64, &'a str)>) -> Grant<'a> {
        Grant {
            op: ChunkOp::Write,
            chunk_id: 42,
            expires_ms: 1_000,
            holder,
            targets,
        }
    }

    #[test]
    fn an_inode_grant_covers_exactly_its_numbers_and_holder() {
        let t = sign_inos(&KEY, "client", 1_000, 64);
        assert_eq!(verify_inos(&KEY, "client", 1_000, 64, &t), Ok(()));
        assert_eq!(
            verify_inos(&KEY, "client", 1_000, 65, &t),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_inos(&KEY, "client", 999, 64, &t),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_inos(&KEY, "other", 1_000, 64, &t),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_inos(&[8; KEY_LEN], "client", 1_000, 64, &t),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify_inos(&KEY, "client", 1_000, 64, &[]),
            Err(TokenError::Missing)
        );
        // A chunk token is not an inode grant.
        let chunk = sign(&KEY, &grant("client", vec![]));
        assert_eq!(
            verify_inos(&KEY, "client", 1_000, 64, &chunk),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_token_allows_exactly_its_grant() {
        let g = grant("client", vec![(1, "a:1"), (2, "b:2")]);
        let t = sign(&KEY, &g);
        assert_eq!(verify(&KEY, &g, &t, 999), Ok(()));
        // Target order does not matter.
        let swapped = grant("client", vec![(2, "b:2"), (1, "a:1")]);
        assert_eq!(verify(&KEY, &swapped, &t, 999), Ok(()));
        assert_eq!(verify(&KEY, &g, &t, 1_001), Err(TokenError::Expired));
        assert_eq!(verify(&KEY, &g, &[], 0), Err(TokenError::Missing));
        assert_eq!(verify(&[8; KEY_LEN], &g, &t, 0), Err(TokenError::Forged));
        let other = |f: &dyn Fn(&mut Grant)| {
            let mut g2 = g.clone();
            f(&mut g2);
            verify(&KEY, &g2, &t, 0)
        };
        assert_eq!(other(&|g| g.chunk_id = 43), Err(TokenError::Forged));
        assert_eq!(other(&|g| g.op = ChunkOp::Read), Err(TokenError::Forged));
        assert_eq!(other(&|g| g.expires_ms = 5_000), Err(TokenError::Forged));
        assert_eq!(other(&|g| g.holder = "other"), Err(TokenError::Forged));
        assert_eq!(
            other(&|g| g.targets[1].1 = "evil:2"),
            Err(TokenError::Forged)
        );
        assert_eq!(
            other(&|g| g.targets.push((3, "c:3"))),
            Err(TokenError::Forged)
        );
    }

    proptest! {
        /// Any change to any field of a grant, or to the token, is refused.
        #[test]
        fn tampering_is_refused(
            id in any::<u64>(), other_id in any::<u64>(),
            holder in "[a-z0-9-]{0,12}", other_holder in "[a-z0-9-]{0,12}",
            flip in 0usize..32, bit in 0u8..8,
        ) {
            let g = Grant { op: ChunkOp::Read, chunk_id: id, expires_ms: 10, holder: &holder, targets: vec![] };
            let t = sign(&KEY, &g);
            prop_assert_eq!(verify(&KEY, &g, &t, 0), Ok(()));
            let mut bad = t.clone();
            bad[flip] ^= 1 << bit;
            prop_assert_eq!(verify(&KEY, &g, &bad, 0), Err(TokenError::Forged));
            if other_id != id {
                let g2 = Grant { chunk_id: other_id, ..g.clone() };
                prop_assert_eq!(verify(&KEY, &g2, &t, 0), Err(TokenError::Forged));
            }
            if other_holder != holder {
                let g2 = Grant { holder: &other_holder, ..g.clone() };
                prop_assert_eq!(verify(&KEY, &g2, &t, 0), Err(TokenError::Forged));
            }
        }
    }
}
