//! Store failures, each with the errno it means to a file system user.

use dfs_proto::NameError;

use super::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write names a chunk id that is not (or no longer) allocated to it:
    /// its session ended, or the id was committed already. The writer still
    /// holding the data uploads it again under fresh ids.
    #[error("{0}")]
    AllocationGone(String),
    #[error("no such attribute")]
    NoXattr,
    #[error("attribute value too large")]
    XattrTooBig,
    #[error("file size {0} is over the largest dfs stores")]
    FileTooBig(u64),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("store URL must start with sqlite: or postgres://, got {0}")]
    BadUrl(String),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: DbError },
    #[error("store holds data this version cannot read: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] DbError),
    /// The task running the request ended before it answered: whether it
    /// happened is unknown, and the client's retry (same request id) finds out.
    #[error("request interrupted: {0}")]
    Interrupted(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Db(DbError::Pg(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Db(DbError::Sqlite(e))
    }
}

impl StoreError {
    /// The POSIX errno an application should see for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound(_) => libc::ENOENT,
            StoreError::Exists(_) => libc::EEXIST,
            StoreError::NotDir => libc::ENOTDIR,
            StoreError::IsDir => libc::EISDIR,
            StoreError::NotEmpty => libc::ENOTEMPTY,
            StoreError::Name(e) => e.errno(),
            StoreError::Invalid(_) => libc::EINVAL,
            StoreError::NotPermitted(_) => libc::EPERM,
            StoreError::Unsupported(_) => libc::EOPNOTSUPP,
            StoreError::Busy(_) => libc::EBUSY,
            StoreError::Conflict(_) => libc::ESTALE,
            StoreError::AllocationGone(_) => libc::EKEYEXPIRED,
            StoreError::NoXattr => libc::ENODATA,
            StoreError::XattrTooBig => libc::E2BIG,
            StoreError::FileTooBig(_) => libc::EFBIG,
            StoreError::NoSpace(_) => libc::ENOSPC,
            StoreError::BadUrl(_)
            | StoreError::Migration { .. }
            | StoreError::Corrupt(_)
            | StoreError::Db(_)
            | StoreError::Interrupted(_) => libc::EIO,
        }
    }

    /// A short, bounded name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Exists(_) => "exists",
            StoreError::NotDir => "not_dir",
            StoreError::IsDir => "is_dir",
            StoreError::NotEmpty => "not_empty",
            StoreError::Name(_) => "bad_name",
            StoreError::Invalid(_) => "invalid",
            StoreError::NotPermitted(_) => "not_permitted",
            StoreError::Unsupported(_) => "unsupported",
            StoreError::Busy(_) => "busy",
            StoreError::Conflict(_) => "conflict",
            StoreError::AllocationGone(_) => "allocation_gone",
            StoreError::NoXattr => "no_xattr",
            StoreError::XattrTooBig => "xattr_too_big",
            StoreError::FileTooBig(_) => "file_too_big",
            StoreError::NoSpace(_) => "no_space",
            StoreError::BadUrl(_) => "bad_url",
            StoreError::Migration { .. } => "migration",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Db(_) => "database",
            StoreError::Interrupted(_) => "interrupted",
        }
    }

    /// A serialization conflict or deadlock: the transaction may simply be run again.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Db(DbError::Pg(sqlx::Error::Database(db))) => matches!(
                db.code().as_deref(),
                // 23505: two retries of one request raced to record it; the
                // rerun finds the record.
                Some("40001") | Some("40P01") | Some("23505")
            ),
            StoreError::Db(DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

impl StoreError {
    /// The database could not be reached (down, restarting, failing over):
    /// the request did not happen and may be sent again.
    pub fn is_unavailable(&self) -> bool {
        // A serialization conflict that outlasted the store's own retries
        // (heavy contention, e.g. a new leader's repair burst): nothing
        // happened, and the client's retry (same request id) is safe.
        if self.is_retryable() {
            return true;
        }
        match self {
            StoreError::Interrupted(_) => true,
            StoreError::Db(DbError::Pg(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_),
            )) => true,
            // PostgreSQL: connection exceptions (08...), and the server
            // shutting down, crashing or starting up (57P01..57P03): a
            // failover in progress.
            StoreError::Db(DbError::Pg(sqlx::Error::Database(db))) => db.code().is_some_and(|c| {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> tonic::Status {
        if e.is_unavailable() {
            // No errno: clients retry this like a server they cannot reach.
            tracing::warn!(error = %e, "metadata database unavailable");
            return tonic::Status::unavailable(e.to_string());
        }
        if e.errno() == libc::EIO {
            tracing::error!(error = %e, "store failure");
        }
        dfs_proto::status_from_errno(e.errno(), e.to_string())
    }
}
