//! Optimistic transactions, the session's side: the deferred BEGIN, the
//! record of a transaction running on a replica, and its move to the
//! primary, replaying the record there and comparing what it answers. The
//! policy (which unit takes which step) is `route::optimistic`.

use std::hash::RandomState;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::Session;
use crate::backend::health::HealthSnapshot;
use crate::backend::{BackendError, ServerConn};
use crate::client::ClientError;
use crate::client::digest::Digest;
use crate::client::relay::{self, Expect, Outcome};
use crate::client::state::{SessionState, Statement};
use crate::client::unit::{Unit, is_unit_message};
use crate::config::Config;
use crate::metrics::TxnOutcome;
use crate::protocol::{Frame, TxStatus, build, fields, tag};
use crate::route::class::{Class, Isolation, RouteMode};
use crate::route::optimistic::{self as policy, Allowed, Phase, Step, UnitFacts};

/// A unit an optimistic transaction ran on a replica: what the client sent,
/// the digest of what it received, and the prepared statements it named as
/// they were then (the client may close or redefine them before a replay).
struct Recorded {
    frames: Vec<Frame>,
    digest: u64,
    /// Columns the digest leaves out, per statement result
    /// (`Class::unverified_columns`).
    masks: Vec<u64>,
    statements: Vec<(Bytes, Option<Statement>)>,
}

/// The statements `frames` name in Binds and statement Describes, as the
/// session has them now.
fn named_statements(frames: &[Frame], st: &SessionState) -> Vec<(Bytes, Option<Statement>)> {
    let mut named: Vec<(Bytes, Option<Statement>)> = Vec::new();
    for f in frames {
        let name = match f.tag {
            tag::BIND => fields::bind(f.body()).ok().map(|(_, stmt)| stmt),
            tag::DESCRIBE => match fields::target(f.body(), "Describe") {
                Ok((b'S', name)) => Some(name),
                _ => None,
            },
            _ => None,
        };
        if let Some(name) = name
            && !named.iter().any(|(n, _)| n.as_ref() == name)
        {
            named.push((f.bytes.slice_ref(name), st.statement(name).cloned()));
        }
    }
    named
}

/// Puts `stmt` under `name` in the session's registry (or removes the
/// name), returning what was there.
fn swap_statement(
    st: &mut SessionState,
    name: &Bytes,
    stmt: Option<Statement>,
) -> Option<Statement> {
    if name.is_empty() {
        std::mem::replace(&mut st.unnamed, stmt)
    } else {
        match stmt {
            Some(s) => st.statements.insert(name.clone(), s),
            None => st.statements.remove(name),
        }
    }
}

/// Where the session's optimistic transaction stands.
#[derive(Default)]
enum Txn {
    #[default]
    Off,
    /// The client's BEGIN was answered here and sent nowhere.
    Deferred { begin: Bytes, isolation: Isolation },
    /// pgsplit failed the first statement after a deferred BEGIN (no
    /// primary, say): the client's transaction is failed, with nothing on
    /// any server, until it ends it.
    DeferredFailed,
    /// Open on the replica `st.txn` names. `begin`: the client's BEGIN,
    /// `None` when the record's first unit holds it.
    OnReplica {
        begin: Option<Bytes>,
        record: Vec<Recorded>,
        bytes: usize,
    },
}

/// A session's optimistic transaction and what it learned from the last.
#[derive(Default)]
pub(super) struct Optimistic {
    txn: Txn,
    /// The last one failed its check: the next starts on the primary, so
    /// that an application retrying after the 40001 does not meet the same
    /// mismatch again.
    mismatched: bool,
    /// Keys of this session's digests.
    keys: RandomState,
}

impl Optimistic {
    /// pgsplit answered a BEGIN that no server has seen yet.
    pub(super) fn deferred(&self) -> bool {
        matches!(self.txn, Txn::Deferred { .. } | Txn::DeferredFailed)
    }

    /// A unit pgsplit failed itself left the client's transaction failed:
    /// one that no server has seen stays so here.
    pub(super) fn unit_failed(&mut self) {
        if matches!(self.txn, Txn::Deferred { .. }) {
            self.txn = Txn::DeferredFailed;
        }
    }
}

/// How a unit runs for the optimistic transaction, once it is placed.
pub(super) struct Run {
    /// A query to send ahead of the unit, its replies swallowed: the BEGIN
    /// that opens the transaction.
    pub(super) prefix: Option<Bytes>,
    /// Keep the digest of the unit's answer.
    pub(super) digest: Option<Digest>,
}

/// The text of a one-Query unit.
fn query_text(unit: &Unit) -> Option<&[u8]> {
    match unit.frames.as_slice() {
        [f] if f.tag == tag::QUERY => fields::query_text(f.body()).ok(),
        _ => None,
    }
}

/// Whether a unit is extended-protocol messages that run one statement (one
/// Execute, one Parse at most, no Query or FunctionCall). A unit that only
/// prepares a BEGIN does not begin anything.
fn single_extended(unit: &Unit) -> bool {
    let count = |t: u8| unit.frames.iter().filter(|f| f.tag == t).count();
    unit.frames
        .iter()
        .all(|f| is_unit_message(f.tag) && !matches!(f.tag, tag::QUERY | tag::FUNCTION_CALL))
        && count(tag::PARSE) <= 1
        && count(tag::EXECUTE) == 1
}

/// The columns each statement result of `unit` leaves out of its digest
/// (see `Class::unverified_columns`), in the order the results come: one
/// per statement of a Query, one per Execute (its portal's statement).
fn unit_masks(unit: &Unit, st: &SessionState, class: &Class) -> Vec<u64> {
    let mut masks = Vec::new();
    for f in &unit.frames {
        match f.tag {
            tag::QUERY if class.statements <= 1 => masks.push(class.unverified_columns),
            tag::QUERY => {
                if let Ok(text) = fields::query_text(f.body()) {
                    masks.extend(crate::route::classify::unverified_columns_each(
                        &String::from_utf8_lossy(text),
                    ));
                }
            }
            tag::EXECUTE => {
                let portal = fields::execute(f.body()).ok();
                masks.push(
                    portal
                        .and_then(|p| st.portals.get(p))
                        .map_or(0, |p| p.class.unverified_columns),
                );
            }
            tag::FUNCTION_CALL => masks.push(0),
            _ => {}
        }
    }
    masks
}

/// The text of the one statement a unit names (its Query, its Parses, the
/// statements its Binds and Describes name), if it names one only.
fn one_statement(unit: &Unit, st: &SessionState) -> Option<Bytes> {
    let mut text: Option<Bytes> = None;
    for f in &unit.frames {
        let this = match f.tag {
            tag::QUERY => {
                let t = fields::query_text(f.body()).ok()?;
                if unit.class?.statements != 1 {
                    return None;
                }
                f.bytes.slice_ref(t)
            }
            tag::PARSE => f.bytes.slice_ref(fields::parse(f.body()).ok()?.1),
            tag::BIND => st.statement(fields::bind(f.body()).ok()?.1)?.text.clone(),
            tag::DESCRIBE => match fields::target(f.body(), "Describe").ok()? {
                (b'S', name) => st.statement(name)?.text.clone(),
                _ => continue,
            },
            _ => continue,
        };
        match &text {
            Some(t) if *t != this => return None,
            _ => text = Some(this),
        }
    }
    text
}

impl Session {
    /// The step `unit` takes (see `route::optimistic::step`).
    pub(super) fn optimistic_step(
        &mut self,
        unit: &Unit,
        class: &Class,
        config: &Config,
        health: &HealthSnapshot,
    ) -> Step {
        // Every unit of every session passes here: the facts that cost a
        // walk over the unit are asked only where the policy reads them.
        let text = query_text(unit);
        let on_replica = matches!(self.opt.txn, Txn::OnReplica { .. });
        let facts = UnitFacts {
            class: *class,
            complete: unit.complete,
            simple: text.is_some(),
            single_extended: text.is_none()
                && class.deferrable_begin.is_some()
                && single_extended(unit),
            replica_txn_control: on_replica
                && class.kind == crate::route::class::Kind::TxnControl
                && one_statement(unit, &self.st).is_some_and(|t| policy::replica_txn_control(&t)),
            statement_free: unit.class.is_none(),
        };
        let phase = match &self.opt.txn {
            Txn::Off => Phase::Off,
            Txn::Deferred { .. } | Txn::DeferredFailed => Phase::Deferred,
            Txn::OnReplica { record, bytes, .. } => {
                let limits = &config.routing;
                let failed = self
                    .st
                    .txn
                    .and_then(|id| self.conns.get(id))
                    .is_some_and(|h| h.conn.status() == TxStatus::Failed);
                let replica_fit = self.st.txn.is_none_or(|id| {
                    health
                        .replicas
                        .iter()
                        .any(|r| r.id == id && r.up && !r.lagging)
                });
                Phase::OnReplica {
                    failed,
                    room: replica_fit
                        && record.len()
                            < usize::try_from(limits.optimistic_max_statements)
                                .unwrap_or(usize::MAX)
                        && bytes.saturating_add(unit.bytes) as u64 <= limits.optimistic_max_bytes.0,
                }
            }
        };
        let allowed = Allowed {
            enabled: config.routing.optimistic_transactions && !config.replicas.is_empty(),
            no_txn: self.st.txn.is_none(),
            replica_ok: self.st.pinned.is_none()
                && self.st.mode != RouteMode::Primary
                && !self.opt.mismatched,
        };
        let step = policy::step(&facts, phase, allowed);
        if phase == Phase::Off && class.deferrable_begin.is_some() && self.opt.mismatched {
            // This transaction starts on the primary; the next may not.
            self.opt.mismatched = false;
        }
        step
    }

    /// In a failed transaction no server has seen: a simple `COMMIT`,
    /// `END`, `ROLLBACK` or `ABORT` ends it (as `ROLLBACK`, as PostgreSQL
    /// answers a failed transaction's COMMIT); anything else fails with
    /// 25P02. `Ok(false)`: the session is in no such transaction.
    pub(super) async fn answer_failed_deferred(
        &mut self,
        unit: &Unit,
    ) -> Result<bool, ClientError> {
        if !matches!(self.opt.txn, Txn::DeferredFailed) {
            return Ok(false);
        }
        let ends = query_text(unit).is_some_and(policy::ends_transaction);
        if !ends {
            self.fail_unit(unit, &ClientError::InFailedTransaction)
                .await?;
            return Ok(true);
        }
        self.opt.txn = Txn::Off;
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&build::command_complete("ROLLBACK"));
        msg.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        self.io.write(&msg).await?;
        Ok(true)
    }

    /// Answers a BEGIN as PostgreSQL would, and remembers it: a simple
    /// Query, or the extended-protocol messages of one BEGIN statement.
    /// `Ok(false)`: its text is not at hand (the policy saw to it that it
    /// is); the unit runs as usual.
    pub(super) async fn defer_begin(
        &mut self,
        unit: &Unit,
        class: &Class,
    ) -> Result<bool, ClientError> {
        let (Some(begin), Some(isolation)) =
            (one_statement(unit, &self.st), class.deferrable_begin)
        else {
            return Ok(false);
        };
        let start = begin.trim_ascii_start();
        let tag = if start
            .get(..5)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"start"))
        {
            "START TRANSACTION"
        } else {
            "BEGIN"
        };
        let mut msg = BytesMut::new();
        for f in &unit.frames {
            match f.tag {
                tag::QUERY | tag::EXECUTE => msg.extend_from_slice(&build::command_complete(tag)),
                tag::PARSE => msg.extend_from_slice(&build::parse_complete()),
                tag::BIND => msg.extend_from_slice(&build::bind_complete()),
                tag::DESCRIBE => {
                    if matches!(fields::target(f.body(), "Describe"), Ok((b'S', _))) {
                        msg.extend_from_slice(&build::no_parameters());
                    }
                    msg.extend_from_slice(&build::no_data());
                }
                tag::CLOSE => {
                    if let Ok((b'S', name)) = fields::target(f.body(), "Close") {
                        for held in self.conns.iter_mut() {
                            held.conn.statements().close_later(name);
                        }
                    }
                    msg.extend_from_slice(&build::close_complete());
                }
                _ => {}
            }
        }
        msg.extend_from_slice(&build::ready_for_query(TxStatus::InTransaction));
        self.opt.txn = Txn::Deferred { begin, isolation };
        self.io.write(&msg).await?;
        Ok(true)
    }

    /// What a unit placed on the primary (`on_primary`) or a replica needs
    /// for the optimistic transaction.
    pub(super) fn optimistic_run(
        &self,
        step: Step,
        on_primary: bool,
        unit: &Unit,
        class: &Class,
    ) -> Run {
        let prefix = match &self.opt.txn {
            Txn::Deferred { begin, isolation } if step == Step::Open => Some(if on_primary {
                begin.clone()
            } else {
                Bytes::from_static(isolation.begin_read_only())
            }),
            _ => None,
        };
        let records = !on_primary && matches!(step, Step::Open | Step::Opens | Step::Record);
        Run {
            prefix,
            digest: records.then(|| Digest::new(&self.opt.keys, unit_masks(unit, &self.st, class))),
        }
    }

    /// After a unit ran (`on_primary` or not) as `step` said: the
    /// transaction opens, is recorded or ends.
    pub(super) fn optimistic_after(
        &mut self,
        unit: &Unit,
        step: Step,
        on_primary: bool,
        outcome: &Outcome,
    ) {
        let ended = outcome.status == TxStatus::Idle;
        match (std::mem::take(&mut self.opt.txn), step) {
            (Txn::Deferred { begin, .. }, Step::Open) => {
                self.opened(Some(begin), unit, on_primary, outcome)
            }
            (Txn::Off, Step::Opens) => self.opened(None, unit, on_primary, outcome),
            (txn @ Txn::OnReplica { .. }, Step::Record) => {
                if ended {
                    self.ctx.metrics.transaction(TxnOutcome::ReadOnlyOnReplica);
                } else {
                    self.opt.txn = txn;
                    self.record(unit, outcome);
                }
            }
            (txn, _) => self.opt.txn = txn,
        }
    }

    /// The first unit of an optimistic transaction ran.
    fn opened(&mut self, begin: Option<Bytes>, unit: &Unit, on_primary: bool, outcome: &Outcome) {
        if on_primary {
            self.ctx.metrics.transaction(TxnOutcome::StartedOnPrimary);
        } else if outcome.status == TxStatus::Idle {
            self.ctx.metrics.transaction(TxnOutcome::ReadOnlyOnReplica);
        } else {
            self.opt.txn = Txn::OnReplica {
                begin,
                record: Vec::new(),
                bytes: 0,
            };
            self.record(unit, outcome);
        }
    }

    fn record(&mut self, unit: &Unit, outcome: &Outcome) {
        if let (Txn::OnReplica { record, bytes, .. }, Some(sealed)) =
            (&mut self.opt.txn, outcome.digest.clone())
        {
            *bytes = bytes.saturating_add(unit.bytes);
            record.push(Recorded {
                frames: unit.frames.clone(),
                digest: sealed.value,
                masks: sealed.masks,
                statements: named_statements(&unit.frames, &self.st),
            });
        }
    }

    /// A unit failed in a way that lost the replica's transaction (its
    /// connection went): nothing optimistic is left.
    pub(super) fn optimistic_lost(&mut self) {
        if matches!(self.opt.txn, Txn::OnReplica { .. }) && self.st.txn.is_none() {
            self.opt.txn = Txn::Off;
        }
    }

    /// Moves the transaction open on a replica to the primary: opens it
    /// there, replays the record in one flight and compares the answers.
    /// `Ok(true)`: they match, the transaction goes on on the primary.
    /// `Ok(false)`: some answer differs; the primary's transaction is left
    /// failed (nothing written) and the client was told 40001 for `unit`.
    pub(super) async fn move_to_primary(
        &mut self,
        unit: &Unit,
        class: &Class,
    ) -> Result<bool, ClientError> {
        // `None`: the replica's connection was lost (the transaction with
        // it); the record still says what the client saw.
        let replica = self.st.txn;
        let started = Instant::now();
        let health = self.ctx.health.get();
        // Without a primary the transaction stays as it is: the client gets
        // the error for this unit and may roll back on the replica.
        let primary = match health.writable_primary() {
            Some(id) => id,
            None => self.primary_id().await?,
        };
        self.attach(primary).await?;
        let Txn::OnReplica { begin, record, .. } = std::mem::take(&mut self.opt.txn) else {
            return Ok(true);
        };
        // The replay on the primary and the rollback on the replica go
        // at once: the move costs one round trip, not two.
        let (replayed, replica_ended) = {
            let Session { conns, st, opt, .. } = self;
            let (held, on_replica) = conns
                .pair_mut(primary, replica.unwrap_or(primary))
                .ok_or(ClientError::TransactionLost)?;
            held.dirty = true;
            let replay = replay(&mut held.conn, st, begin.as_deref(), &record, &opt.keys);
            match on_replica {
                Some(r) => {
                    let (replayed, ended) = tokio::join!(replay, rollback(&mut r.conn));
                    (replayed, Some(ended))
                }
                None => (replay.await, None),
            }
        };
        if let (Some(false), Some(id)) = (replica_ended, replica) {
            self.conns.remove(id);
        }
        let replayed = match replayed {
            Ok(r) => r,
            Err(e) => {
                self.conns.remove(primary);
                self.st.txn = None;
                tracing::warn!(error = %e, "moving a transaction to the primary failed");
                return Err(ClientError::Backend(e));
            }
        };
        self.ctx.metrics.transaction_replay(started.elapsed());
        let same = replayed.status == TxStatus::InTransaction
            && replayed.digests.len() == record.len()
            && replayed
                .digests
                .iter()
                .zip(&record)
                .all(|(d, r)| *d == r.digest);
        self.st.txn = Some(primary);
        if same {
            let why = if class.kind == crate::route::class::Kind::Write {
                TxnOutcome::ReplayedMatch
            } else {
                TxnOutcome::MovedBeforeUnreplayable
            };
            self.ctx.metrics.transaction(why);
            self.conns
                .held(primary)?
                .conn
                .note_status(TxStatus::InTransaction);
            return Ok(true);
        }
        tracing::info!(
            units = record.len(),
            "a read of an optimistic transaction answered differently on the primary: 40001"
        );

        self.ctx.metrics.transaction(TxnOutcome::ReplayedMismatch);
        self.opt.mismatched = true;
        if let Some(opening) = record.first() {
            let shape = super::run::frames_shape(&opening.frames, |name| {
                opening
                    .statements
                    .iter()
                    .find(|(n, _)| n.as_ref() == name)
                    .and_then(|(_, s)| s.as_ref().map(|s| s.text.clone()))
            });
            self.ctx.mismatches.note(&shape);
        }
        // The primary's transaction is rolled back and a failed one stands
        // in for it: the client's later statements get 25P02 and its
        // ROLLBACK ends it, all from the server, as after any 40001.
        let held = self.conns.held(primary)?;
        match held.conn.run_internal(FAIL_TRANSACTION).await {
            Ok(_) if held.conn.status() == TxStatus::Failed => {}
            Ok(_) => {
                held.conn.mark_broken();
                return Err(ClientError::TransactionLost);
            }
            Err(e) => return Err(ClientError::Backend(e)),
        }
        self.fail_unit(unit, &ClientError::ReadChanged).await?;
        Ok(false)
    }
}

/// Rolls back the transaction on a replica's connection: whether it is idle
/// now (else it is marked broken, for the caller to let go).
async fn rollback(conn: &mut ServerConn) -> bool {
    match conn.run_internal(b"ROLLBACK").await {
        Ok(Ok(())) => {
            conn.note_status(TxStatus::Idle);
            true
        }
        _ => {
            conn.mark_broken();
            false
        }
    }
}

/// Leaves the connection in a failed transaction: rolls back what the replay
/// began, begins again and fails with 40001 (the message the client gets is
/// pgsplit's own, see [`ClientError::ReadChanged`]).
const FAIL_TRANSACTION: &[u8] = b"ROLLBACK; BEGIN; DO $pgsplit$BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'pgsplit: a read answered differently on the primary'; END$pgsplit$";

/// What the primary answered to a replayed record.
struct Replayed {
    /// One per recorded unit, in order.
    digests: Vec<u64>,
    /// The transaction status after the last.
    status: TxStatus,
}

/// Sends `begin` (if the record's first unit does not begin the transaction
/// itself) and the recorded units to `conn` in one flight and reads every
/// answer, keeping only each unit's digest.
async fn replay(
    conn: &mut ServerConn,
    st: &mut SessionState,
    begin: Option<&[u8]>,
    record: &[Recorded],
    keys: &RandomState,
) -> Result<Replayed, BackendError> {
    let mut out = BytesMut::new();
    let mut exp = Expect::default();
    relay::begin_unit(conn, &mut out, &mut exp);
    if let Some(begin) = begin {
        out.extend_from_slice(&build::query(begin));
    }
    for unit in record {
        // Each unit is staged with the statements it used then.
        let saved: Vec<_> = unit
            .statements
            .iter()
            .map(|(name, stmt)| (name, swap_statement(st, name, stmt.clone())))
            .collect();
        let staged = unit
            .frames
            .iter()
            .try_for_each(|frame| relay::stage(frame, st, conn, &mut out, &mut exp));
        for (name, stmt) in saved.into_iter().rev() {
            swap_statement(st, name, stmt);
        }
        staged.map_err(|e| conn.protocol(e))?;
    }
    let mut digests = Vec::with_capacity(record.len());
    let masks = |i: usize| record.get(i).map_or_else(Vec::new, |r| r.masks.clone());
    let mut digest = Digest::new(keys, masks(0));
    // Before the first ReadyForQuery: the BEGIN's answer.
    let mut begun = begin.is_none();
    let mut status = TxStatus::Idle;
    let mut unflushed = false;
    while digests.len() < record.len() || !begun {
        let Some(frame) = conn.take_buffered()? else {
            conn.pump(&mut out, &mut unflushed).await?;
            continue;
        };
        match frame.tag {
            tag::backend::READY_FOR_QUERY => {
                status = fields::ready_for_query(frame.body()).map_err(|e| conn.protocol(e))?;
                if begun {
                    digests.push(digest.finish());
                    digest = Digest::new(keys, masks(digests.len()));
                }
                begun = true;
            }
            tag::backend::PARSE_COMPLETE => {
                exp.parse_complete();
            }
            tag::backend::CLOSE_COMPLETE => {
                exp.close_complete();
            }
            tag::backend::PARAMETER_STATUS => conn.note_parameter(&frame)?,
            t if begun => digest.message(t, &frame.bytes),
            tag::backend::ERROR_RESPONSE => status = TxStatus::Failed,
            _ => {}
        }
    }
    while !out.is_empty() || unflushed {
        conn.pump(&mut out, &mut unflushed).await?;
    }
    relay::settle(&mut exp, st, conn, true);
    conn.note_status(status);
    Ok(Replayed { digests, status })
}
