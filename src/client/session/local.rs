//! What pgsplit answers itself, without a server: its own routing setting,
//! Close-only units, the client's startup settings after `RESET ALL`, and a
//! unit that could not run.

use bytes::BytesMut;

use super::Session;
use crate::backend::ServerId;
use crate::client::ClientError;
use crate::client::unit::Unit;
use crate::protocol::{TxStatus, build, tag};
use crate::route::class::Kind;

impl Session {
    /// `SET pgsplit.route = ...` / `RESET pgsplit.route` sent alone as a simple
    /// query: pgsplit's own setting, answered here and never sent to a server
    /// (PostgreSQL would reject `= primary`, a reserved word). Inside a
    /// transaction it takes effect on commit, like a SET.
    pub(super) async fn set_route_locally(&mut self, unit: &Unit) -> Result<bool, ClientError> {
        let class = unit.class();
        let [frame] = unit.frames.as_slice() else {
            return Ok(false);
        };
        let Some(mode) = class.set_route else {
            return Ok(false);
        };
        if frame.tag != tag::QUERY || class.statements != 1 || class.kind != Kind::Session {
            return Ok(false);
        }
        let text = crate::protocol::fields::query_text(frame.body()).unwrap_or_default();
        let is_reset = String::from_utf8_lossy(text)
            .trim_start()
            .get(..5)
            .is_some_and(|w| w.eq_ignore_ascii_case("reset"));
        let mode = if is_reset { self.st.default_mode } else { mode };
        let status = match self.st.txn {
            // In a transaction no server has seen yet.
            None if self.opt.deferred() => {
                self.st.pending_mode = Some(mode);
                TxStatus::InTransaction
            }
            None => {
                self.st.mode = mode;
                TxStatus::Idle
            }
            Some(id) => {
                let failed = self
                    .conns
                    .get_mut(id)
                    .is_some_and(|h| h.conn.status() == TxStatus::Failed);
                if failed {
                    let mut msg = BytesMut::new();
                    msg.extend_from_slice(&build::error_response(
                        build::Severity::Error,
                        crate::sqlstate::IN_FAILED_TRANSACTION,
                        "current transaction is aborted, commands ignored until end of transaction block",
                    ));
                    msg.extend_from_slice(&build::ready_for_query(TxStatus::Failed));
                    self.io.write(&msg).await?;
                    return Ok(true);
                }
                self.st.pending_mode = Some(mode);
                TxStatus::InTransaction
            }
        };
        let tag = if is_reset { "RESET" } else { "SET" };
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&build::command_complete(tag));
        msg.extend_from_slice(&build::ready_for_query(status));
        self.io.write(&msg).await?;
        Ok(true)
    }

    /// After `RESET ALL` / `DISCARD ALL` on the connection to `id`: puts the
    /// client's startup parameters back (PostgreSQL resets to them, not to the
    /// server defaults) and tells the client the values it now has.
    pub(super) async fn reapply_startup(&mut self, id: ServerId) -> Result<(), ClientError> {
        if self.st.startup.is_empty() {
            return Ok(());
        }
        let mut sql = Vec::new();
        for entry in &self.st.startup {
            if !sql.is_empty() {
                sql.extend_from_slice(b"; ");
            }
            sql.extend_from_slice(&entry.sql);
        }
        let conn = &mut self.conns.held(id)?.conn;
        let before = conn.params().clone();
        conn.run_internal(&sql).await??;
        let mut msg = BytesMut::new();
        for (k, v) in conn.params() {
            if before.get(k) != Some(v) {
                msg.extend_from_slice(&build::parameter_status(k, v));
            }
        }
        self.io.write(&msg).await
    }

    /// Transaction pooling: `DEALLOCATE name` sent alone as a simple query,
    /// for a statement the client prepared with a Parse (psycopg drops its
    /// prepared statements so). On the server the statement is shared under
    /// another name (see `relay`); the client forgets it, as
    /// a Close would do. Inside a failed transaction the server answers.
    pub(super) async fn deallocate_locally(&mut self, unit: &Unit) -> Result<bool, ClientError> {
        let ([frame], Some(_)) = (unit.frames.as_slice(), self.st.statement_cache) else {
            return Ok(false);
        };
        if frame.tag != tag::QUERY {
            return Ok(false);
        }
        let text = crate::protocol::fields::query_text(frame.body())?;
        let Some(name) = deallocate_name(text) else {
            return Ok(false);
        };
        let status = match self.st.txn {
            None if self.opt.deferred() => TxStatus::InTransaction,
            None => TxStatus::Idle,
            Some(id) => match self.conns.get_mut(id).map(|h| h.conn.status()) {
                Some(TxStatus::InTransaction) => TxStatus::InTransaction,
                _ => return Ok(false),
            },
        };
        if self.st.statements.remove(name.as_slice()).is_none() {
            return Ok(false);
        }
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&build::command_complete("DEALLOCATE"));
        msg.extend_from_slice(&build::ready_for_query(status));
        self.io.write(&msg).await?;
        Ok(true)
    }

    /// A unit of only Close/Sync/Flush outside a transaction (drivers send one
    /// whenever they drop a prepared statement) needs no server: the replies
    /// are composed here, and the statement is closed on each connection that
    /// has it ahead of that connection's next unit. This keeps such units
    /// working while there is no primary, and saves a round trip.
    pub(super) async fn answer_closes_locally(&mut self, unit: &Unit) -> Result<bool, ClientError> {
        let statement_free = unit
            .frames
            .iter()
            .all(|f| matches!(f.tag, tag::CLOSE | tag::SYNC | tag::FLUSH));
        if !unit.complete || self.st.txn.is_some() || !statement_free {
            return Ok(false);
        }
        let status = if self.opt.deferred() {
            TxStatus::InTransaction
        } else {
            TxStatus::Idle
        };
        let mut reply = BytesMut::new();
        for frame in &unit.frames {
            match frame.tag {
                tag::CLOSE => {
                    let (kind, name) = crate::protocol::fields::target(frame.body(), "Close")?;
                    if kind == b'S' {
                        for held in self.conns.iter_mut() {
                            held.conn.statements().close_later(name);
                        }
                    }
                    reply.extend_from_slice(&build::close_complete());
                }
                tag::SYNC => reply.extend_from_slice(&build::ready_for_query(status)),
                _ => {}
            }
        }
        self.io.write(&reply).await?;
        Ok(true)
    }

    /// A read's server connection was lost after part of its answer reached
    /// the client, so it cannot run again: the client gets the error and
    /// the session goes on. A transaction it ran in is gone with the
    /// connection; the client is told it failed (it will roll back).
    pub(super) async fn fail_lost_read(
        &mut self,
        error: crate::backend::BackendError,
        in_txn: bool,
    ) -> Result<(), ClientError> {
        let e = ClientError::Backend(error);
        tracing::warn!(code = e.sqlstate(), error = %e, "read lost its server mid-answer");
        self.ctx.metrics.error(e.sqlstate(), e.kind());
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&build::error_response(
            build::Severity::Error,
            e.sqlstate(),
            &e.client_message(),
        ));
        let status = if in_txn {
            TxStatus::Failed
        } else {
            TxStatus::Idle
        };
        msg.extend_from_slice(&build::ready_for_query(status));
        self.io.write(&msg).await
    }

    /// Tells the client a unit could not run and keeps the session going. An
    /// unfinished extended unit is drained to its Sync first, as a server would.
    pub(super) async fn fail_unit(
        &mut self,
        unit: &Unit,
        e: &ClientError,
    ) -> Result<(), ClientError> {
        tracing::warn!(code = e.sqlstate(), error = %e, "statement failed in pgsplit");
        self.ctx.metrics.error(e.sqlstate(), e.kind());
        // The unit's Parses never ran: the client is told so, and its later
        // Binds must fail as a server's would, not find them registered.
        for frame in unit.frames.iter().filter(|f| f.tag == tag::PARSE) {
            if let Ok((name, _)) = crate::protocol::fields::parse(frame.body()) {
                self.st.forget_parse(name, &frame.bytes);
            }
        }
        if !unit.complete {
            while let Some(f) = self.io.read_frame().await? {
                if matches!(f.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
                    break;
                }
            }
        }
        self.opt.unit_failed();
        let status = if self.st.txn.is_some() || self.opt.deferred() {
            TxStatus::Failed
        } else {
            TxStatus::Idle
        };
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&build::error_response(
            build::Severity::Error,
            e.sqlstate(),
            &e.client_message(),
        ));
        msg.extend_from_slice(&build::ready_for_query(status));
        self.io.write(&msg).await
    }
}

/// The statement name of `DEALLOCATE [PREPARE] name` (one statement, an
/// optional `;`), folded as PostgreSQL folds it; `None` for anything else,
/// `DEALLOCATE ALL` included.
fn deallocate_name(text: &[u8]) -> Option<Vec<u8>> {
    // Every simple Query of a session with the statement cache passes here:
    // anything else is turned away before a byte is copied.
    let start = text.trim_ascii_start();
    if !start
        .get(..b"deallocate".len())
        .is_some_and(|w| w.eq_ignore_ascii_case(b"deallocate"))
    {
        return None;
    }
    let mut rest = start.trim_ascii_end();
    rest = rest.strip_suffix(b";").unwrap_or(rest).trim_ascii_end();
    let word = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let r = rest.trim_ascii_start();
        if let Some(quoted) = r.strip_prefix(b"\"") {
            // A quoted name: `""` stands for one quote.
            let mut name = Vec::new();
            let mut i = 0;
            loop {
                match (quoted.get(i), quoted.get(i + 1)) {
                    (Some(b'"'), Some(b'"')) => {
                        name.push(b'"');
                        i += 2;
                    }
                    (Some(b'"'), _) => break,
                    (Some(&c), _) => {
                        name.push(c);
                        i += 1;
                    }
                    (None, _) => return None,
                }
            }
            *rest = quoted.get(i + 1..).unwrap_or_default();
            return (!name.is_empty()).then_some(name);
        }
        let end = r
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$' || *c >= 0x80))
            .unwrap_or(r.len());
        let (w, after) = r.split_at(end);
        *rest = after;
        (!w.is_empty()).then(|| w.to_ascii_lowercase())
    };
    if word(&mut rest)?.as_slice() != b"deallocate" {
        return None;
    }
    let before = rest;
    let mut name = word(&mut rest)?;
    let quoted = before.trim_ascii_start().starts_with(b"\"");
    if !quoted && name == b"prepare" && !rest.trim_ascii().is_empty() {
        name = word(&mut rest)?;
    } else if !quoted && name == b"all" {
        return None;
    }
    if !rest.trim_ascii().is_empty() {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::deallocate_name;

    #[test]
    fn deallocate_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("DEALLOCATE _pg3_0", Some("_pg3_0")),
            ("deallocate prepare S1;", Some("s1")),
            ("  DEALLOCATE \"My \"\"x\"\"\" ; ", Some("My \"x\"")),
            ("DEALLOCATE PREPARE \"ALL\"", Some("ALL")),
            ("DEALLOCATE prepare", Some("prepare")),
            ("DEALLOCATE \"prepare\" x", None),
            ("DEALLOCATE ALL", None),
            ("DEALLOCATE PREPARE ALL", Some("all")),
            ("DEALLOCATE", None),
            ("DEALLOCATE a; SELECT 1", None),
            ("DEALLOCATE a b", None),
            ("DEALLOCATE \"unterminated", None),
            ("SELECT 1", None),
            ("DEALLOCATEx a", None),
        ];
        for (text, want) in cases {
            let got = deallocate_name(text.as_bytes());
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{text}");
        }
    }
}
