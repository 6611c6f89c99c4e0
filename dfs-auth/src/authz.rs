//! The role check in front of a gRPC service: the caller's certificate names
//! a role, and each method lists the roles it serves. A caller without a
//! certificate is UNAUTHENTICATED; one whose role the method does not serve
//! is PERMISSION_DENIED; neither reaches a handler. Allowed calls carry the
//! caller's `Identity` in the request's extensions.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use dfs_common::incoming::PeerInfo;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;

use crate::{Identity, Role};

/// The roles that may call a method (by its name, as in `/pkg.Service/Method`).
/// Methods the policy does not know are refused.
pub type Policy = fn(method: &str) -> &'static [Role];

/// A gRPC service behind the role check. Without enforcement (a cluster run
/// `--insecure`, for debugging) every call passes, with no identity.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: Policy,
    enforce: bool,
    identities: Identities,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, policy: Policy, enforce: bool) -> Authorized<S> {
        Authorized {
            inner,
            policy,
            enforce,
            identities: Identities::default(),
        }
    }
}

type Chain = Vec<CertificateDer<'static>>;

/// The identity of each connection's certificate, read once per connection
/// instead of once per call (parsing the X.509 certificate was 3% of meta's
/// CPU during small-file work). Keyed by the address of the connection's
/// chain (one `Arc` per connection, cloned into each of its requests); the
/// `Weak` keeps that allocation, so its address cannot name another chain
/// while the entry lives.
#[derive(Clone, Default)]
struct Identities(Arc<Mutex<Known>>);

/// Chain address -> (the chain, its identity).
type Known = HashMap<usize, (Weak<Chain>, Identity)>;

/// Entries kept before those of closed connections are dropped.
const REMEMBERED: usize = 1024;

impl Identities {
    fn of(&self, chain: &Arc<Chain>) -> Result<Identity, Status> {
        let key = Arc::as_ptr(chain) as usize;
        if let Some((_, identity)) = self.lock().get(&key) {
            return Ok(identity.clone());
        }
        let Some(der) = chain.first() else {
            return Err(Status::unauthenticated(
                "a client certificate of the cluster CA is required",
            ));
        };
        let identity =
            Identity::from_der(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut known = self.lock();
        if known.len() >= REMEMBERED {
            known.retain(|_, (chain, _)| chain.strong_count() > 0);
        }
        if known.len() < REMEMBERED {
            known.insert(key, (Arc::downgrade(chain), identity.clone()));
        }
        Ok(identity)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

/// Checks one request; on success puts the caller's identity in it.
fn check<B>(
    req: &mut http::Request<B>,
    policy: Policy,
    identities: &Identities,
) -> Result<(), Status> {
    let Some(chain) = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|i| i.certs.clone())
    else {
        return Err(Status::unauthenticated(
            "a client certificate of the cluster CA is required",
        ));
    };
    let identity = identities.of(&chain)?;
    let method = req.uri().path().rsplit('/').next().unwrap_or_default();
    if !policy(method).contains(&identity.role) {
        tracing::warn!(role = %identity.role, name = %identity.name, method, "call refused");
        return Err(Status::permission_denied(format!(
            "a {} certificate may not call {method}",
            identity.role
        )));
    }
    req.extensions_mut().insert(identity);
    Ok(())
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if self.enforce {
            if let Err(status) = check(&mut req, self.policy, &self.identities) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            oversize_is_invalid_argument(&mut response);
            Ok(response)
        })
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE, before any
/// handler runs. To a caller that is a malformed request: INVALID_ARGUMENT,
/// like every other. (No dfs handler answers OUT_OF_RANGE.)
fn oversize_is_invalid_argument(response: &mut http::Response<BoxBody>) {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11")
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The identity an allowed call came with (None when not enforcing).
pub fn caller<T>(req: &tonic::Request<T>) -> Option<&Identity> {
    req.extensions().get::<Identity>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(dir: &std::path::Path, role: Role, name: &str) -> Arc<Chain> {
        let issued = crate::pki::issue(dir, dir, role, name, &[], 1).unwrap();
        let pem = std::fs::read_to_string(&issued.cert).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        Arc::new(vec![CertificateDer::from(der)])
    }

    #[test]
    fn each_connection_keeps_its_own_identity() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init_ca(dir.path(), "test CA").unwrap();
        let identities = Identities::default();
        let node = chain_of(dir.path(), Role::Node, "node-1");
        let client = chain_of(dir.path(), Role::Client, "c");
        for _ in 0..2 {
            assert_eq!(identities.of(&node).unwrap().name, "node-1");
            assert_eq!(identities.of(&client).unwrap().role, Role::Client);
        }
        assert_eq!(identities.lock().len(), 2);
        // Closed connections make room; live ones are still answered.
        drop(client);
        for i in 0..REMEMBERED {
            let chain = Arc::new(node.as_ref().clone());
            assert_eq!(identities.of(&chain).unwrap().name, "node-1", "{i}");
        }
        assert!(identities.lock().len() <= REMEMBERED);
        assert_eq!(identities.of(&node).unwrap().name, "node-1");
        let garbage = Arc::new(vec![CertificateDer::from(vec![1u8, 2, 3])]);
        assert!(identities.of(&garbage).is_err());
        assert!(identities.of(&Arc::new(Vec::new())).is_err());
    }
}
