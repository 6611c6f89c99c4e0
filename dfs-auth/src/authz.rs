//! The role check in front of a gRPC service: the caller's certificate names
//! a role, and each method lists the roles it serves. A caller without a
//! certificate is UNAUTHENTICATED; one whose role the method does not serve
//! is PERMISSION_DENIED; neither reaches a handler. Allowed calls carry the
//! caller's `Identity` in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use dfs_common::incoming::PeerInfo;
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
}

impl<S> Authorized<S> {
    pub fn new(inner: S, policy: Policy, enforce: bool) -> Authorized<S> {
        Authorized {
            inner,
            policy,
            enforce,
        }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

/// Checks one request; on success puts the caller's identity in it.
fn check<B>(req: &mut http::Request<B>, policy: Policy) -> Result<(), Status> {
    let certs = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|i| i.certs.clone());
    let Some(der) = certs.as_ref().and_then(|c| c.first()) else {
        return Err(Status::unauthenticated(
            "a client certificate of the cluster CA is required",
        ));
    };
    let identity = Identity::from_der(der).map_err(|e| Status::unauthenticated(e.to_string()))?;
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
            if let Err(status) = check(&mut req, self.policy) {
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
