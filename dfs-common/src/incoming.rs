//! The accepted connections a gRPC server serves: TCP_NODELAY set, at most
//! a fixed number open at once, and accept errors survived.
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections a daemon serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The longest a call may take on a server (a caller's own `grpc-timeout`
/// may be shorter): no slow or stuck peer holds a call's resources for
/// good. Generous, so that a node registering millions of chunks finishes.
pub const CALL_DEADLINE: Duration = Duration::from_secs(300);

/// How long accepting pauses after an error (out of descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Every connection `listener` accepts, with Nagle's algorithm off, at most
/// `max` open at a time: at the limit, accepting waits until one closes (new
/// connections queue in the kernel's backlog meanwhile).
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
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
                    let Ok(p) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    p
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; accepting again shortly");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
            }
            let limited = LimitedStream {
                inner: stream,
                _permit: permit,
            };
            if tx.send(Ok(limited)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// An accepted connection holding one of the server's connection permits
/// until it is dropped (closed).
pub struct LimitedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
