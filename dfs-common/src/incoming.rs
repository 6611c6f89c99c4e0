//! The accepted connections a gRPC server serves, with TCP_NODELAY set.
//!
//! tonic's `Server::tcp_nodelay` only applies to listeners tonic binds itself;
//! with `serve_with_incoming` each accepted socket must be set here. Without
//! it, a reply that hyper writes as two segments (headers, then body and
//! trailers) waits for the peer's delayed ACK: about 40 ms per small RPC.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// Every connection `listener` accepts, with Nagle's algorithm off.
pub fn nodelay_incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
