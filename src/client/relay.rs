//! Forwarding a unit to a server connection and its replies back to the client.
//!
//! Staging rewrites nothing the client sent; it only *adds* messages: a Parse
//! for a named statement the connection has not seen (prepared lazily where it
//! runs), and a Close before re-using a name the connection holds with another
//! text. Their replies (ParseComplete, CloseComplete) are swallowed on the way
//! back, matched by order: each Parse yields exactly one ParseComplete unless an
//! error ends the unit early.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::state::SessionState;
use super::{ClientError, ClientIo};
use crate::backend::conn::MAX_SERVER_MESSAGE;
use crate::backend::{BackendError, ServerConn};
use crate::protocol::{Frame, ProtocolError, TxStatus, build, fields, peek_frame, tag};

#[derive(Debug)]
struct ParseExpect {
    /// `None` for the unnamed statement.
    name: Option<Bytes>,
    hash: u64,
    injected: bool,
}

/// Replies owed for messages pgsplit added or must account for.
#[derive(Debug, Default)]
pub struct Expect {
    parse: VecDeque<ParseExpect>,
    close: VecDeque<bool>,
}

/// Closes, ahead of a unit, the statements the client closed earlier while
/// `conn` was not in use.
pub fn stage_pending_closes(conn: &mut ServerConn, out: &mut BytesMut, exp: &mut Expect) {
    for name in conn.pending_close.drain(..) {
        out.extend_from_slice(&build::close_statement(&name));
        exp.close.push_back(true);
    }
}

/// Appends `frame` to `out` for `conn`, adding what the connection lacks.
pub fn stage(
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
            if name.is_empty() {
                conn.unnamed = Some(hash);
                exp.parse.push_back(ParseExpect {
                    name: None,
                    hash,
                    injected: false,
                });
            } else {
                let name = frame.bytes.slice_ref(name);
                if conn.prepared.remove(&name).is_some() {
                    out.extend_from_slice(&build::close_statement(&name));
                    exp.close.push_back(true);
                }
                conn.prepared.insert(name.clone(), hash);
                exp.parse.push_back(ParseExpect {
                    name: Some(name),
                    hash,
                    injected: false,
                });
            }
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
                if name.is_empty() {
                    conn.unnamed = None;
                } else {
                    conn.prepared.remove(name);
                }
            }
            exp.close.push_back(false);
        }
        tag::QUERY => conn.unnamed = None,
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
        if name.is_empty() && conn.unnamed.take().is_some() {
            out.extend_from_slice(&build::close_statement(b""));
            exp.close.push_back(true);
        }
        return;
    };
    if name.is_empty() {
        if conn.unnamed == Some(stmt.hash) {
            return;
        }
        conn.unnamed = Some(stmt.hash);
        exp.parse.push_back(ParseExpect {
            name: None,
            hash: stmt.hash,
            injected: true,
        });
    } else {
        match conn.prepared.get(name) {
            Some(h) if *h == stmt.hash => return,
            Some(_) => {
                out.extend_from_slice(&build::close_statement(name));
                exp.close.push_back(true);
            }
            None => {}
        }
        let key = Bytes::copy_from_slice(name);
        conn.prepared.insert(key.clone(), stmt.hash);
        exp.parse.push_back(ParseExpect {
            name: Some(key),
            hash: stmt.hash,
            injected: true,
        });
    }
    out.extend_from_slice(&stmt.parse);
}

/// Undoes optimistic registry entries for Parses that never completed (an
/// error ended the unit first): neither the connection nor, for the client's
/// own Parse, the session has that statement.
pub fn settle(exp: &mut Expect, st: &mut SessionState, conn: &mut ServerConn) {
    for pe in exp.parse.drain(..) {
        match pe.name {
            None => {
                if conn.unnamed == Some(pe.hash) {
                    conn.unnamed = None;
                }
                if !pe.injected && st.unnamed.as_ref().is_some_and(|s| s.hash == pe.hash) {
                    st.unnamed = None;
                }
            }
            Some(name) => {
                if conn.prepared.get(&name) == Some(&pe.hash) {
                    conn.prepared.remove(&name);
                }
                if !pe.injected && st.statements.get(&name).is_some_and(|s| s.hash == pe.hash) {
                    st.statements.remove(&name);
                }
            }
        }
    }
    exp.close.clear();
}

/// What the server said about the unit.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: TxStatus,
    /// SQLSTATE of the first ErrorResponse, if any.
    pub error: Option<String>,
    /// The last CommandComplete tag was ROLLBACK (a transaction ended without
    /// committing, including a COMMIT of a failed transaction).
    pub rolled_back: bool,
    pub sent_to_client: bool,
    /// The unit failed on a replica with a recovery conflict before any reply
    /// reached the client; everything was discarded and it may run elsewhere.
    pub retry_conflict: bool,
    /// Some command completed with a tag that may mean it wrote (anything but
    /// SHOW, SET, BEGIN, COMMIT, LISTEN, FETCH and the like).
    pub wrote: bool,
    /// The answer of the floor query pipelined behind the unit
    /// ([`RelayMode::floor_probe`]): the primary's WAL insert position right
    /// after the unit, `None` if it did not answer one.
    pub probe: Option<crate::server::Lsn>,
    /// With `hold_ready`: the unit's last replies before its ReadyForQuery,
    /// not sent yet, so that the session sends them with the ReadyForQuery
    /// in one write once the floor is recorded.
    pub tail: BytesMut,
}

/// Command tags of statements that never write, so a unit made only of them
/// leaves no read-your-writes floor. SELECT is not here: a SELECT sent to the
/// primary may call a function that writes.
fn tag_never_writes(tag: &[u8]) -> bool {
    const NEVER: &[&[u8]] = &[
        b"SHOW",
        b"SET",
        b"RESET",
        b"BEGIN",
        b"START TRANSACTION",
        b"COMMIT",
        b"ROLLBACK",
        b"SAVEPOINT",
        b"RELEASE",
        b"LISTEN",
        b"UNLISTEN",
        b"DECLARE CURSOR",
        b"FETCH",
        b"MOVE",
        b"CLOSE CURSOR",
        b"CLOSE CURSOR ALL",
        b"DEALLOCATE",
        b"DEALLOCATE ALL",
        b"PREPARE",
        b"DISCARD ALL",
        b"DISCARD PLANS",
        b"DISCARD SEQUENCES",
        b"DISCARD TEMP",
    ];
    // "FETCH 5", "MOVE 2": compare the words before a trailing count.
    let words = match tag.iter().rposition(|b| *b == b' ') {
        Some(i) if tag[i + 1..].iter().all(u8::is_ascii_digit) && i + 1 < tag.len() => &tag[..i],
        _ => tag,
    };
    NEVER.contains(&words)
}

/// How the relay treats the end and the errors of a unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayMode {
    /// The unit is still open (sent on Flush): read client messages until Sync.
    pub open: bool,
    /// Extended protocol (affects COPY, which then needs another Sync).
    pub extended: bool,
    /// Do not forward the final ReadyForQuery: the session sends it itself once
    /// it has recorded what the unit did (read-your-writes floor).
    pub hold_ready: bool,
    /// The floor query (`floor_probe::SQL`) follows the unit in the same
    /// flight: its replies, after the unit's ReadyForQuery, are read here and
    /// never reach the client. Needs `hold_ready`.
    pub floor_probe: bool,
    /// A recovery conflict (40001) before the first reply may be retried.
    pub retry_conflict: bool,
}

pub enum RelayError {
    Client(ClientError),
    Server {
        error: BackendError,
        sent_to_client: bool,
    },
}

/// ParameterStatus values that describe the server itself rather than the
/// session; the client keeps the primary's view.
fn server_only_param(name: &[u8]) -> bool {
    name == b"in_hot_standby" || name == b"default_transaction_read_only"
}

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
pub async fn relay(
    io: &mut ClientIo,
    conn: &mut ServerConn,
    st: &mut SessionState,
    exp: &mut Expect,
    mode: RelayMode,
    mut pending: BytesMut,
) -> Result<Outcome, RelayError> {
    let mut unflushed = false;
    let mut out = Outcome {
        status: TxStatus::Idle,
        error: None,
        rolled_back: false,
        sent_to_client: false,
        retry_conflict: false,
        wrote: false,
        probe: None,
        tail: BytesMut::new(),
    };
    // After the unit's ReadyForQuery, while the pipelined floor query's
    // replies arrive.
    let mut probing = false;
    let mut complete = !mode.open;
    let extended = mode.extended;
    let mut copy_in = false;
    // Sends relayed bytes to the client, or holds back a retryable unit's
    // bookkeeping replies (see `Emit`).
    let mut to = Emit {
        held: BytesMut::new(),
        replied: false,
        mode,
    };
    let mut discarding = false;
    loop {
        let mut pos = 0;
        let mut start = 0;
        let mut done = false;
        while !done {
            let header = match peek_frame(&conn.rbuf[pos..], MAX_SERVER_MESSAGE) {
                Ok(Some(h)) if conn.rbuf.len() - pos >= h.total => h,
                Ok(_) => break,
                Err(e) => {
                    conn.broken = true;
                    return Err(RelayError::Server {
                        error: conn.protocol(e),
                        sent_to_client: out.sent_to_client,
                    });
                }
            };
            let end = pos + header.total;
            let body = &conn.rbuf[pos + 5..end];
            if probing {
                // pgsplit's own query: nothing of it is the client's.
                match header.tag {
                    tag::backend::DATA_ROW => {
                        out.probe = probe_value(body);
                    }
                    tag::backend::READY_FOR_QUERY => done = true,
                    _ => {}
                }
                to.range(io, conn, &mut out, start..pos).await?;
                start = end;
                pos = end;
                continue;
            }
            let mut swallow = false;
            match header.tag {
                tag::backend::READY_FOR_QUERY => match fields::ready_for_query(body) {
                    Ok(s) => {
                        out.status = s;
                        if mode.floor_probe {
                            probing = true;
                        } else {
                            done = true;
                        }
                        swallow = mode.hold_ready || discarding || mode.floor_probe;
                    }
                    Err(e) => {
                        conn.broken = true;
                        return Err(RelayError::Server {
                            error: conn.protocol(e),
                            sent_to_client: out.sent_to_client,
                        });
                    }
                },
                tag::backend::ERROR_RESPONSE => {
                    if out.error.is_none() {
                        let code = fields::error_fields(body)
                            .map(|f| f.code_str().to_owned())
                            .unwrap_or_else(|_| "XX000".into());
                        // "canceling statement due to conflict with recovery"
                        if mode.retry_conflict && !to.replied && code == "40001" {
                            discarding = true;
                            out.retry_conflict = true;
                        }
                        // The replica is shutting down or restarting: its
                        // connection closes next, and the read is retried.
                        if mode.retry_conflict
                            && !to.replied
                            && matches!(code.as_str(), "57P01" | "57P02" | "57P03")
                        {
                            discarding = true;
                        }
                        out.error = Some(code);
                    }
                    copy_in = false;
                }
                tag::backend::COMMAND_COMPLETE => {
                    let t = fields::command_tag(body).unwrap_or_default();
                    out.rolled_back = t == b"ROLLBACK";
                    out.wrote |= !tag_never_writes(t);
                }
                tag::backend::PARAMETER_STATUS => {
                    if let Ok((k, v)) = fields::parameter_status(body) {
                        swallow = server_only_param(k);
                        conn.params.insert(k.to_vec(), v.to_vec());
                    }
                }
                tag::backend::PARSE_COMPLETE => {
                    swallow = exp.parse.pop_front().is_some_and(|p| p.injected);
                }
                tag::backend::CLOSE_COMPLETE => {
                    swallow = exp.close.pop_front().unwrap_or(false);
                }
                tag::backend::COPY_IN_RESPONSE => {
                    copy_in = true;
                    // After an extended-protocol COPY the server waits for
                    // another Sync (the one sent with the unit is ignored
                    // during copy-in), so keep reading the client until then.
                    if extended {
                        complete = false;
                    }
                }
                _ => {}
            }
            swallow |= discarding;
            // Notices, notifications and parameter changes are not a reply to
            // the unit: a read may still be retried elsewhere after them.
            let asynchronous = matches!(
                header.tag,
                tag::backend::NOTICE_RESPONSE | tag::backend::PARAMETER_STATUS | b'A'
            );
            let bookkeeping = matches!(
                header.tag,
                tag::backend::PARSE_COMPLETE
                    | tag::backend::BIND_COMPLETE
                    | tag::backend::CLOSE_COMPLETE
                    | tag::backend::NO_DATA
                    | tag::backend::PARAMETER_DESCRIPTION
                    | tag::backend::ROW_DESCRIPTION
            );
            // A retryable unit's bookkeeping replies are held back (see
            // `Emit`): not an answer yet.
            let held_back = mode.retry_conflict && bookkeeping;
            if !(swallow || asynchronous || held_back) {
                to.replied = true;
            }
            if swallow {
                if mode.hold_ready
                    && !discarding
                    && header.tag == tag::backend::READY_FOR_QUERY
                    && to.held.is_empty()
                {
                    out.tail.extend_from_slice(&conn.rbuf[start..pos]);
                } else {
                    to.range(io, conn, &mut out, start..pos).await?;
                }
                start = end;
            }
            pos = end;
        }
        to.range(io, conn, &mut out, start..pos).await?;
        conn.rbuf.advance(pos);
        if done && !discarding && !to.held.is_empty() {
            // The ReadyForQuery was held back by the session: what was held
            // here goes out now, ahead of it.
            out.sent_to_client = true;
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
                        sent_to_client: out.sent_to_client,
                    })?;
            }
            return Ok(out);
        }
        let read_client = (copy_in || !complete) && pending.len() < MAX_PENDING;
        tokio::select! {
            r = conn.pump(&mut pending, &mut unflushed) => {
                r.map_err(|error| RelayError::Server {
                    error,
                    sent_to_client: out.sent_to_client,
                })?;
            }
            f = io.read_frame(), if read_client => {
                let frame = match f {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        conn.broken = true;
                        return Err(RelayError::Client(ClientError::Gone(
                            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client left mid-statement"),
                        )));
                    }
                    Err(e) => {
                        conn.broken = true;
                        return Err(RelayError::Client(e));
                    }
                };
                let buf = &mut pending;
                if copy_in {
                    if matches!(frame.tag, tag::COPY_DONE | tag::COPY_FAIL) {
                        copy_in = false;
                    }
                    buf.extend_from_slice(&frame.bytes);
                } else {
                    // Copy messages arriving after the server ended the COPY
                    // with an error are forwarded too: the server discards
                    // them until Sync, as it does for a direct client.
                    let late_copy =
                        matches!(frame.tag, tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL);
                    if !super::unit::is_unit_message(frame.tag) && !late_copy {
                        conn.broken = true;
                        return Err(RelayError::Client(
                            ProtocolError::UnexpectedTag(char::from(frame.tag)).into(),
                        ));
                    }
                    if matches!(frame.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
                        complete = true;
                    }
                    stage(&frame, st, conn, buf, exp)
                        .map_err(|e| RelayError::Client(e.into()))?;
                }
            }
        }
    }
}

/// The value of the floor query's one-column DataRow.
fn probe_value(body: &[u8]) -> Option<crate::server::Lsn> {
    let row = crate::backend::conn::parse_text_row(body).ok()?;
    match row.as_slice() {
        [Some(text)] => crate::server::Lsn::parse(text),
        _ => None,
    }
}

/// Most bookkeeping replies held back for a retryable unit; beyond it they
/// are sent and the unit can no longer be retried.
const MAX_HELD: usize = 64 * 1024;

/// Where relayed bytes go: to the client, or held while the unit may still
/// be retried elsewhere and nothing but bookkeeping replies (ParseComplete,
/// BindComplete, descriptions) and notices has come, so that a replica dying
/// after them costs no client error. `replied`: a real reply went (or goes)
/// to the client; the unit can no longer be retried.
struct Emit {
    held: BytesMut,
    replied: bool,
    mode: RelayMode,
}

impl Emit {
    /// Relays `range` of the server's read buffer.
    async fn range(
        &mut self,
        io: &mut ClientIo,
        conn: &mut ServerConn,
        out: &mut Outcome,
        range: std::ops::Range<usize>,
    ) -> Result<(), RelayError> {
        if range.is_empty() {
            return Ok(());
        }
        let bytes = &conn.rbuf[range];
        if self.mode.retry_conflict && !self.replied {
            if self.held.len() + bytes.len() <= MAX_HELD {
                self.held.extend_from_slice(bytes);
                return Ok(());
            }
            self.replied = true;
        }
        out.sent_to_client |= self.replied;
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
        conn.broken = true;
        RelayError::Client(e)
    })
}

#[cfg(test)]
mod tests {
    use super::tag_never_writes;

    #[test]
    fn non_writing_tags() {
        for t in [
            "SHOW",
            "SET",
            "FETCH 10",
            "MOVE 0",
            "COMMIT",
            "LISTEN",
            "DISCARD ALL",
        ] {
            assert!(tag_never_writes(t.as_bytes()), "{t}");
        }
        for t in [
            "INSERT 0 1",
            "UPDATE 3",
            "SELECT 1",
            "CREATE TABLE",
            "COPY 5",
            "EXPLAIN",
            "",
        ] {
            assert!(!tag_never_writes(t.as_bytes()), "{t}");
        }
    }
}
