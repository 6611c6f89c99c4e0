//! The four kinds of caller, and what each certificate says it is.

use crate::AuthError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A metadata server (lists nodes' chunks for fsck).
    Meta,
    /// A storage node (registers, heartbeats, copies chunks to other nodes).
    Node,
    /// A mount or a file tool: files only.
    Client,
    /// Files, and what changes the cluster (drain, remove, fsck --repair).
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Node, Role::Client, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    /// The DNS name every server certificate of this role carries, which
    /// clients ask for: a client that connects to a meta accepts only a meta
    /// certificate, whatever address it dialled.
    pub fn server_name(self) -> String {
        format!("dfs-{}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Role, AuthError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthError::UnknownRole(s.to_string()))
    }
}
