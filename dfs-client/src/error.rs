//! Client failures, typed by cause; `errno` is the one mapping to what an
//! application should see.

/// Why a request was refused before anything was sent: the caller's own
/// input does not fit what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotADirectory,
    IsADirectory,
    Exists,
    NotRegularFile,
    /// A name the file system cannot hold, with the errno its rule gives.
    BadName {
        errno: i32,
        reason: String,
    },
}

/// Why a chunk could not reach the replicas a commit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Space ran out: no node could be placed, or every node that failed was full.
    NoSpace,
    /// Nodes failed otherwise (stalled, unreachable, I/O errors).
    NodesFailed,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A server answered with an error; `errno` is what it means.
    #[error("{message}")]
    Remote { errno: i32, message: String },
    /// No server answered (down, or past the deadline).
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("bad address {0}")]
    BadAddress(String),
    /// A server's reply lacked something it must carry.
    #[error("malformed reply: {0}")]
    BadReply(String),
    /// Refused here, before any request: `subject` is what the caller named.
    #[error("{subject}: {}", refusal_text(refusal))]
    Refused { subject: String, refusal: Refusal },
    #[error("chunk {chunk_id}: no replica could be read ({detail})")]
    ChunkUnreadable { chunk_id: u64, detail: String },
    /// Every replica's node said it no longer has the chunk: the file
    /// changed since this chunk map was read (a newer map has the data).
    #[error("chunk {chunk_id} is gone: the file changed")]
    ChunkGone { chunk_id: u64 },
    /// A chunk write reached fewer replicas than a commit needs.
    #[error("{message}")]
    ReplicationShortfall { cause: Shortfall, message: String },
    /// A check found data at risk or lost (fsck).
    #[error("{0}")]
    DataAtRisk(String),
    /// A local file (the CLI's source or destination).
    #[error("{path}: {source}")]
    LocalFile {
        path: String,
        source: std::io::Error,
    },
    #[error("local I/O: {0}")]
    Local(#[from] std::io::Error),
}

fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::NotADirectory => "not a directory".into(),
        Refusal::IsADirectory => "is a directory".into(),
        Refusal::Exists => "already exists".into(),
        Refusal::NotRegularFile => "not a regular file".into(),
        Refusal::BadName { reason, .. } => reason.clone(),
    }
}

impl ClientError {
    pub fn refused(subject: impl Into<String>, refusal: Refusal) -> ClientError {
        ClientError::Refused {
            subject: subject.into(),
            refusal,
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Remote { errno, .. } => *errno,
            ClientError::Unreachable(_) => libc::ETIMEDOUT,
            ClientError::BadAddress(_) => libc::EINVAL,
            ClientError::Refused { refusal, .. } => match refusal {
                Refusal::NotADirectory => libc::ENOTDIR,
                Refusal::IsADirectory => libc::EISDIR,
                Refusal::Exists => libc::EEXIST,
                Refusal::NotRegularFile => libc::EINVAL,
                Refusal::BadName { errno, .. } => *errno,
            },
            ClientError::BadReply(_)
            | ClientError::ChunkUnreadable { .. }
            | ClientError::ChunkGone { .. }
            | ClientError::DataAtRisk(_) => libc::EIO,
            ClientError::ReplicationShortfall { cause, .. } => match cause {
                Shortfall::NoSpace => libc::ENOSPC,
                Shortfall::NodesFailed => libc::EIO,
            },
            ClientError::LocalFile { source: e, .. } | ClientError::Local(e) => {
                e.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }

    /// Prefixes a server's error message with the path it concerns.
    pub fn with_path(self, path: &str) -> ClientError {
        match self {
            ClientError::Remote { errno, message } => ClientError::Remote {
                errno,
                message: format!(
                    "{path}: {}",
                    if message.is_empty() {
                        std::io::Error::from_raw_os_error(errno).to_string()
                    } else {
                        message
                    }
                ),
            },
            other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_errno() {
        let short = |cause| ClientError::ReplicationShortfall {
            cause,
            message: String::new(),
        };
        assert_eq!(short(Shortfall::NoSpace).errno(), libc::ENOSPC);
        // Stalled or failing nodes are not a full disk.
        assert_eq!(short(Shortfall::NodesFailed).errno(), libc::EIO);
        assert_eq!(
            ClientError::refused("/a", Refusal::IsADirectory).errno(),
            libc::EISDIR
        );
        assert_eq!(
            ClientError::refused("/a", Refusal::IsADirectory).to_string(),
            "/a: is a directory"
        );
        assert_eq!(ClientError::BadReply("x".into()).errno(), libc::EIO);
        let unavailable = tonic::Status::unavailable("down");
        assert!(matches!(
            ClientError::from(unavailable),
            ClientError::Unreachable(_)
        ));
    }
}
