//! The connections a gRPC server serves: TLS handshakes done here with a
//! deadline, TCP_NODELAY set, at most a fixed number open at once, and
//! accept errors survived.
//!
//! tonic's own TLS has no handshake deadline: a peer that connects and never
//! finishes its handshake would hold a connection slot for good. Here each
//! handshake runs on a task of its own (a slow one holds up no other) and is
//! dropped after HANDSHAKE_DEADLINE, freeing its slot. The peer's certificate
//! chain travels with the connection (`PeerInfo`, which tonic puts in every
//! request's extensions) for `dfs_auth::Authorized` to check.
//!
//! tonic's `Server::tcp_nodelay` only applies to listeners tonic binds itself;
//! with `serve_with_incoming` each accepted socket must be set here. Without
//! it, a reply that hyper writes as two segments (headers, then body and
//! trailers) waits for the peer's delayed ACK: about 40 ms per small RPC.
//!
//! tonic ends the whole server on an accept error it does not know as
//! transient (EMFILE, ENFILE, ENOBUFS): here such errors are logged and
//! accepting resumes after a pause, so running out of descriptors for a
//! moment costs some connections, not the daemon.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Connections a daemon serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The longest a call may take on a server (a caller's own `grpc-timeout`
/// may be shorter): no slow or stuck peer holds a call's resources for
/// good. Generous, so that a node registering millions of chunks finishes.
pub const CALL_DEADLINE: Duration = Duration::from_secs(300);

/// How long a peer has to finish its TLS handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// How long accepting pauses after an error (out of descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The certificate chain the peer presented (None without TLS).
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Every connection `listener` accepts, with Nagle's algorithm off, after its
/// TLS handshake when `tls` is given, at most `max` open at a time: at the
/// limit, accepting waits until one closes (new connections queue in the
/// kernel's backlog meanwhile).
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<LimitedStream>> {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(max.max(1)));
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if !warned {
                        tracing::warn!(
                            max,
                            "connection limit reached: new connections wait (logged once)"
                        );
                        warned = true;
                    }
                    let waited = tokio::select! {
                        p = permits.clone().acquire_owned() => p,
                        _ = tx.closed() => return,
                    };
                    let Ok(p) = waited else { return };
                    p
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; accepting again shortly");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
            }
            let Some(tls) = &tls else {
                let plain = LimitedStream {
                    io: Transport::Plain(stream),
                    info: PeerInfo {
                        remote: Some(remote),
                        certs: None,
                    },
                    _permit: permit,
                };
                if tx.send(Ok(plain)).await.is_err() {
                    return;
                }
                continue;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(stream)).await {
                    Ok(Ok(secured)) => {
                        let certs = secured.get_ref().1.peer_certificates().map(|chain| {
                            Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())
                        });
                        let limited = LimitedStream {
                            io: Transport::Tls(Box::new(secured)),
                            info: PeerInfo {
                                remote: Some(remote),
                                certs,
                            },
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(limited)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake not finished in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A served connection, holding one of the server's connection permits
/// until it is dropped (closed).
pub struct LimitedStream {
    io: Transport,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
