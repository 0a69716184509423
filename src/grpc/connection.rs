//! The TCP connection under the HTTP/2 server, shaped so that a unary
//! answer leaves in one write.
//!
//! h2 copies a DATA frame below a threshold into its write buffer, but sends
//! a larger one from the frame's own memory, and while such a frame is
//! pending it buffers nothing else: it writes the headers and the DATA frame,
//! then the trailers in a second write. The threshold is 256 bytes on a
//! socket that takes vectored writes (a `TcpStream` does), 1 KiB otherwise
//! (h2 0.4, `codec/framed_write.rs`, `CHAIN_THRESHOLD`). A ResolveAgent
//! answer is a few hundred bytes, so each cost two `writev` where a health
//! answer (7 bytes) cost one: BENCHMARKS.md A.
//!
//! So the server's connections say they take no vectored writes, and hold
//! what h2 writes until it flushes: answers under 1 KiB are copied into h2's
//! buffer whole, and a larger DATA frame, handed over in two pieces, still
//! leaves in the same write as the headers before it. h2 flushes after every
//! batch of frames, so nothing waits here longer than it did in h2.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What h2 writes between two flushes: its own 16 KiB buffer and at most one
/// DATA frame (16 KiB, unless the client allows larger frames). A flush that
/// does not fit is written through in more pieces, never held back.
const WRITE_BUFFER: usize = 32 * 1024;

/// A client's connection as the gRPC server reads and writes it.
pub struct Connection(BufWriter<TcpStream>);

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Connection(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

/// tonic puts this in the request extensions (`Request::remote_addr`), as for
/// a bare `TcpStream`.
impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    /// The point of this type: h2 then copies DATA frames under 1 KiB
    /// instead of holding back the frames after them.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
