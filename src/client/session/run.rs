//! Running one unit: plan it (`route::plan`), attach to the server the plan
//! names, forward and relay, then learn from what the server said. A read
//! that fails on a replica before any reply reached the client runs again on
//! the primary.

use bytes::BytesMut;
use tokio::time::Instant;

use super::Session;
use super::held::{leaves_no_state, only_settings};
use crate::backend::health::{HealthSnapshot, PrimaryState};
use crate::backend::{BackendError, ServerId};
use crate::client::ClientError;
use crate::client::cancel::CancelTarget;
use crate::client::floor_probe;
use crate::client::relay::{self, Expect, Outcome, RelayError, RelayMode};
use crate::client::state::{Finished, SessionState};
use crate::client::unit::Unit;
use crate::config::Config;
use crate::protocol::{TxStatus, build, tag};
use crate::route::class::{Class, Kind, PinReason};
use crate::route::optimistic::Step;
use crate::route::plan::{self, Ended, Execution, UnitTexts, UnitView};
use crate::route::router::{Reason, SessionView, Target};
use crate::sqlstate;

/// The text questions of the plan, answered from the unit and the session's
/// statement registry.
struct Texts<'a> {
    unit: &'a Unit,
    st: &'a SessionState,
}

impl UnitTexts for Texts<'_> {
    fn may_end_transaction(&self) -> bool {
        floor_probe::may_end_transaction(self.unit, self.st)
    }
    fn floor_probe_may_follow(&self, in_txn: bool) -> bool {
        floor_probe::may_follow(self.unit, self.st, in_txn)
    }
}

fn view<'a>(unit: &'a Unit, class: Class, texts: &'a Texts<'a>) -> UnitView<'a> {
    UnitView {
        class,
        complete: unit.complete,
        extended: unit.frames.first().is_some_and(|f| f.tag != tag::QUERY),
        resets_all: unit.resets_all,
        texts,
    }
}

/// The primary as health says, or (before the first probe answered) as
/// configured: `None` while there is none.
fn known_primary(health: &HealthSnapshot) -> Option<ServerId> {
    match health.primary {
        PrimaryState::Known(id) => Some(id),
        _ => None,
    }
}

/// A unit's statement texts as masked shapes (literals out), for the log.
pub(super) fn unit_shape(unit: &Unit, st: &SessionState) -> String {
    frames_shape(&unit.frames, |name| {
        st.statement(name).map(|s| s.text.clone())
    })
}

/// The masked texts of what `frames` run (Queries, and the statements Binds
/// name, found by `text_of`), joined.
pub(super) fn frames_shape(
    frames: &[crate::protocol::Frame],
    text_of: impl Fn(&[u8]) -> Option<bytes::Bytes>,
) -> String {
    let mut texts: Vec<String> = Vec::new();
    for f in frames {
        let text = match f.tag {
            tag::QUERY => crate::protocol::fields::query_text(f.body())
                .ok()
                .map(|t| f.bytes.slice_ref(t)),
            tag::BIND => crate::protocol::fields::bind(f.body())
                .ok()
                .and_then(|(_, name)| text_of(name)),
            _ => None,
        };
        if let Some(t) = text {
            texts.push(crate::route::lexer::mask(&String::from_utf8_lossy(&t)).key);
        }
    }
    texts.join("; ")
}

/// Whether a unit's run ends in another run on the primary: a recovery
/// conflict on a replica, or a replica connection lost before any reply
/// reached the client (see `RelayMode::retry_conflict`).
fn runs_again(mode: RelayMode, result: &Result<Outcome, RelayError>) -> bool {
    match result {
        Ok(outcome) => outcome.retry_conflict,
        Err(RelayError::Server { sent_to_client, .. }) => mode.retry_conflict && !sent_to_client,
        Err(RelayError::Client(_)) => false,
    }
}

impl Session {
    pub(super) async fn run_unit(&mut self, unit: Unit) -> Result<(), ClientError> {
        let result = self.run_unit_here(unit).await;
        self.optimistic_lost();
        result
    }

    async fn run_unit_here(&mut self, unit: Unit) -> Result<(), ClientError> {
        // A Flush alone asks for replies nobody owes: every unit before it
        // was answered to its end. Nothing to send.
        if unit.frames.iter().all(|f| f.tag == tag::FLUSH) {
            return Ok(());
        }
        if self.answer_failed_deferred(&unit).await?
            || self.set_route_locally(&unit).await?
            || self.answer_closes_locally(&unit).await?
            || self.deallocate_locally(&unit).await?
        {
            return Ok(());
        }
        let class = unit.class();
        let (config, health) = (self.ctx.config(), self.ctx.health.get());
        let mut step = self.optimistic_step(&unit, &class, &config, &health);
        // The first attempt uses the snapshots the step was decided on.
        let mut snapshots = Some((config, health));
        match step {
            Step::Defer => {
                if self.defer_begin(&unit, &class).await? {
                    return Ok(());
                }
                step = Step::AsUsual;
            }
            Step::Move => match self.move_to_primary(&unit, &class).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e @ (ClientError::Gone(_) | ClientError::Protocol(_))) => return Err(e),
                Err(e) => return self.fail_unit(&unit, &e).await,
            },
            Step::AsUsual | Step::Open | Step::Record | Step::Opens => {}
        }
        // A BEGIN followed by reads is placed as the reads are.
        let mut class = if step == Step::Opens {
            Class {
                kind: Kind::Read,
                ..class
            }
        } else {
            class
        };
        // A transaction of a shape that keeps failing its check begins on
        // the primary.
        if matches!(step, Step::Open | Step::Opens)
            && self.ctx.mismatches.any()
            && self
                .ctx
                .mismatches
                .keeps_mismatching(&unit_shape(&unit, &self.st))
        {
            class.hint = Some(crate::route::class::RouteMode::Primary);
        }
        let mut retried = false;
        // The failed first run was on a replica (else on the primary).
        let mut replica_failed = false;
        loop {
            // One reading of each shared snapshot per attempt: the unit sees
            // one configuration and one picture of the servers.
            let (config, health) = snapshots
                .take()
                .unwrap_or_else(|| (self.ctx.config(), self.ctx.health.get()));
            let placed = self
                .place(&unit, class, retried, replica_failed, &config, &health)
                .await;
            let (id, reason) = match placed {
                Ok(p) => p,
                Err(e @ (ClientError::Gone(_) | ClientError::Protocol(_))) => return Err(e),
                Err(e) => return self.fail_unit(&unit, &e).await,
            };
            let on_primary = match known_primary(&health) {
                Some(p) => p == id,
                None => id == self.ctx.configured_primary(),
            };
            let at = Execution {
                on_primary,
                // A deferred BEGIN opens on the primary with this unit.
                in_txn: self.st.txn.is_some() || (self.opt.deferred() && on_primary),
                retried,
                tracks_floor: on_primary
                    && config.routing.read_your_writes != crate::config::ReadYourWrites::Off
                    && health.servers.len() > 1,
                replica_could_serve: plan::only_for_freshness(reason),
                movable_txn: step == Step::Record && !on_primary,
            };
            let texts = Texts {
                unit: &unit,
                st: &self.st,
            };
            let mode = plan::relay_plan(&view(&unit, class, &texts), at);
            let started = Instant::now();
            // An open unit continues with statements not seen yet.
            let dirties = !unit.complete
                || !(leaves_no_state(&class, self.pool_mode)
                    || only_settings(&unit, &class, &self.st));
            let run = self.optimistic_run(step, on_primary, &unit, &class);
            let result = self.forward(&unit, id, mode, dirties, run).await;
            let again = runs_again(mode, &result);
            match result {
                Ok(outcome) if again => {
                    let held = self.conns.held(id)?;
                    if outcome.setup_failed {
                        // As when the settings fail in a round trip of their
                        // own (see `place`): the session reads from the
                        // primary from now on.
                        tracing::info!(server = %held.conn.target().name, "replica refused the session's settings; session pinned to the primary");
                        held.conn.mark_broken();
                        self.conns.remove(id);
                        if self.st.pinned.is_none() {
                            self.st.pinned = Some(PinReason::SessionChange);
                        }
                        self.ctx.metrics.retry("replica_settings");
                    } else if outcome.error.as_deref() == Some(sqlstate::READ_ONLY_SQL_TRANSACTION)
                    {
                        held.conn.note_status(outcome.status);
                        self.ctx.metrics.retry("replica_refused");
                        let shape = unit_shape(&unit, &self.st);
                        if self.ctx.refused.first(&shape) {
                            tracing::info!(%shape, "a replica refused a statement as read-only (25006); it runs on the primary, and so does each like it that fails so");
                        }
                    } else {
                        tracing::debug!(server = %held.conn.target().name, "recovery conflict on a replica; retrying on the primary");
                        self.ctx.metrics.retry("recovery_conflict");
                        held.conn.note_status(outcome.status);
                    }
                    retried = true;
                    replica_failed = !on_primary;
                    if step == Step::Record {
                        // The replica's transaction failed with it: the
                        // transaction moves, then the unit runs again there.
                        step = Step::Move;
                        if let Some(done) = self.move_after_failure(&unit, &class).await {
                            return done;
                        }
                    }
                }
                Ok(outcome) => {
                    let ended = Ended {
                        status: outcome.status,
                        failed: outcome.error.is_some(),
                        rolled_back: outcome.rolled_back,
                        wrote: outcome.wrote,
                    };
                    let floor = plan::after(&class, mode, ended, self.st.txn_wrote);
                    self.st.txn_wrote = floor.txn_wrote;
                    self.learn(&unit, &class, id, &outcome)?;
                    self.optimistic_after(&unit, step, on_primary, &outcome);
                    if floor.record {
                        match outcome.probe {
                            Some(lsn) => self.set_floor(lsn, &config),
                            None => self.record_floor(id, &config).await,
                        }
                    }
                    if unit.resets_all
                        && outcome.error.is_none()
                        && outcome.status == TxStatus::Idle
                    {
                        self.reapply_startup(id).await?;
                    }
                    if mode.hold_ready {
                        let mut msg = outcome.tail;
                        msg.extend_from_slice(&build::ready_for_query(outcome.status));
                        self.io.write(&msg).await?;
                    }
                    self.ctx.metrics.unit(reason, on_primary, started.elapsed());
                    return Ok(());
                }
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Server { error, .. }) => {
                    // The broken connection goes; the pool discards it.
                    self.conns.remove(id);
                    let in_txn = self.st.txn == Some(id);
                    if in_txn {
                        self.st.txn = None;
                    }
                    if again {
                        if on_primary {
                            tracing::info!(%error, "read failed on the primary before any reply; placing it again");
                            self.ctx.metrics.retry("primary_failed");
                        } else {
                            tracing::info!(server = %id.0, %error, "read failed on a replica before any reply; retrying on the primary");
                            self.ctx.metrics.retry("replica_failed");
                        }
                        retried = true;
                        replica_failed = !on_primary;
                        if step == Step::Record {
                            step = Step::Move;
                            if let Some(done) = self.move_after_failure(&unit, &class).await {
                                return done;
                            }
                        }
                        continue;
                    }
                    // A read that lost its server after part of its answer
                    // went out: the statement fails, the session goes on (a
                    // read changed nothing, and nothing of the client's is
                    // left unread).
                    if unit.complete && class.kind == Kind::Read {
                        return self.fail_lost_read(error, in_txn).await;
                    }
                    return Err(ClientError::Backend(error));
                }
            }
        }
    }

    /// A read of an optimistic transaction failed on its replica before any
    /// reply: the transaction moves to the primary, where the read runs
    /// again. `Some`: the unit is over (the client was answered, or the
    /// session ends).
    async fn move_after_failure(
        &mut self,
        unit: &Unit,
        class: &Class,
    ) -> Option<Result<(), ClientError>> {
        match self.move_to_primary(unit, class).await {
            Ok(true) => None,
            Ok(false) => Some(Ok(())),
            Err(e @ (ClientError::Gone(_) | ClientError::Protocol(_))) => Some(Err(e)),
            Err(e) => Some(self.fail_unit(unit, &e).await),
        }
    }

    /// Chooses the server for a unit (see `route::plan`) and attaches to it,
    /// falling back to the primary when a replica cannot be used.
    async fn place(
        &mut self,
        unit: &Unit,
        class: Class,
        retried: bool,
        replica_failed: bool,
        config: &Config,
        health: &HealthSnapshot,
    ) -> Result<(ServerId, Reason), ClientError> {
        let primary = known_primary(health);
        if let Some(id) = self.st.txn {
            if !self.conns.holds(id) {
                self.st.txn = None;
                return Err(ClientError::TransactionLost);
            }
        } else if unit.complete && !retried {
            self.spin = self.spin.wrapping_add(1);
        }
        let texts = Texts { unit, st: &self.st };
        let unit_view = view(unit, class, &texts);
        let session = SessionView {
            // The transaction stays where it began; the plan says so.
            txn: self.st.txn.map(|id| {
                if Some(id) == primary {
                    Target::Primary
                } else {
                    Target::Replica(id)
                }
            }),
            pinned: self.st.pinned,
            mode: self.st.mode,
            floor: self.floor(config),
            held_replica: self.held_replica(primary),
            spin: self.spin,
            primary_up: health.primary_answers,
        };
        let mut placed = plan::place(&unit_view, &session, &health.replicas, replica_failed);
        if let (true, Some(floor)) = (plan::awaits_replay(placed, &session), session.floor) {
            // Positions learned on demand may be ahead of the probe's; else
            // a replica is asked, and waited for briefly.
            let replicas = self.ctx.replay.raise(&health.replicas);
            placed = plan::place(&unit_view, &session, &replicas, replica_failed);
            if plan::awaits_replay(placed, &session)
                && let Some(id) = plan::replica_to_await(&session, &replicas)
                && self.wait_for_replica(floor, id).await
            {
                placed = (Target::Replica(id), Reason::Read);
            }
        }
        let (target, reason) = placed;
        if let Some(id) = self.st.txn {
            self.attach(id).await?;
            return Ok((id, reason));
        }
        if let Target::Replica(id) = target {
            // A read that may run again elsewhere takes its settings in its
            // own flight (see `relay_plan`'s `retry_conflict`).
            let attached = if unit.complete && class.kind == Kind::Read && !retried {
                self.attach_for_read(id).await
            } else {
                self.attach(id).await
            };
            match attached {
                Ok(()) => return Ok((id, reason)),
                Err(e) => {
                    // A session change the replica refused to replay would
                    // fail again on every read: keep this session on the primary.
                    if matches!(e, ClientError::Backend(BackendError::Server { .. }))
                        && self.st.pinned.is_none()
                    {
                        tracing::info!(error = %e, "replica refused the session's settings; session pinned to the primary");
                        self.st.pinned = Some(PinReason::SessionChange);
                    } else {
                        tracing::debug!(error = %e, "replica unavailable, reading from the primary");
                    }
                }
            }
        }
        let primary = match health.writable_primary() {
            Some(id) => id,
            None => self.primary_id().await?,
        };
        self.attach(primary).await?;
        let reason = if matches!(target, Target::Replica(_)) {
            Reason::ReplicaDown
        } else {
            reason
        };
        Ok((primary, reason))
    }

    /// Sends the unit to the connection to `id` and relays the replies.
    /// `dirties`: the unit may leave state that only `DISCARD ALL` clears.
    async fn forward(
        &mut self,
        unit: &Unit,
        id: ServerId,
        mode: RelayMode,
        dirties: bool,
        run: super::optimistic::Run,
    ) -> Result<Outcome, RelayError> {
        let Session {
            io,
            conns,
            st,
            cancel,
            ..
        } = self;
        let held = conns.held(id).map_err(RelayError::Client)?;
        held.dirty |= dirties;
        let setup = held.setup.take();
        let conn = &mut held.conn;
        let mut exp = Expect::default();
        let mut out = BytesMut::with_capacity(unit.bytes + 64);
        if let Some(sql) = setup {
            if mode.retry_conflict {
                out.extend_from_slice(&build::query(&sql));
                exp.setup += 1;
            } else {
                // Only a read that may run again elsewhere can take them in
                // its flight; anything else waits for them.
                super::held::run_setup(conn, &sql)
                    .await
                    .map_err(RelayError::Client)?;
            }
        }
        if let Some(begin) = &run.prefix {
            out.extend_from_slice(&build::query(begin));
            exp.setup += 1;
        }
        exp.digest = run.digest;
        relay::begin_unit(conn, &mut out, &mut exp);
        for frame in &unit.frames {
            relay::stage(frame, st, conn, &mut out, &mut exp)
                .map_err(|e| RelayError::Client(e.into()))?;
        }
        if mode.floor_probe {
            out.extend_from_slice(&floor_probe::QUERY);
        }
        cancel.set(Some(CancelTarget {
            server: conn.target().clone(),
            key: conn.cancel_key(),
        }));
        // Marked for the monitor: a read it may end when its server stops
        // answering, to run it again elsewhere.
        if mode.retry_conflict {
            conn.rescuable(true);
        }
        let result = relay::relay(io, conn, st, &mut exp, mode, out).await;
        if mode.retry_conflict {
            conn.rescuable(false);
        }
        cancel.set(None);
        // A unit that runs again keeps its own Parses in the session: the
        // next run sends them again.
        relay::settle(&mut exp, st, conn, !runs_again(mode, &result));
        result.map(|mut outcome| {
            outcome.digest = exp.digest.map(crate::client::digest::Digest::seal);
            outcome
        })
    }

    /// Updates the session, and the connection that ran the unit, from what
    /// the server said (see [`SessionState::learn`]).
    fn learn(
        &mut self,
        unit: &Unit,
        class: &Class,
        id: ServerId,
        outcome: &Outcome,
    ) -> Result<(), ClientError> {
        let Session { conns, st, .. } = self;
        let held = conns.held(id)?;
        held.conn.note_status(outcome.status);
        let was_applied = held.applied == st.replay.len();
        let learned = st.learn(
            class,
            Finished {
                server: id,
                status: outcome.status,
                ok: outcome.error.is_none(),
                rolled_back: outcome.rolled_back,
                changes: &unit.session_changes,
            },
        );
        // This connection ran the changes just logged.
        if learned.txn_ended && was_applied {
            held.applied = st.replay.len();
            held.conn.set_settings(&st.desired);
        }
        if learned.drops_prepared {
            held.conn.statements().clear();
        }
        Ok(())
    }
}
