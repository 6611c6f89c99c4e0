//! Client failures, each with the errno an application should see.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error; `errno` is what it means.
    #[error("{message}")]
    Remote { errno: i32, message: String },
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("bad address {0}")]
    BadAddress(String),
    #[error("chunk {chunk_id}: no replica could be read ({detail})")]
    ChunkUnreadable { chunk_id: u64, detail: String },
    /// Every replica's node said it no longer has the chunk: the file
    /// changed since this chunk map was read (a newer map has the data).
    #[error("chunk {chunk_id} is gone: the file changed")]
    ChunkGone { chunk_id: u64 },
    #[error("chunk write failed: {0}")]
    WriteFailed(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
}

impl ClientError {
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Remote { errno, .. } => *errno,
            ClientError::Unreachable(_) => libc::ETIMEDOUT,
            ClientError::BadAddress(_) => libc::EINVAL,
            ClientError::ChunkUnreadable { .. }
            | ClientError::ChunkGone { .. }
            | ClientError::WriteFailed(_) => libc::EIO,
            ClientError::NoSpace(_) => libc::ENOSPC,
            ClientError::Local(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::Unavailable {
            return ClientError::Unreachable(s.message().to_string());
        }
        ClientError::Remote {
            errno: dfs_proto::errno_of(&s),
            message: s.message().to_string(),
        }
    }
}
