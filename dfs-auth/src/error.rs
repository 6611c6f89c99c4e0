//! Failures setting up or checking identities.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists: a CA is never overwritten")]
    Exists(PathBuf),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("unreadable peer certificate: {0}")]
    BadPeerCertificate(String),
    #[error("the certificate names no dfs role (its subject's OU): {0}")]
    NoRole(String),
    #[error("unknown role {0:?} (meta, node, client or admin)")]
    UnknownRole(String),
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl AuthError {
    pub(crate) fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
        move |source| AuthError::File {
            path: path.to_path_buf(),
            source,
        }
    }
}
