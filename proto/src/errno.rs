//! Errno transport: servers attach the POSIX errno a failure means to the
//! `tonic::Status`, so a client (CLI or FUSE) surfaces exactly that errno rather
//! than guessing from the gRPC code.

use tonic::{metadata::MetadataValue, Code, Status};

/// Metadata key carrying the decimal errno.
pub const ERRNO_METADATA_KEY: &str = "dfs-errno";

/// A status whose gRPC code follows from the errno and which carries the errno itself.
pub fn status_from_errno(errno: i32, message: impl Into<String>) -> Status {
    let code = match errno {
        libc::ENOENT => Code::NotFound,
        libc::EEXIST => Code::AlreadyExists,
        libc::EACCES | libc::EPERM => Code::PermissionDenied,
        libc::ENOSPC => Code::ResourceExhausted,
        libc::EINVAL | libc::ENAMETOOLONG | libc::E2BIG | libc::ERANGE | libc::EFBIG => {
            Code::InvalidArgument
        }
        libc::ETIMEDOUT => Code::DeadlineExceeded,
        libc::EIO => Code::Internal,
        // A replica whose checksum failed, confirmed by its node: corrupt,
        // unlike EIO, which only says it could not be read now.
        libc::EBADMSG => Code::DataLoss,
        libc::EBUSY => Code::FailedPrecondition,
        libc::ESTALE => Code::Aborted,
        _ => Code::FailedPrecondition,
    };
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERRNO_METADATA_KEY, MetadataValue::from(errno));
    status
}

/// The errno a status stands for: the carried one if present, else one derived
/// from the gRPC code (transport failures become EIO or ETIMEDOUT).
pub fn errno_of(status: &Status) -> i32 {
    if let Some(errno) = status
        .metadata()
        .get(ERRNO_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
    {
        return errno;
    }
    match status.code() {
        Code::NotFound => libc::ENOENT,
        Code::AlreadyExists => libc::EEXIST,
        Code::PermissionDenied | Code::Unauthenticated => libc::EACCES,
        Code::ResourceExhausted => libc::ENOSPC,
        Code::InvalidArgument | Code::OutOfRange => libc::EINVAL,
        Code::DeadlineExceeded => libc::ETIMEDOUT,
        Code::Unimplemented => libc::ENOSYS,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_errno_wins_over_code() {
        let s = status_from_errno(libc::ENOTEMPTY, "dir not empty");
        assert_eq!(errno_of(&s), libc::ENOTEMPTY);
        assert_eq!(s.code(), Code::FailedPrecondition);
    }

    #[test]
    fn plain_status_maps_by_code() {
        assert_eq!(errno_of(&Status::not_found("x")), libc::ENOENT);
        assert_eq!(errno_of(&Status::unavailable("down")), libc::EIO);
    }
}
