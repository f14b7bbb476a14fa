//! The reply filter: what the relay does with each message a server sends for
//! a unit (forward it, swallow it, or keep the unit's ReadyForQuery for the
//! session), and what the messages say about the unit ([`Outcome`]). Pure:
//! message in, decision out; the byte moving is the relay's.

use std::collections::HashMap;

use bytes::BytesMut;

use super::relay::Expect;
use crate::protocol::{ProtocolError, TxStatus, fields, tag};
use crate::route::outcome::{Retry, retry_on, tag_never_writes};
use crate::route::plan::RelayMode;
use crate::server::Lsn;
use crate::sqlstate;

/// What the server said about the unit.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
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
    pub probe: Option<Lsn>,
    /// The settings query pgsplit sent ahead of the unit failed: the unit's
    /// replies were discarded (`retry_conflict` is set too), and the
    /// connection cannot serve this session.
    pub setup_failed: bool,
    /// The digest of the unit's answer, when one was asked for (see
    /// [`super::digest`]).
    pub digest: Option<super::digest::Sealed>,
    /// With `hold_ready`: the unit's last replies before its ReadyForQuery,
    /// not sent yet, so that the session sends them with the ReadyForQuery
    /// in one write once the floor is recorded.
    pub tail: BytesMut,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// It goes to the client (or waits while the unit may still be retried,
    /// see [`Replies::replied`]).
    Forward,
    /// It never reaches the client.
    Swallow,
    /// The unit's ReadyForQuery, kept for the session to send once it has
    /// recorded what the unit did; the replies before it travel with it.
    HoldReady,
}

/// One message's verdict, and whether the unit's replies are over with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub action: Action,
    pub done: bool,
}

/// The filter's state over one unit's replies.
#[derive(Debug)]
pub(crate) struct Replies {
    mode: RelayMode,
    pub out: Outcome,
    /// After the unit's ReadyForQuery, while the pipelined floor query's
    /// replies arrive.
    probing: bool,
    /// A retryable unit failed: nothing more of it reaches the client.
    discarding: bool,
    /// The server is copying in: client messages go to it as they come.
    pub copy_in: bool,
    /// The client has sent the unit's end (Sync, Query, FunctionCall); false
    /// while it still sends parts of it.
    pub complete: bool,
    /// A real reply (not bookkeeping, not a notice) went or goes to the
    /// client: the unit can no longer run elsewhere.
    pub replied: bool,
}

/// ParameterStatus values that describe the server itself rather than the
/// session; the client keeps the primary's view.
fn server_only_param(name: &[u8]) -> bool {
    name == b"in_hot_standby" || name == b"default_transaction_read_only"
}

impl Replies {
    pub(crate) fn new(mode: RelayMode) -> Self {
        Replies {
            mode,
            out: Outcome {
                status: TxStatus::Idle,
                error: None,
                rolled_back: false,
                sent_to_client: false,
                retry_conflict: false,
                wrote: false,
                probe: None,
                setup_failed: false,
                digest: None,
                tail: BytesMut::new(),
            },
            probing: false,
            discarding: false,
            copy_in: false,
            complete: !mode.open,
            replied: false,
        }
    }

    /// Whether the unit failed where it may run again: its replies are
    /// thrown away.
    pub(crate) fn discarding(&self) -> bool {
        self.discarding
    }

    /// Whether a row or copy message would go to the client untouched now:
    /// not part of pgsplit's settings or floor query, not discarded. (Such a
    /// message may be streamed before it has fully arrived.)
    pub(crate) fn forwards_as_is(&self, exp: &Expect) -> bool {
        exp.setup == 0 && !self.probing && !self.discarding
    }

    /// Judges the server message `tag`/`body`, noting what it says in the
    /// outcome, in `exp` (replies owed for messages pgsplit added) and in
    /// `params` (the connection's reported parameters).
    #[inline]
    pub(crate) fn on_message(
        &mut self,
        tag: u8,
        body: &[u8],
        exp: &mut Expect,
        params: &mut HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Step, ProtocolError> {
        if exp.setup > 0 {
            // pgsplit's settings query ahead of the unit.
            match tag {
                tag::backend::PARAMETER_STATUS => {
                    if let Ok((k, v)) = fields::parameter_status(body) {
                        params.insert(k.to_vec(), v.to_vec());
                    }
                }
                tag::backend::ERROR_RESPONSE => {
                    // The unit runs anyway, under the wrong settings: none
                    // of its answer may reach the client.
                    self.out.setup_failed = true;
                    self.out.retry_conflict = true;
                    self.discarding = true;
                }
                tag::backend::READY_FOR_QUERY => exp.setup -= 1,
                _ => {}
            }
            return Ok(self.swallow(false));
        }
        if self.probing {
            // pgsplit's own query: nothing of it is the client's.
            match tag {
                tag::backend::DATA_ROW => self.out.probe = probe_value(body),
                tag::backend::READY_FOR_QUERY => return Ok(self.swallow(true)),
                _ => {}
            }
            return Ok(self.swallow(false));
        }
        let mut swallow = false;
        let mut done = false;
        match tag {
            tag::backend::READY_FOR_QUERY => {
                self.out.status = fields::ready_for_query(body)?;
                if self.mode.floor_probe {
                    self.probing = true;
                } else {
                    done = true;
                }
                swallow = self.mode.hold_ready || self.discarding || self.mode.floor_probe;
            }
            tag::backend::ERROR_RESPONSE => {
                if self.out.error.is_none() {
                    let code = fields::error_fields(body)
                        .map(|f| f.code_str().to_owned())
                        .unwrap_or_else(|_| sqlstate::INTERNAL_ERROR.into());
                    if self.mode.retry_conflict && !self.replied {
                        match retry_on(&code) {
                            Retry::Conflict => {
                                self.discarding = true;
                                self.out.retry_conflict = true;
                            }
                            // Its connection closes next; the read runs
                            // again then.
                            Retry::ServerEnding => self.discarding = true,
                            Retry::No => {}
                        }
                    }
                    self.out.error = Some(code);
                }
                self.copy_in = false;
            }
            tag::backend::COMMAND_COMPLETE => {
                let t = fields::command_tag(body).unwrap_or_default();
                self.out.rolled_back = t == b"ROLLBACK";
                self.out.wrote |= !tag_never_writes(t);
            }
            tag::backend::PARAMETER_STATUS => {
                if let Ok((k, v)) = fields::parameter_status(body) {
                    swallow = server_only_param(k);
                    params.insert(k.to_vec(), v.to_vec());
                }
            }
            tag::backend::PARSE_COMPLETE => swallow = exp.parse_complete(),
            tag::backend::CLOSE_COMPLETE => swallow = exp.close_complete(),
            tag::backend::COPY_IN_RESPONSE => {
                self.copy_in = true;
                // After an extended-protocol COPY the server waits for
                // another Sync (the one sent with the unit is ignored
                // during copy-in), so keep reading the client until then.
                if self.mode.extended {
                    self.complete = false;
                }
            }
            _ => {}
        }
        swallow |= self.discarding;
        // Notices, notifications and parameter changes are not a reply to
        // the unit: a read may still be retried elsewhere after them.
        let asynchronous = matches!(
            tag,
            tag::backend::NOTICE_RESPONSE | tag::backend::PARAMETER_STATUS | b'A'
        );
        let bookkeeping = matches!(
            tag,
            tag::backend::PARSE_COMPLETE
                | tag::backend::BIND_COMPLETE
                | tag::backend::CLOSE_COMPLETE
                | tag::backend::NO_DATA
                | tag::backend::PARAMETER_DESCRIPTION
                | tag::backend::ROW_DESCRIPTION
        );
        // A retryable unit's bookkeeping replies are held back: not an
        // answer yet.
        let held_back = self.mode.retry_conflict && bookkeeping;
        if !(swallow || asynchronous || held_back) {
            self.replied = true;
        }
        let action = if !swallow {
            Action::Forward
        } else if self.mode.hold_ready && !self.discarding && tag == tag::backend::READY_FOR_QUERY {
            Action::HoldReady
        } else {
            Action::Swallow
        };
        Ok(Step { action, done })
    }

    fn swallow(&self, done: bool) -> Step {
        Step {
            action: Action::Swallow,
            done,
        }
    }
}

/// The value of the floor query's one-column DataRow, read in place.
fn probe_value(body: &[u8]) -> Option<Lsn> {
    let mut r = fields::Reader::new(body, "DataRow");
    if r.i16().ok()? != 1 {
        return None;
    }
    let len = usize::try_from(r.i32().ok()?).ok()?;
    let text = r.take(len).ok()?;
    r.finish().ok()?;
    Lsn::parse_bytes(text)
}

#[cfg(test)]
#[path = "replies_tests.rs"]
mod tests;
