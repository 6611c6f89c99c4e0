//! File system errors, each with the errno the application sees.

use dfs_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{message}")]
    Errno { errno: i32, message: String },
    /// A chunk of an older chunk map was deleted (the file changed): read
    /// the new map and try again.
    #[error("chunk {0} is gone: the file changed")]
    ChunkGone(u64),
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError::Errno {
            errno,
            message: message.into(),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            FsError::Client(e) => e.errno(),
            FsError::Errno { errno, .. } => *errno,
            FsError::ChunkGone(_) => libc::EIO,
        }
    }

    /// The chunk map this came from is out of date (`ChunkGone`).
    pub fn is_chunk_gone(&self) -> bool {
        matches!(
            self,
            FsError::ChunkGone(_) | FsError::Client(ClientError::ChunkGone { .. })
        )
    }
}

impl From<tonic::Status> for FsError {
    fn from(s: tonic::Status) -> Self {
        FsError::Client(s.into())
    }
}

pub type FsResult<T> = Result<T, FsError>;
