//! Forwarding a unit to a server connection and its replies back to the client.
//!
//! Staging rewrites nothing the client sent; it only *adds* messages: a Parse
//! for a named statement the connection has not seen (prepared lazily where it
//! runs), and a Close before re-using a name the connection holds with another
//! text. Their replies (ParseComplete, CloseComplete) are swallowed on the way
//! back, matched by order: each Parse yields exactly one ParseComplete unless an
//! error ends the unit early.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

pub(crate) use super::replies::Outcome;
use super::replies::{Action, Replies};
use super::state::SessionState;
use super::{ClientError, ClientIo};
use crate::backend::{BackendError, ServerConn};
use crate::protocol::{Frame, ProtocolError, build, fields, tag};
pub(crate) use crate::route::plan::RelayMode;

#[derive(Debug)]
struct ParseExpect {
    /// `None` for the unnamed statement.
    name: Option<Bytes>,
    hash: u64,
    injected: bool,
}

/// Replies owed for messages pgsplit added or must account for.
#[derive(Debug, Default)]
pub(crate) struct Expect {
    parse: VecDeque<ParseExpect>,
    close: VecDeque<bool>,
}

impl Expect {
    /// A ParseComplete arrived: whether it answers a Parse pgsplit added.
    pub(crate) fn parse_complete(&mut self) -> bool {
        self.parse.pop_front().is_some_and(|p| p.injected)
    }

    /// A CloseComplete arrived: whether it answers a Close pgsplit added.
    pub(crate) fn close_complete(&mut self) -> bool {
        self.close.pop_front().unwrap_or(false)
    }

    /// Owes replies to Parses and Closes, each added by pgsplit or not.
    #[cfg(test)]
    pub(crate) fn owing(parses: &[bool], closes: &[bool]) -> Expect {
        Expect {
            parse: parses
                .iter()
                .map(|&injected| ParseExpect {
                    name: None,
                    hash: 0,
                    injected,
                })
                .collect(),
            close: closes.iter().copied().collect(),
        }
    }
}

/// Closes, ahead of a unit, the statements the client closed earlier while
/// `conn` was not in use.
pub(crate) fn stage_pending_closes(conn: &mut ServerConn, out: &mut BytesMut, exp: &mut Expect) {
    for name in conn.statements().take_pending_closes() {
        out.extend_from_slice(&build::close_statement(&name));
        exp.close.push_back(true);
    }
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
                .map_or_else(|| super::state::hash_bytes(body), |s| s.hash);
            let name = (!name.is_empty()).then(|| frame.bytes.slice_ref(name));
            if let Some(name) = &name
                && conn.statements().closing(name)
            {
                // The name is taken (by another text, or the same one
                // parsed again): the server needs it free first.
                out.extend_from_slice(&build::close_statement(name));
                exp.close.push_back(true);
            }
            conn.statements().parsing(name.clone(), hash);
            exp.parse.push_back(ParseExpect {
                name,
                hash,
                injected: false,
            });
        }
        tag::BIND => {
            let (_, stmt) = fields::bind(body)?;
            ensure_prepared(stmt, st, conn, out, exp);
        }
        tag::DESCRIBE => {
            let (kind, name) = fields::target(body, "Describe")?;
            if kind == b'S' {
                ensure_prepared(name, st, conn, out, exp);
            }
        }
        tag::CLOSE => {
            let (kind, name) = fields::target(body, "Close")?;
            if kind == b'S' {
                conn.statements().closing(name);
            }
            exp.close.push_back(false);
        }
        tag::QUERY => {
            conn.statements().closing(b"");
        }
        _ => {}
    }
    out.extend_from_slice(&frame.bytes);
    Ok(())
}

/// Prepares `name` on `conn` from the session's registry when the connection
/// lacks it (or holds an older statement under that name).
fn ensure_prepared(
    name: &[u8],
    st: &SessionState,
    conn: &mut ServerConn,
    out: &mut BytesMut,
    exp: &mut Expect,
) {
    let Some(stmt) = st.statement(name) else {
        // The server holds an unnamed statement this client does not have
        // (it ran a simple Query or a Close since, or it was the previous
        // client's, see `Session::release`): close it, so that the client
        // gets the error a connection of its own would give.
        if name.is_empty() && conn.statements().closing(b"") {
            out.extend_from_slice(&build::close_statement(b""));
            exp.close.push_back(true);
        }
        return;
    };
    if conn.statements().has(name, stmt.hash) {
        return;
    }
    let key = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
    if key.is_some() && conn.statements().closing(name) {
        // Another text holds the name here.
        out.extend_from_slice(&build::close_statement(name));
        exp.close.push_back(true);
    }
    conn.statements().parsing(key.clone(), stmt.hash);
    exp.parse.push_back(ParseExpect {
        name: key,
        hash: stmt.hash,
        injected: true,
    });
    out.extend_from_slice(&stmt.parse);
}

/// Undoes optimistic registry entries for Parses that never completed (an
/// error ended the unit first): the connection does not have that statement,
/// and, for the client's own Parse, the session does not either unless
/// `final_run` is false (the unit runs again elsewhere, Parses included).
pub(crate) fn settle(
    exp: &mut Expect,
    st: &mut SessionState,
    conn: &mut ServerConn,
    final_run: bool,
) {
    for pe in exp.parse.drain(..) {
        conn.statements().parse_failed(pe.name.as_ref(), pe.hash);
        match pe.name {
            _ if !final_run => {}
            None => {
                if !pe.injected && st.unnamed.as_ref().is_some_and(|s| s.hash == pe.hash) {
                    st.unnamed = None;
                }
            }
            Some(name) => {
                if !pe.injected && st.statements.get(&name).is_some_and(|s| s.hash == pe.hash) {
                    st.statements.remove(&name);
                }
            }
        }
    }
    exp.close.clear();
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
                Ok(None) => break,
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
        if done && !replies.discarding() && !to.held.is_empty() {
            // The ReadyForQuery was held back by the session: what was held
            // here goes out now, ahead of it.
            replies.out.sent_to_client = true;
            let r = io.write(&to.held).await;
            client_write(r, conn)?;
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
