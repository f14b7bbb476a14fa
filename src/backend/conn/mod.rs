//! One authenticated connection to a PostgreSQL server, owned by a pool and lent
//! to one client session at a time. pgsplit speaks the protocol on it directly
//! (tokio-postgres would hide the byte stream the session forwards).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::BackendError;
use crate::config::ServerUrl;
use crate::net::Stream;
use crate::protocol::{Frame, TxStatus, build, decode_frame, fields, peek_frame, tag};
use crate::tls::ServerTls;

/// PostgreSQL never sends a message larger than 1 GiB (MaxAllocSize).
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

pub use crate::server::ServerId;

/// Where a whole message sits in a connection's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffered {
    pub tag: u8,
    /// Its body (after the tag and the length); `body.end` is where the
    /// next message starts.
    pub body: std::ops::Range<usize>,
}

mod login;

/// A server as configured: where it is and how to log in.
#[derive(Debug)]
pub struct ServerTarget {
    pub id: ServerId,
    pub url: ServerUrl,
    /// `host:port`: the label in logs and metrics.
    pub name: String,
    /// How to encrypt; an error (unreadable CA file...) makes the server unusable
    /// until a reload fixes it, and every connection attempt says why.
    pub tls: Result<ServerTls, String>,
    /// TCP keepalive and user timeout for its sockets.
    pub net: crate::config::NetConfig,
}

impl ServerTarget {
    pub fn new(id: ServerId, url: ServerUrl, net: crate::config::NetConfig) -> Arc<Self> {
        let name = url.addr();
        let tls = crate::tls::server_tls(&url).map_err(|e| e.to_string());
        if let Err(e) = &tls {
            tracing::error!(server = %name, error = %e, "server TLS settings are unusable");
        }
        Arc::new(ServerTarget {
            id,
            url,
            name,
            tls,
            net,
        })
    }
}

/// What the session needs to send a cancel request for this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

pub struct ServerConn {
    stream: Stream,
    /// What the server sent that nobody has consumed yet: read only through
    /// [`ServerConn::buffered_at`] and friends, so framing is checked once.
    rbuf: BytesMut,
    target: Arc<ServerTarget>,
    /// ParameterStatus values as last reported by the server.
    params: HashMap<Vec<u8>, Vec<u8>>,
    key: CancelKey,
    /// As the last ReadyForQuery said (the session notes it, see
    /// [`ServerConn::note_status`]).
    status: TxStatus,
    /// Set when the connection's state is unknown (I/O error, a client vanished
    /// mid-statement): the pool then drops it instead of lending it again.
    /// Never cleared: see [`ServerConn::mark_broken`].
    broken: bool,
    /// The prepared statements this connection holds.
    statements: super::statements::Statements,
    /// The settings pgsplit gave this connection since its last reset: the
    /// next client changes only what differs (see `backend::settings`).
    settings: Arc<super::settings::Settings>,
    /// Its entry among the pooled connections' sockets (see
    /// `backend::sockets`), for as long as it lives.
    registration: Option<super::sockets::Registration>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn({} pid {})", self.target.name, self.key.pid)
    }
}

/// Login details for a pool's connections.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub database: String,
}

impl ServerConn {
    /// A connection on `stream` before its startup message: `connect` goes on
    /// to log in; tests use it directly over in-memory streams.
    pub(crate) fn over(stream: Stream, target: Arc<ServerTarget>) -> ServerConn {
        ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            target,
            params: HashMap::new(),
            key: CancelKey { pid: 0, secret: 0 },
            status: TxStatus::Idle,
            broken: false,
            statements: Default::default(),
            settings: Arc::default(),
            registration: None,
        }
    }

    pub(crate) fn protocol(&self, source: crate::protocol::ProtocolError) -> BackendError {
        BackendError::Protocol {
            server: self.target.name.clone(),
            source,
        }
    }

    pub(crate) fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            server: self.target.name.clone(),
            source,
        }
    }

    fn server_error(&self, frame: &Frame) -> BackendError {
        match fields::error_fields(frame.body()) {
            Ok(f) => BackendError::Server {
                server: self.target.name.clone(),
                code: f.code_str().to_owned(),
                message: f.message_lossy(),
            },
            Err(e) => self.protocol(e),
        }
    }

    #[inline]
    pub fn target(&self) -> &Arc<ServerTarget> {
        &self.target
    }

    /// What a cancel request for this connection carries.
    pub fn cancel_key(&self) -> CancelKey {
        self.key
    }

    /// ParameterStatus values as last reported by the server.
    pub fn params(&self) -> &HashMap<Vec<u8>, Vec<u8>> {
        &self.params
    }

    #[inline]
    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// The transaction status the unit just run here ended with.
    #[inline]
    pub fn note_status(&mut self, status: TxStatus) {
        self.status = status;
    }

    /// The prepared statements this connection holds (the registry keeps
    /// its own invariants).
    #[inline]
    pub fn statements(&mut self) -> &mut super::statements::Statements {
        &mut self.statements
    }

    /// Lists the connection in `sockets`, so that it can be ended from
    /// outside when its server stops answering.
    pub(crate) fn register(&mut self, sockets: &Arc<super::sockets::Sockets>) {
        if let Some(tcp) = self.stream.tcp() {
            self.registration = sockets.register(self.target.id, tcp);
        }
    }

    /// Marks the connection as running a read that may run again elsewhere
    /// (`true`), or no longer (`false`): see `backend::sockets`. A connection
    /// ended by the monitor meanwhile is marked broken.
    #[inline]
    pub(crate) fn rescuable(&mut self, on: bool) {
        if let Some(r) = &self.registration
            && !r.rescuable(on)
        {
            self.broken = true;
        }
    }

    /// The settings pgsplit gave this connection since its last reset.
    #[inline]
    pub fn settings(&self) -> &Arc<super::settings::Settings> {
        &self.settings
    }

    /// Whether the connection has exactly the settings `want`.
    #[inline]
    pub fn has_settings(&self, want: &Arc<super::settings::Settings>) -> bool {
        Arc::ptr_eq(&self.settings, want) || *self.settings == **want
    }

    /// The connection now has the settings `now`.
    #[inline]
    pub fn set_settings(&mut self, now: &Arc<super::settings::Settings>) {
        if !Arc::ptr_eq(&self.settings, now) {
            self.settings = now.clone();
        }
    }

    /// The connection's state is unknown from now on: the pool drops it
    /// instead of lending it again. There is no way back.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub(crate) fn note_parameter(&mut self, frame: &Frame) -> Result<(), BackendError> {
        let (k, v) = fields::parameter_status(frame.body()).map_err(|e| self.protocol(e))?;
        self.params.insert(k.to_vec(), v.to_vec());
        Ok(())
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        if let Err(e) = self.stream.send(bytes).await {
            self.broken = true;
            return Err(self.io(e));
        }
        Ok(())
    }

    /// Moves bytes both ways at once: writes some of `out` (and, once it is
    /// empty, flushes, tracked by `unflushed`) or reads what the server sent
    /// into the read buffer, whichever the socket allows first. The relay uses
    /// it so that a server answering while pgsplit still sends (a pipeline of
    /// Executes, NOTICEs from a COPY FROM trigger) is always read, and neither
    /// side can block the other with both sockets full.
    pub async fn pump(
        &mut self,
        out: &mut BytesMut,
        unflushed: &mut bool,
    ) -> Result<(), BackendError> {
        let ServerConn { stream, rbuf, .. } = self;
        // Only a TLS (or in-memory) stream can hold written bytes back.
        let holds_writes = !matches!(stream, Stream::Plain(_));
        let result = std::future::poll_fn(|cx| {
            let mut stream = Pin::new(&mut *stream);
            if !out.is_empty() {
                match stream.as_mut().poll_write(cx, out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        out.advance(n);
                        *unflushed = holds_writes;
                        return Poll::Ready(Ok(true));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else if *unflushed {
                match stream.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        *unflushed = false;
                        return Poll::Ready(Ok(true));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            // Ok(false): the server closed the connection.
            tokio_util::io::poll_read_buf(stream, cx, rbuf).map_ok(|n| n > 0)
        })
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.broken = true;
                Err(BackendError::Closed(self.target.name.clone()))
            }
            Err(e) => {
                self.broken = true;
                Err(self.io(e))
            }
        }
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    pub async fn fill(&mut self) -> Result<usize, BackendError> {
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => {
                self.broken = true;
                Err(BackendError::Closed(self.target.name.clone()))
            }
            Ok(n) => Ok(n),
            Err(e) => {
                self.broken = true;
                Err(self.io(e))
            }
        }
    }

    /// The whole message buffered at offset `at` (offsets count from the
    /// oldest unconsumed byte): its tag and where it ends. `Ok(None)` while
    /// it has not fully arrived. A malformed header breaks the connection.
    #[inline]
    pub fn buffered_at(&mut self, at: usize) -> Result<Option<Buffered>, BackendError> {
        let rest = self.rbuf.get(at..).unwrap_or_default();
        match peek_frame(rest, MAX_SERVER_MESSAGE) {
            Ok(Some(h)) if rest.len() >= h.total => Ok(Some(Buffered {
                tag: h.tag,
                body: at + 5..at + h.total,
            })),
            Ok(_) => Ok(None),
            Err(e) => {
                self.broken = true;
                Err(self.protocol(e))
            }
        }
    }

    /// The tag and total length of the message beginning at `at` whose
    /// header has arrived but not all of it (`None` otherwise, or for a
    /// malformed header, which `buffered_at` reports).
    #[inline]
    pub fn partial_at(&self, at: usize) -> Option<(u8, usize)> {
        let rest = self.rbuf.get(at..)?;
        match peek_frame(rest, MAX_SERVER_MESSAGE) {
            Ok(Some(h)) if rest.len() < h.total => Some((h.tag, h.total)),
            _ => None,
        }
    }

    /// How many bytes are buffered, unconsumed.
    #[inline]
    pub fn buffered_len(&self) -> usize {
        self.rbuf.len()
    }

    /// Buffered bytes `range` (whole messages the caller judged).
    #[inline]
    pub fn buffered(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.rbuf.get(range).unwrap_or_default()
    }

    /// Buffered bytes `range` together with the reported parameters, for a
    /// reply filter that notes ParameterStatus messages as it reads them.
    #[inline]
    pub fn buffered_with_params(
        &mut self,
        range: std::ops::Range<usize>,
    ) -> (&[u8], &mut HashMap<Vec<u8>, Vec<u8>>) {
        (self.rbuf.get(range).unwrap_or_default(), &mut self.params)
    }

    /// Drops the first `n` buffered bytes: relayed, or swallowed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n.min(self.rbuf.len()));
    }

    /// The next whole buffered message, taken out; `Ok(None)` if none is
    /// whole yet. Never reads the socket.
    pub fn take_buffered(&mut self) -> Result<Option<Frame>, BackendError> {
        match decode_frame(&mut self.rbuf, MAX_SERVER_MESSAGE) {
            Ok(f) => Ok(f),
            Err(e) => {
                self.broken = true;
                Err(self.protocol(e))
            }
        }
    }

    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match decode_frame(&mut self.rbuf, MAX_SERVER_MESSAGE) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {
                    self.fill().await?;
                }
                Err(e) => {
                    self.broken = true;
                    return Err(self.protocol(e));
                }
            }
        }
    }

    /// Runs SQL pgsplit issues itself (session replay, reset) and consumes every
    /// reply up to ReadyForQuery, so the connection is ready for the next unit
    /// whatever happened. `Ok(Err(..))` is an error the server reported for it.
    pub async fn run_internal(
        &mut self,
        sql: &[u8],
    ) -> Result<Result<(), BackendError>, BackendError> {
        match self.simple_rows(sql).await {
            Ok(_) => Ok(Ok(())),
            // Reported by the server; the connection itself is still in sync.
            Err(e @ BackendError::Server { .. }) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Runs one query pgsplit issues itself and returns its rows as text
    /// (`None` for NULL), consuming every reply up to ReadyForQuery. For the
    /// health monitor, the function catalog, session replay and reset; never
    /// on client traffic. Internal statements never COPY: a server that starts
    /// one is in a state pgsplit cannot vouch for, so the connection is broken.
    pub async fn simple_rows(
        &mut self,
        sql: &[u8],
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.write(&build::query(sql)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                tag::backend::DATA_ROW => {
                    let row = parse_text_row(frame.body()).map_err(|e| self.protocol(e))?;
                    rows.push(row);
                }
                tag::backend::ERROR_RESPONSE if error.is_none() => {
                    error = Some(self.server_error(&frame));
                }
                tag::backend::PARAMETER_STATUS => self.note_parameter(&frame)?,
                tag::backend::READY_FOR_QUERY => {
                    self.status =
                        fields::ready_for_query(frame.body()).map_err(|e| self.protocol(e))?;
                    break;
                }
                tag::backend::COPY_IN_RESPONSE
                | tag::backend::COPY_OUT_RESPONSE
                | tag::backend::COPY_BOTH_RESPONSE => {
                    self.broken = true;
                    return Err(self.protocol(crate::protocol::ProtocolError::UnexpectedTag(
                        char::from(frame.tag),
                    )));
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// The primary's WAL insert position, read after a commit: every record of
    /// the committed transaction lies before it, so a replica that has replayed
    /// up to here shows the write (read-your-writes floor).
    pub async fn wal_insert_lsn(&mut self) -> Result<crate::server::Lsn, BackendError> {
        let rows = self
            // Schema-qualified: a session's search_path cannot substitute it.
            .simple_rows(b"SELECT pg_catalog.pg_current_wal_insert_lsn()")
            .await?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_deref())
            .and_then(crate::server::Lsn::parse)
            .ok_or_else(|| self.protocol(crate::protocol::ProtocolError::Malformed("DataRow")))
    }

    /// Returns the connection to a clean state for the next client: `DISCARD ALL`
    /// drops prepared statements, temp tables, advisory locks, LISTENs and session
    /// settings. Only an idle connection can be reset; anything else is broken.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        if !self.idle() {
            self.broken = true;
            return Ok(());
        }
        match self.run_internal(b"DISCARD ALL").await {
            Ok(Ok(())) => {
                self.statements.clear();
                self.settings = Arc::default();
                Ok(())
            }
            Ok(Err(e)) | Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Idle, usable, and holding no prepared statement or pending close: with
    /// only read-only work run since the last reset (the caller knows), it can
    /// serve another client without `DISCARD ALL`.
    pub fn is_clean(&self) -> bool {
        self.idle() && self.statements.is_empty()
    }

    /// Usable, outside any transaction, and nothing unread.
    fn idle(&self) -> bool {
        !self.broken && self.status == TxStatus::Idle && self.rbuf.is_empty()
    }

    /// Cheap check, no round trip: idle, nothing unread, and the socket has
    /// neither data nor end-of-stream waiting.
    pub fn is_idle_and_open(&mut self) -> bool {
        if !self.idle() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.tcp() {
            Some(tcp) => {
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            // An in-memory stream (tests) has no cheap probe: assume open.
            None => true,
        }
    }

    /// The TCP settings of this connection's socket (`None` in memory).
    pub fn tcp_settings(&self) -> Option<std::io::Result<crate::net::TcpSettings>> {
        self.stream.tcp().map(crate::net::tcp_settings)
    }

    pub async fn terminate(mut self) {
        let _ = self.stream.send(&build::terminate()).await;
    }
}

/// A DataRow in text format: Int16 column count, then per column an Int32
/// length (-1 for NULL) and the bytes.
pub(crate) fn parse_text_row(
    body: &[u8],
) -> Result<Vec<Option<String>>, crate::protocol::ProtocolError> {
    let mut r = fields::Reader::new(body, "DataRow");
    let n = usize::try_from(r.i16()?)
        .map_err(|_| crate::protocol::ProtocolError::Malformed("DataRow"))?;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let bytes = r.take(usize::try_from(len).unwrap_or(usize::MAX))?;
            row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    r.finish()?;
    Ok(row)
}
