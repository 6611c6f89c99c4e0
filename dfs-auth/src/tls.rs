//! Mutual TLS for tonic from three PEM files: the cluster CA, this process's
//! certificate and its key. Servers require a client certificate the CA
//! signed; clients verify that a server's certificate is the CA's and names
//! the role they meant to reach (`Role::server_name`).

use std::path::{Path, PathBuf};

use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

use crate::{AuthError, Role};

/// Where certificates live unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/dfs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.crt`, `DIR/NAME.crt` and `DIR/NAME.key`.
    pub fn under(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(crate::pki::CA_CERT),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn read(&self) -> Result<(Certificate, TlsIdentity), AuthError> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(AuthError::file(p));
        let ca = Certificate::from_pem(read(&self.ca)?);
        let identity = TlsIdentity::from_pem(read(&self.cert)?, read(&self.key)?);
        Ok((ca, identity))
    }

    /// A server that requires every client to present a certificate of the
    /// CA. (The handshake runs in `dfs_common::incoming`, with a deadline.)
    pub fn server(&self) -> Result<TlsAcceptor, AuthError> {
        use tokio_rustls::rustls::server::WebPkiClientVerifier;
        use tokio_rustls::rustls::{RootCertStore, ServerConfig};
        let read = |p: &PathBuf| std::fs::read(p).map_err(AuthError::file(p));
        let tls = |e: &dyn std::fmt::Display| AuthError::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &read(&self.ca)?[..]) {
            roots
                .add(cert.map_err(AuthError::file(&self.ca))?)
                .map_err(|e| tls(&e))?;
        }
        let verifier = WebPkiClientVerifier::builder(roots.into())
            .build()
            .map_err(|e| tls(&e))?;
        let chain = rustls_pemfile::certs(&mut &read(&self.cert)?[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(AuthError::file(&self.cert))?;
        let key = rustls_pemfile::private_key(&mut &read(&self.key)?[..])
            .map_err(AuthError::file(&self.key))?
            .ok_or_else(|| AuthError::Tls(format!("{}: no private key", self.key.display())))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
    }

    /// The client side: this certificate, and the CA that servers must show.
    pub fn client(&self) -> Result<ClientTls, AuthError> {
        let (ca, identity) = self.read()?;
        Ok(ClientTls {
            base: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
        })
    }
}

/// A process's client TLS settings, for connections to any server role.
#[derive(Debug, Clone)]
pub struct ClientTls {
    base: ClientTlsConfig,
}

impl ClientTls {
    /// Settings for a connection to a server of `role`: its certificate must
    /// carry that role's DNS name.
    pub fn to(&self, role: Role) -> ClientTlsConfig {
        self.base.clone().domain_name(role.server_name())
    }
}

/// The command-line options every dfs program takes for its certificates.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Directory holding ca.crt and this program's NAME.crt and NAME.key.
    #[arg(long, env = "DFS_TLS_DIR", default_value = DEFAULT_DIR, global = true)]
    pub tls_dir: PathBuf,
    /// The cluster CA's certificate [default: TLS_DIR/ca.crt].
    #[arg(long, env = "DFS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// This program's certificate [default: TLS_DIR/NAME.crt, NAME its role].
    #[arg(long, env = "DFS_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// This program's private key [default: TLS_DIR/NAME.key].
    #[arg(long, env = "DFS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Plaintext gRPC without certificates: no authentication at all. For
    /// debugging only; every process of the cluster must agree.
    #[arg(long, env = "DFS_INSECURE", global = true)]
    pub insecure: bool,
}

impl TlsArgs {
    /// The files to use, with `name` (usually the role) for the defaults;
    /// None when running insecure.
    pub fn files(&self, name: &str) -> Option<TlsFiles> {
        if self.insecure {
            return None;
        }
        let d = TlsFiles::under(&self.tls_dir, name);
        Some(TlsFiles {
            ca: self.ca.clone().unwrap_or(d.ca),
            cert: self.cert.clone().unwrap_or(d.cert),
            key: self.key.clone().unwrap_or(d.key),
        })
    }
}
