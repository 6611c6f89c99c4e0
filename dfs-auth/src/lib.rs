//! Who is calling. The cluster has one CA (`pki`); every certificate it issues
//! carries a role (`Role`: meta, node, client, admin) in its subject's OU and
//! the holder's name in its CN. Every connection is mutual TLS (`tls`), and
//! each gRPC service checks the caller's role per method (`authz`) before a
//! handler runs; handlers find the caller's `Identity` in the request's
//! extensions.

pub mod authz;
pub mod error;
pub mod identity;
pub mod pki;
pub mod role;
pub mod tls;
pub mod token;

pub use authz::{Authorized, Policy};
pub use error::AuthError;
pub use identity::Identity;
pub use role::Role;
pub use tls::{ClientTls, TlsArgs, TlsFiles};
pub use token::{ChunkOp, Grant, TokenError};
