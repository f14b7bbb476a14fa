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

/// Applies the `[net]` TCP settings to a socket pgsplit opened or accepted.
pub fn tune(tcp: &TcpStream, net: &crate::config::NetConfig) -> io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(net.tcp_keepalive_idle)
        .with_interval(net.tcp_keepalive_interval)
        .with_retries(net.tcp_keepalive_count);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout((!net.tcp_user_timeout.is_zero()).then_some(net.tcp_user_timeout))?;
    Ok(())
}

/// The TCP settings of a socket as the kernel reports them (what [`tune`]
/// set), for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    pub keepalive: bool,
    pub keepalive_idle: std::time::Duration,
    pub keepalive_interval: std::time::Duration,
    pub keepalive_count: u32,
    pub user_timeout: Option<std::time::Duration>,
}

pub fn tcp_settings(tcp: &TcpStream) -> io::Result<TcpSettings> {
    let sock = socket2::SockRef::from(tcp);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let user_timeout = sock.tcp_user_timeout()?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let user_timeout = None;
    Ok(TcpSettings {
        keepalive: sock.keepalive()?,
        keepalive_idle: sock.tcp_keepalive_time()?,
        keepalive_interval: sock.tcp_keepalive_interval()?,
        keepalive_count: sock.tcp_keepalive_retries()?,
        user_timeout,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a real loopback connection, accepted and connected, as
    /// pgsplit tunes them: the kernel reports the settings back.
    #[tokio::test]
    async fn tune_sets_keepalive_and_user_timeout_on_real_sockets() {
        let net = crate::config::NetConfig {
            tcp_keepalive_idle: std::time::Duration::from_secs(7),
            tcp_keepalive_interval: std::time::Duration::from_secs(3),
            tcp_keepalive_count: 4,
            tcp_user_timeout: std::time::Duration::from_secs(12),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let connected = connected.unwrap_or_else(|e| panic!("{e}"));
        let (accepted, _) = accepted.unwrap_or_else(|e| panic!("{e}"));
        for tcp in [&connected, &accepted] {
            let before = tcp_settings(tcp).unwrap_or_else(|e| panic!("{e}"));
            assert!(!before.keepalive, "keepalive is off until tuned");
            tune(tcp, &net).unwrap_or_else(|e| panic!("{e}"));
            let got = tcp_settings(tcp).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                got,
                TcpSettings {
                    keepalive: true,
                    keepalive_idle: net.tcp_keepalive_idle,
                    keepalive_interval: net.tcp_keepalive_interval,
                    keepalive_count: 4,
                    user_timeout: Some(net.tcp_user_timeout),
                }
            );
        }
    }
}
