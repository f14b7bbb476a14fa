//! Forwarding a unit to a server connection and its replies back to the client.
//!
//! Staging *adds* messages: a Parse for a named statement the connection has
//! not seen (prepared lazily where it runs), and a Close before re-using a
//! name the connection holds with another text. Their replies (ParseComplete,
//! CloseComplete) are swallowed on the way back, matched by order: each Parse
//! yields exactly one ParseComplete unless an error ends the unit early.
//!
//! Under session pooling it rewrites nothing the client sent. Under
//! transaction pooling, statement names are rewritten: a client's named
//! statement runs as the connection's shared statement for its text (see
//! [`crate::backend::statements`]), so that two clients may give one name to
//! different texts, and statements prepared for one client serve the next.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

pub(crate) use super::replies::Outcome;
use super::replies::{Action, Replies};
use super::state::SessionState;
use super::{ClientError, ClientIo};
use crate::backend::statements::{SHARED_NAME_LEN, SHARED_PREFIX, shared_name};
use crate::backend::{BackendError, ServerConn};
use crate::protocol::{Frame, ProtocolError, build, fields, tag};
pub(crate) use crate::route::plan::RelayMode;

/// Where a Parse puts its statement on the server connection.
#[derive(Debug)]
enum OnConn {
    Unnamed,
    /// Under the client's name (session pooling).
    Named(Bytes),
    /// As the shared statement with this key (transaction pooling).
    Shared(u64),
}

#[derive(Debug)]
struct ParseExpect {
    on_conn: OnConn,
    /// The client's name for it (`None`: the unnamed statement), for a Parse
    /// the client sent.
    client: Option<Bytes>,
    hash: u64,
    injected: bool,
}

#[derive(Debug)]
struct CloseExpect {
    injected: bool,
    /// The shared statement an injected Close evicts.
    evicts: Option<u64>,
}

/// Replies owed for messages pgsplit added or must account for.
#[derive(Debug, Default)]
pub(crate) struct Expect {
    parse: VecDeque<ParseExpect>,
    close: VecDeque<CloseExpect>,
    /// Queries of pgsplit's own that go ahead of the unit (the connection's
    /// settings, see `Session::sync`; a deferred BEGIN): their replies, up to
    /// as many ReadyForQuery, are pgsplit's.
    pub(crate) setup: u8,
    /// The digest of what the client receives for the unit, kept while an
    /// optimistic transaction runs on a replica (see [`super::digest`]).
    pub(crate) digest: Option<super::digest::Digest>,
    /// The client's last unnamed Parse staged in this flight (its hash and
    /// message): a later Bind of the unnamed statement in the same flight
    /// means that one, not the session's (which is the unit's last, since
    /// the unit was collected whole before it was staged).
    unnamed: Option<(u64, Bytes)>,
}

impl Expect {
    /// A ParseComplete arrived: whether it answers a Parse pgsplit added.
    pub(crate) fn parse_complete(&mut self) -> bool {
        self.parse.pop_front().is_some_and(|p| p.injected)
    }

    /// A CloseComplete arrived: whether it answers a Close pgsplit added.
    pub(crate) fn close_complete(&mut self) -> bool {
        self.close.pop_front().is_some_and(|c| c.injected)
    }

    fn closing(&mut self, injected: bool, evicts: Option<u64>) {
        self.close.push_back(CloseExpect { injected, evicts });
    }

    /// Owes replies to Parses and Closes, each added by pgsplit or not.
    #[cfg(test)]
    pub(crate) fn owing(parses: &[bool], closes: &[bool]) -> Expect {
        Expect {
            parse: parses
                .iter()
                .map(|&injected| ParseExpect {
                    on_conn: OnConn::Unnamed,
                    client: None,
                    hash: 0,
                    injected,
                })
                .collect(),
            close: closes
                .iter()
                .map(|&injected| CloseExpect {
                    injected,
                    evicts: None,
                })
                .collect(),
            setup: 0,
            digest: None,
            unnamed: None,
        }
    }
}

/// What a client's Close of a named statement becomes under transaction
/// pooling: a Close of a name no statement has (not an error in
/// PostgreSQL), so that the server's CloseComplete answers it in order.
/// Shared statements stay for other clients; the session forgot the name.
const NO_STATEMENT: &[u8] = b"pgsplit_none";

/// Begins a unit on `conn`: closes the statements the client closed earlier
/// while `conn` was not in use.
pub(crate) fn begin_unit(conn: &mut ServerConn, out: &mut BytesMut, exp: &mut Expect) {
    conn.statements().begin_unit();
    for name in conn.statements().take_pending_closes() {
        out.extend_from_slice(&build::close_statement(&name));
        exp.closing(true, None);
    }
}

/// The part of a Parse body after the statement name.
fn after_name<'a>(body: &'a [u8], name: &[u8]) -> &'a [u8] {
    body.get(name.len() + 1..).unwrap_or_default()
}

/// Appends `frame` to `out` for `conn`, adding what the connection lacks.
pub(crate) fn stage(
    frame: &Frame,
    st: &mut SessionState,
    conn: &mut ServerConn,
    out: &mut BytesMut,
    exp: &mut Expect,
) -> Result<(), ProtocolError> {
    let body = frame.body();
    match frame.tag {
        tag::PARSE => {
            let (name, _) = fields::parse(body)?;
            // Collecting the unit registered this very Parse with its hash;
            // reuse it rather than hash the body a second time. (A frame
            // forwarded while a unit is open was not registered: hash it.)
            let hash = st
                .statement(name)
                .filter(|s| s.parse == frame.bytes)
                .map_or_else(|| statement_hash(body, name), |s| s.hash);
            let client = (!name.is_empty()).then(|| frame.bytes.slice_ref(name));
            if let (Some(capacity), Some(_)) = (st.statement_cache, &client) {
                let key = st.shared_key(hash);
                let rest = after_name(body, name);
                if conn.statements().use_shared(key) {
                    // Ready here already. The client still needs the
                    // ParseComplete, or the error a Parse would give now:
                    // parsed as the unnamed statement, which costs no Close.
                    conn.statements().parsing(None, hash);
                    exp.parse.push_back(ParseExpect {
                        on_conn: OnConn::Unnamed,
                        client,
                        hash,
                        injected: false,
                    });
                    build::renamed(out, tag::PARSE, &[], b"", rest);
                } else {
                    let expect = ParseExpect {
                        on_conn: OnConn::Shared(key),
                        client,
                        hash,
                        injected: false,
                    };
                    parse_shared(key, rest, capacity, expect, conn, out, exp);
                }
                return Ok(());
            }
            if let Some(name) = &client
                && conn.statements().closing(name)
            {
                // The name is taken (by another text, or the same one
                // parsed again): the server needs it free first.
                out.extend_from_slice(&build::close_statement(name));
                exp.closing(true, None);
            }
            conn.statements().parsing(client.clone(), hash);
            if client.is_none() {
                exp.unnamed = Some((hash, frame.bytes.clone()));
            }
            exp.parse.push_back(ParseExpect {
                on_conn: client.clone().map_or(OnConn::Unnamed, OnConn::Named),
                client,
                hash,
                injected: false,
            });
        }
        tag::BIND => {
            let (portal, stmt) = fields::bind(body)?;
            if let Some(on_server) = ensure_prepared(stmt, st, conn, out, exp) {
                let tail = body
                    .get(portal.len() + stmt.len() + 2..)
                    .unwrap_or_default();
                let head = body.get(..portal.len() + 1).unwrap_or_default();
                build::renamed(out, tag::BIND, head, &on_server, tail);
                return Ok(());
            }
        }
        tag::DESCRIBE => {
            let (kind, name) = fields::target(body, "Describe")?;
            if kind == b'S'
                && let Some(on_server) = ensure_prepared(name, st, conn, out, exp)
            {
                build::renamed(out, tag::DESCRIBE, b"S", &on_server, &[]);
                return Ok(());
            }
        }
        tag::CLOSE => {
            let (kind, name) = fields::target(body, "Close")?;
            exp.closing(false, None);
            if kind == b'S' {
                if name.is_empty() {
                    exp.unnamed = None;
                }
                if st.statement_cache.is_some() && !name.is_empty() {
                    build::renamed(out, tag::CLOSE, b"S", NO_STATEMENT, &[]);
                    return Ok(());
                }
                conn.statements().closing(name);
            }
        }
        tag::QUERY => {
            // A simple Query destroys the unnamed statement.
            exp.unnamed = None;
            conn.statements().closing(b"");
        }
        _ => {}
    }
    out.extend_from_slice(&frame.bytes);
    Ok(())
}

/// The hash that identifies a Parse's statement: its text and parameter
/// types, not its name.
pub(crate) fn statement_hash(body: &[u8], name: &[u8]) -> u64 {
    super::state::hash_bytes(after_name(body, name))
}

/// Under transaction pooling: prepares the shared statement `key` on `conn`
/// from `rest` (a Parse body after its name), making room first by closing
/// the least recently used one.
fn parse_shared(
    key: u64,
    rest: &[u8],
    capacity: usize,
    expect: ParseExpect,
    conn: &mut ServerConn,
    out: &mut BytesMut,
    exp: &mut Expect,
) {
    if let Some(old) = conn.statements().evict_shared(capacity) {
        out.extend_from_slice(&build::close_statement(&shared_name(old)));
        exp.closing(true, Some(old));
    }
    conn.statements().parsing_shared(key);
    exp.parse.push_back(expect);
    build::renamed(out, tag::PARSE, &[], &shared_name(key), rest);
}

/// A statement name as the server knows it, when it differs from the
/// client's (transaction pooling).
type ServerName = [u8; SHARED_NAME_LEN];

/// Prepares `name` on `conn` from the session's registry when the connection
/// lacks it (or holds an older statement under that name). Under
/// transaction pooling, returns the name the statement has on the server.
fn ensure_prepared(
    name: &[u8],
    st: &SessionState,
    conn: &mut ServerConn,
    out: &mut BytesMut,
    exp: &mut Expect,
) -> Option<ServerName> {
    if name.is_empty()
        && let Some((hash, parse)) = exp.unnamed.clone()
    {
        // Parsed earlier in this flight; the server has it unless a shared
        // statement was parsed as the unnamed one since.
        if !conn.statements().has(name, hash) {
            conn.statements().parsing(None, hash);
            exp.parse.push_back(ParseExpect {
                on_conn: OnConn::Unnamed,
                client: None,
                hash,
                injected: true,
            });
            out.extend_from_slice(&parse);
        }
        return None;
    }
    let Some(stmt) = st.statement(name) else {
        // The server holds an unnamed statement this client does not have
        // (it ran a simple Query or a Close since, or it was the previous
        // client's, see `Session::release`): close it, so that the client
        // gets the error a connection of its own would give.
        if name.is_empty() && conn.statements().closing(b"") {
            out.extend_from_slice(&build::close_statement(b""));
            exp.closing(true, None);
        }
        // A name the client never prepared: the server says so, unless it
        // is one of the shared statements, which no client may reach by name.
        if st.statement_cache.is_some() && name.starts_with(SHARED_PREFIX) {
            let mut none = [b'_'; SHARED_NAME_LEN];
            none[..NO_STATEMENT.len()].copy_from_slice(NO_STATEMENT);
            return Some(none);
        }
        return None;
    };
    if let (Some(capacity), false) = (st.statement_cache, name.is_empty()) {
        let key = st.shared_key(stmt.hash);
        if !conn.statements().use_shared(key) {
            let expect = ParseExpect {
                on_conn: OnConn::Shared(key),
                client: None,
                hash: stmt.hash,
                injected: true,
            };
            // The registry's Parse names the statement as the client does.
            let rest = after_name(stmt.parse.get(5..).unwrap_or_default(), name);
            parse_shared(key, rest, capacity, expect, conn, out, exp);
        }
        return Some(shared_name(key));
    }
    if conn.statements().has(name, stmt.hash) {
        return None;
    }
    let key = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
    if key.is_some() && conn.statements().closing(name) {
        // Another text holds the name here.
        out.extend_from_slice(&build::close_statement(name));
        exp.closing(true, None);
    }
    conn.statements().parsing(key.clone(), stmt.hash);
    exp.parse.push_back(ParseExpect {
        on_conn: key.clone().map_or(OnConn::Unnamed, OnConn::Named),
        client: key,
        hash: stmt.hash,
        injected: true,
    });
    out.extend_from_slice(&stmt.parse);
    None
}

/// Undoes optimistic registry entries for Parses that never completed (an
/// error ended the unit first): the connection does not have that statement,
/// and, for the client's own Parse, the session does not either unless
/// `final_run` is false (the unit runs again elsewhere, Parses included).
/// Closes of shared statements that never ran leave them in place.
pub(crate) fn settle(
    exp: &mut Expect,
    st: &mut SessionState,
    conn: &mut ServerConn,
    final_run: bool,
) {
    for pe in exp.parse.drain(..) {
        match &pe.on_conn {
            OnConn::Unnamed => conn.statements().parse_failed(None, pe.hash),
            OnConn::Named(name) => conn.statements().parse_failed(Some(name), pe.hash),
            OnConn::Shared(key) => conn.statements().shared_gone(*key),
        }
        if !final_run || pe.injected {
            continue;
        }
        match pe.client {
            None => {
                if st.unnamed.as_ref().is_some_and(|s| s.hash == pe.hash) {
                    st.unnamed = None;
                }
            }
            Some(name) => {
                if st.statements.get(&name).is_some_and(|s| s.hash == pe.hash) {
                    st.statements.remove(&name);
                }
            }
        }
    }
    // After the Parses: a shared statement closed to make room and parsed
    // again later in the unit is still there when neither ran.
    for ce in exp.close.drain(..) {
        if let Some(key) = ce.evicts {
            conn.statements().shared_kept(key);
        }
    }
}

pub(crate) enum RelayError {
    Client(ClientError),
    Server {
        error: BackendError,
        sent_to_client: bool,
    },
}

/// The length of a ReadyForQuery message (tag, length, status).
const READY_FOR_QUERY_LEN: usize = 6;

/// Client bytes queued toward the server above which pgsplit stops reading
/// the client until the server has taken some: the memory one session can
/// hold for a COPY or a pipeline the server reads slower than the client sends.
const MAX_PENDING: usize = 1 << 20;

/// Sends `pending` (the staged unit) and relays replies until the unit's
/// ReadyForQuery. While the unit is still open (sent on Flush) or the server
/// is copying in, client messages are read and forwarded too.
///
/// No byte waits for more input before it moves on: the server is read
/// while pgsplit writes to it (see [`ServerConn::pump`]), every write is
/// flushed, and client frames already buffered are taken before the socket is
/// waited on.
pub(crate) async fn relay(
    io: &mut ClientIo,
    conn: &mut ServerConn,
    st: &mut SessionState,
    exp: &mut Expect,
    mode: RelayMode,
    mut pending: BytesMut,
) -> Result<Outcome, RelayError> {
    let mut unflushed = false;
    let mut replies = Replies::new(mode);
    // Sends relayed bytes to the client, or holds back a retryable unit's
    // bookkeeping replies (see `Emit`).
    let mut to = Emit {
        held: BytesMut::new(),
        mode,
    };
    loop {
        // Whole messages in the read buffer are judged in order; runs of
        // forwarded ones go to the client in one write.
        let mut pos = 0;
        let mut start = 0;
        let mut done = false;
        while !done {
            let message = match conn.buffered_at(pos) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if let Some((tag, total)) = streamable(conn, pos, &replies, exp) {
                        stream_message(io, conn, &mut replies, &mut to, exp, pos, tag, total)
                            .await?;
                        (pos, start) = (0, 0);
                        continue;
                    }
                    break;
                }
                Err(error) => {
                    return Err(RelayError::Server {
                        error,
                        sent_to_client: replies.out.sent_to_client,
                    });
                }
            };
            let end = message.body.end;
            let step = {
                let (body, params) = conn.buffered_with_params(message.body);
                replies.on_message(message.tag, body, exp, params)
            };
            let step = match step {
                Ok(step) => step,
                Err(e) => return Err(server_protocol(conn, e, &replies)),
            };
            done = step.done;
            if let (Some(d), Action::Forward) = (&mut exp.digest, step.action) {
                d.message(message.tag, conn.buffered(pos..end));
            }
            match step.action {
                Action::Forward => {}
                Action::HoldReady if to.held.is_empty() => {
                    let tail = &mut replies.out.tail;
                    // Room for the ReadyForQuery the session appends: one
                    // allocation.
                    tail.reserve(pos - start + READY_FOR_QUERY_LEN);
                    tail.extend_from_slice(conn.buffered(start..pos));
                    start = end;
                }
                Action::HoldReady | Action::Swallow => {
                    to.range(io, conn, &mut replies, start..pos).await?;
                    start = end;
                }
            }
            pos = end;
        }
        to.range(io, conn, &mut replies, start..pos).await?;
        conn.consume(pos);
        if done && !replies.discarding() {
            // The ReadyForQuery was held back by the session: what was held
            // here goes out now, ahead of it.
            to.flush(io, conn, &mut replies).await?;
        }
        if done {
            // Anything still queued was sent by the client after the server
            // ended the unit (copy data after a failed COPY): the server
            // discards it, but it must arrive whole to keep the stream framed.
            if !pending.is_empty() || unflushed {
                conn.write(&pending)
                    .await
                    .map_err(|error| RelayError::Server {
                        error,
                        sent_to_client: replies.out.sent_to_client,
                    })?;
            }
            return Ok(replies.out);
        }
        let read_client = (replies.copy_in || !replies.complete) && pending.len() < MAX_PENDING;
        tokio::select! {
            r = conn.pump(&mut pending, &mut unflushed) => {
                r.map_err(|error| RelayError::Server {
                    error,
                    sent_to_client: replies.out.sent_to_client,
                })?;
            }
            f = io.read_frame(), if read_client => {
                let frame = match f {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        conn.mark_broken();
                        return Err(RelayError::Client(ClientError::Gone(
                            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client left mid-statement"),
                        )));
                    }
                    Err(e) => {
                        conn.mark_broken();
                        return Err(RelayError::Client(e));
                    }
                };
                client_message(frame, &mut replies, st, conn, &mut pending, exp)?;
            }
        }
    }
}

/// A client message that arrived while the unit runs: the rest of an open
/// unit, or copy data.
fn client_message(
    frame: Frame,
    replies: &mut Replies,
    st: &mut SessionState,
    conn: &mut ServerConn,
    pending: &mut BytesMut,
    exp: &mut Expect,
) -> Result<(), RelayError> {
    if replies.copy_in {
        if matches!(frame.tag, tag::COPY_DONE | tag::COPY_FAIL) {
            replies.copy_in = false;
        }
        pending.extend_from_slice(&frame.bytes);
        return Ok(());
    }
    // Copy messages arriving after the server ended the COPY with an error
    // are forwarded too: the server discards them until Sync, as it does for
    // a direct client.
    let late_copy = matches!(frame.tag, tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL);
    if !super::unit::is_unit_message(frame.tag) && !late_copy {
        conn.mark_broken();
        return Err(RelayError::Client(
            ProtocolError::UnexpectedTag(char::from(frame.tag)).into(),
        ));
    }
    if matches!(frame.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
        replies.complete = true;
    }
    stage(&frame, st, conn, pending, exp).map_err(|e| RelayError::Client(e.into()))
}

/// The server broke the protocol: its connection is done.
fn server_protocol(conn: &mut ServerConn, e: ProtocolError, replies: &Replies) -> RelayError {
    conn.mark_broken();
    RelayError::Server {
        error: conn.protocol(e),
        sent_to_client: replies.out.sent_to_client,
    }
}

/// A row or copy message at least this large is relayed as it arrives rather
/// than buffered whole: PostgreSQL may send up to 1 GiB in one message, and a
/// session must not hold that much (nor keep a buffer grown to it).
const STREAM_FROM: usize = 256 * 1024;

/// The message that begins at `pos` in the read buffer and has not fully
/// arrived, when it is to be streamed: a DataRow or CopyData of at least
/// [`STREAM_FROM`] bytes that goes to the client as it is (not pgsplit's own
/// query's, not an answer being discarded). Its tag and total length.
fn streamable(
    conn: &ServerConn,
    pos: usize,
    replies: &Replies,
    exp: &Expect,
) -> Option<(u8, usize)> {
    let (tag, total) = conn.partial_at(pos)?;
    (matches!(tag, tag::backend::DATA_ROW | tag::COPY_DATA)
        && total >= STREAM_FROM
        && replies.forwards_as_is(exp))
    .then_some((tag, total))
}

/// Relays the messages before `pos` (judged already), then the message at
/// `pos`, `total` bytes, as its bytes arrive. Leaves the read buffer at the
/// first byte after it. Memory: the read buffer as it is, not the message.
#[allow(clippy::too_many_arguments)]
async fn stream_message(
    io: &mut ClientIo,
    conn: &mut ServerConn,
    replies: &mut Replies,
    to: &mut Emit,
    exp: &mut Expect,
    pos: usize,
    tag: u8,
    total: usize,
) -> Result<(), RelayError> {
    // Judged as any row is (no body needed): an answer, forwarded.
    let step = {
        let (_, params) = conn.buffered_with_params(0..0);
        replies.on_message(tag, &[], exp, params)
    };
    if let Err(e) = step {
        return Err(server_protocol(conn, e, replies));
    }
    to.range(io, conn, replies, 0..pos).await?;
    to.flush(io, conn, replies).await?;
    replies.out.sent_to_client = true;
    conn.consume(pos);
    let mut left = total;
    loop {
        let n = conn.buffered_len().min(left);
        if n > 0 {
            if let Some(d) = &mut exp.digest {
                d.add(conn.buffered(0..n));
            }
            let r = io.write(conn.buffered(0..n)).await;
            client_write(r, conn)?;
            conn.consume(n);
            left -= n;
        }
        if left == 0 {
            return Ok(());
        }
        conn.fill().await.map_err(|error| RelayError::Server {
            error,
            sent_to_client: true,
        })?;
    }
}

/// Most bookkeeping replies held back for a retryable unit; beyond it they
/// are sent and the unit can no longer be retried.
const MAX_HELD: usize = 64 * 1024;

/// Where relayed bytes go: to the client, or held while the unit may still
/// be retried elsewhere and nothing but bookkeeping replies (ParseComplete,
/// BindComplete, descriptions) and notices has come, so that a replica dying
/// after them costs no client error.
struct Emit {
    held: BytesMut,
    mode: RelayMode,
}

impl Emit {
    /// Sends whatever is held back, now that the unit answered.
    async fn flush(
        &mut self,
        io: &mut ClientIo,
        conn: &mut ServerConn,
        replies: &mut Replies,
    ) -> Result<(), RelayError> {
        if self.held.is_empty() {
            return Ok(());
        }
        replies.out.sent_to_client = true;
        let r = io.write(&self.held).await;
        self.held.clear();
        client_write(r, conn)
    }

    /// Relays `range` of the server's read buffer.
    async fn range(
        &mut self,
        io: &mut ClientIo,
        conn: &mut ServerConn,
        replies: &mut Replies,
        range: std::ops::Range<usize>,
    ) -> Result<(), RelayError> {
        if range.is_empty() {
            return Ok(());
        }
        let bytes = conn.buffered(range);
        if self.mode.retry_conflict && !replies.replied {
            if self.held.len() + bytes.len() <= MAX_HELD {
                self.held.extend_from_slice(bytes);
                return Ok(());
            }
            replies.replied = true;
        }
        replies.out.sent_to_client |= replies.replied;
        let r = if self.held.is_empty() {
            io.write(bytes).await
        } else {
            self.held.extend_from_slice(bytes);
            let r = io.write(&self.held).await;
            self.held.clear();
            r
        };
        client_write(r, conn)
    }
}

fn client_write(r: Result<(), ClientError>, conn: &mut ServerConn) -> Result<(), RelayError> {
    r.map_err(|e| {
        // The server is mid-reply; its state is unknown once we stop reading.
        conn.mark_broken();
        RelayError::Client(e)
    })
}
