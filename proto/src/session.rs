//! How a request names its session and itself (gRPC headers), and how meta
//! says a session is gone.

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Header with the caller's session id.
pub const SESSION_HEADER: &str = "dfs-session";
/// Header with the request id, unique within the session (mutations only).
pub const REQUEST_HEADER: &str = "dfs-request";
/// Set on the status of a request whose session expired.
pub const EXPIRED_HEADER: &str = "dfs-session-expired";

/// The (session, request) ids a request carries; 0 when absent.
pub fn request_ids(metadata: &MetadataMap) -> (u64, u64) {
    let get = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(SESSION_HEADER), get(REQUEST_HEADER))
}

/// The status meta answers for a request of an expired or unknown session.
pub fn session_expired(session_id: u64) -> Status {
    let mut status = crate::status_from_errno(
        libc::ESTALE,
        format!("session {session_id} expired: its locks and open unlinked files were released"),
    );
    status
        .metadata_mut()
        .insert(EXPIRED_HEADER, tonic::metadata::MetadataValue::from(1u32));
    status
}

/// Whether meta answered that the caller's session expired.
pub fn is_session_expired(status: &Status) -> bool {
    status.code() == Code::Aborted && status.metadata().get(EXPIRED_HEADER).is_some()
}
