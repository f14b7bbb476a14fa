//! The byte stream under a connection: plain TCP, or TLS once negotiated (as
//! the server side toward clients, or the client side toward PostgreSQL). One
//! enum so the session code is written once.
//!
//! Every write through a `Stream` must be followed by a flush before pgsplit
//! waits for anything else: a TLS stream may accept bytes into its session
//! buffer and return before they reach the socket (tokio-rustls does when the
//! socket is full), and nothing sends them until the next write or flush. Use
//! [`Stream::send`], which does both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// TLS toward a client (pgsplit is the TLS server).
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS toward a PostgreSQL server (pgsplit is the TLS client).
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-process byte stream (`tokio::io::duplex`, possibly under TLS):
    /// lets tests drive sessions and relays with peers that split, stall or
    /// hold bytes as real sockets and TLS layers do.
    Memory(Box<dyn Duplex>),
}

/// A byte stream that can stand in for a socket.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Sync + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Duplex for T {}

impl Stream {
    /// The socket under the stream; `None` for an in-memory stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Accepted(s) => Some(s.get_ref().0),
            Stream::Connected(s) => Some(s.get_ref().0),
            Stream::Memory(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Accepted(_) | Stream::Connected(_))
    }

    /// The `tls-server-end-point` channel-binding value of the certificate a
    /// server presented on this connection (pgsplit as the TLS client).
    pub fn server_end_point(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Connected(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::tls::end_point::hash(cert)),
            _ => None,
        }
    }

    /// Writes all of `bytes` and flushes them to the socket. A write alone is
    /// not enough under TLS (see the module comment).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Accepted($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Connected($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Memory($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Connected(s) => s.is_write_vectored(),
            Stream::Memory(s) => s.is_write_vectored(),
        }
    }
}
