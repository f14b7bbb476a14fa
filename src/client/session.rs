//! The session loop: read a unit, classify and route it, make sure the chosen
//! server connection carries the session's state, forward, relay, learn.
//!
//! Session pooling: the session keeps each server connection it uses until the
//! client leaves (the replica's only once it first reads). The seam for
//! transaction pooling is [`Session::attach`], which hands out a connection per
//! unit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::cancel::{CancelSlot, CancelTarget};
use super::handshake::Hello;
use super::relay::{self, Expect, Outcome, RelayError, RelayMode};
use super::state::{SessionState, reset_statement};
use super::unit::{Unit, is_unit_message};
use super::{ClientError, ClientIo};
use crate::app::Context;
use crate::backend::health::PrimaryState;
use crate::backend::{Login, Pooled, ServerId};
use crate::config::ReadYourWrites;
use crate::protocol::{Frame, ProtocolError, TxStatus, build, tag};
use crate::route::class::{Class, Kind, PinReason};
use crate::route::router::{Reason, SessionView, Target, route};
use crate::server::Lsn;

struct Held {
    conn: Pooled,
    /// How much of the session's replay log this connection has applied.
    applied: usize,
    /// This session ran something here that may leave state on the connection
    /// beyond reported parameters (see [`leaves_no_state`]): it needs
    /// `DISCARD ALL` before another client may use it.
    dirty: bool,
}

/// Whether a unit of this class leaves nothing on a server connection once its
/// transaction ends: provably read-only statements (the replica test: no
/// volatile function, no session effect, no cursor) and transaction control.
fn leaves_no_state(class: &Class) -> bool {
    matches!(
        class.kind,
        Kind::Read | Kind::Begin { .. } | Kind::TxnControl
    ) && !class.session_effect
        && !class.drops_prepared
        && class.pin.is_none_or(|p| p == PinReason::Hint)
}

pub struct Session {
    ctx: Arc<Context>,
    io: ClientIo,
    login: Login,
    st: SessionState,
    conns: Vec<Held>,
    cancel: Arc<CancelSlot>,
    spin: usize,
    /// The server connection that ran this session's LISTEN.
    listen_conn: Option<ServerId>,
    /// The open transaction ran something that may write.
    txn_wrote: bool,
}

/// Where a unit ran.
struct Placement {
    index: usize,
    reason: Reason,
}

impl Session {
    pub fn new(ctx: Arc<Context>, hello: Hello, cancel: Arc<CancelSlot>) -> Self {
        let st = SessionState::new(hello.mode, &hello.settings);
        Session {
            login: Login {
                user: hello.user,
                database: hello.database,
            },
            io: hello.io,
            st,
            conns: Vec::new(),
            cancel,
            spin: rand::random::<u32>() as usize,
            listen_conn: None,
            txn_wrote: false,
            ctx,
        }
    }

    /// Finishes the login: the primary's parameters and our cancel key, then
    /// serves the client until it leaves. Server connections are reset and
    /// returned to their pools on the way out, whatever happened.
    pub async fn run(mut self, pid: i32, secret: &[u8]) -> Result<(), ClientError> {
        let result = self.serve(pid, secret).await;
        if let Err(e) = &result
            && !matches!(e, ClientError::Gone(_))
        {
            let msg =
                build::error_response(build::Severity::Fatal, e.sqlstate(), &e.client_message());
            let _ = self.io.write(&msg).await;
        }
        self.release().await;
        result
    }

    async fn serve(&mut self, pid: i32, secret: &[u8]) -> Result<(), ClientError> {
        let primary = self.primary_id().await?;
        let index = self.attach(primary).await?;
        let mut hello = BytesMut::new();
        let mut params: Vec<_> = self.conns[index].conn.params.iter().collect();
        params.sort();
        for (k, v) in params {
            hello.extend_from_slice(&build::parameter_status(k, v));
        }
        hello.extend_from_slice(&build::backend_key_data(pid, secret));
        hello.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        self.io.write(&hello).await?;

        // One waiter for the whole session, not one registered per message.
        let mut terminate = self.ctx.terminate.subscribe();
        let mut terminated = std::pin::pin!(async move {
            let _ = terminate.wait_for(|t| *t).await;
        });
        loop {
            // A LISTENing session gets notifications while idle, as it would
            // from PostgreSQL: watch the connection that ran the LISTEN too.
            let listener = self
                .listen_conn
                .and_then(|id| self.conns.iter().position(|h| h.conn.target.id == id));
            // Between units is where a draining pgsplit may end the session.
            let frame = tokio::select! {
                f = self.io.read_frame() => f?,
                () = &mut terminated => {
                    return Err(ClientError::refused(
                        "57P01",
                        "terminating connection due to administrator command (pgsplit is shutting down)",
                    ));
                }
                r = async {
                    match listener {
                        Some(i) => self.conns[i].conn.fill().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(i) = listener {
                        match r {
                            Ok(_) => self.forward_async_messages(i).await?,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            match frame.tag {
                tag::TERMINATE => return Ok(()),
                t if is_unit_message(t) => {
                    let unit = self.collect(frame).await?;
                    self.run_unit(unit).await?;
                }
                // Copy messages after a COPY that already failed: PostgreSQL
                // ignores them too.
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {}
                other => return Err(ProtocolError::UnexpectedTag(char::from(other)).into()),
            }
        }
        Ok(())
    }

    async fn collect(&mut self, first: Frame) -> Result<Unit, ClientError> {
        let mut unit = Unit::default();
        let mut frame = first;
        loop {
            if unit.push(frame, &mut self.st, &self.ctx.classifier)? {
                return Ok(unit);
            }
            frame = self.io.read_frame().await?.ok_or_else(|| {
                ClientError::Gone(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "client left mid-unit",
                ))
            })?;
            if !is_unit_message(frame.tag) {
                if frame.tag == tag::TERMINATE {
                    return Err(ClientError::Gone(std::io::Error::other(
                        "terminated mid-unit",
                    )));
                }
                return Err(ProtocolError::UnexpectedTag(char::from(frame.tag)).into());
            }
        }
    }

    /// The current primary, waiting up to `primary_wait` while there is none.
    async fn primary_id(&self) -> Result<ServerId, ClientError> {
        let deadline = Instant::now() + self.ctx.config().routing.primary_wait;
        loop {
            let state = self.ctx.health.get().primary;
            match state {
                PrimaryState::Known(id) => return Ok(id),
                // Before the first probe, trust the configuration.
                PrimaryState::Unknown => return Ok(self.ctx.configured_primary()),
                PrimaryState::None | PrimaryState::Fenced => {
                    let now = Instant::now();
                    if now >= deadline {
                        let why = if state == PrimaryState::Fenced {
                            "more than one server claims to be primary; writes are refused until that is resolved".to_owned()
                        } else {
                            // Say what is wrong with the configured primary, if known.
                            let snapshot = self.ctx.health.get();
                            let cause = snapshot
                                .server(self.ctx.configured_primary())
                                .and_then(|s| {
                                    s.last_error.as_ref().map(|e| format!("; {}: {e}", s.name))
                                })
                                .unwrap_or_default();
                            format!("no primary server is available{cause}")
                        };
                        return Err(ClientError::refused(
                            "57P03",
                            format!(
                                "{why} (waited {:?})",
                                self.ctx.config().routing.primary_wait
                            ),
                        ));
                    }
                    let wait = (deadline - now).min(Duration::from_millis(100));
                    let _ = tokio::time::timeout(wait, self.ctx.health.changed()).await;
                }
            }
        }
    }

    /// A connection to server `id` carrying every session change so far.
    async fn attach(&mut self, id: ServerId) -> Result<usize, ClientError> {
        // A held connection the server closed (or spoke on unprompted, e.g. a
        // shutdown notice) while the session was idle is replaced, unless it
        // runs the open transaction or the session's LISTEN.
        if let Some(i) = self.conns.iter().position(|h| h.conn.target.id == id)
            && self.st.txn != Some(id)
            && self.listen_conn != Some(id)
            && !self.conns[i].conn.is_idle_and_open()
        {
            tracing::debug!(server = %self.conns[i].conn.target.name, "held server connection went away; replacing it");
            self.conns[i].conn.broken = true;
            self.conns.swap_remove(i);
        }
        let index = match self.conns.iter().position(|h| h.conn.target.id == id) {
            Some(i) => i,
            None => {
                let target = self.ctx.server(id).ok_or_else(|| {
                    ClientError::refused(
                        "08006",
                        format!("server #{} is no longer configured", id.0),
                    )
                })?;
                let started = Instant::now();
                let conn = self.ctx.pools.checkout(&target, &self.login).await;
                let exhausted =
                    matches!(conn, Err(crate::backend::CheckoutError::Exhausted { .. }));
                self.ctx
                    .metrics
                    .checkout(&target.name, started.elapsed(), exhausted);
                let conn = conn?;
                self.conns.push(Held {
                    conn,
                    applied: 0,
                    dirty: false,
                });
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.sync(index).await {
            // A connection that could not take the session's state is not used.
            let held = self.conns.swap_remove(index);
            drop(held);
            return Err(e);
        }
        Ok(index)
    }

    /// Replays the session changes connection `index` has not applied yet, in
    /// one round trip.
    async fn sync(&mut self, index: usize) -> Result<(), ClientError> {
        let held = &mut self.conns[index];
        let log = &self.st.replay;
        if held.applied >= log.len() && held.conn.carried.is_empty() {
            return Ok(());
        }
        // Entries go in as few round trips as possible: one query string, cut
        // before and after a `RESET ALL`/`DISCARD ALL` (DISCARD ALL refuses to
        // run inside the implicit transaction of a multi-statement string).
        let mut batches: Vec<Vec<u8>> = vec![Vec::new()];
        // Startup parameters the connection's previous client left in place
        // go back to the connection's defaults, unless this client sets them.
        for name in std::mem::take(&mut held.conn.carried) {
            let ours = self.st.startup.iter().any(|e| {
                e.startup
                    .as_ref()
                    .is_some_and(|(k, _)| k.eq_ignore_ascii_case(&name))
            });
            if !ours && let Some(batch) = batches.last_mut() {
                if !batch.is_empty() {
                    batch.extend_from_slice(b"; ");
                }
                batch.extend_from_slice(reset_statement(&name).as_bytes());
            }
        }
        let mut drops = false;
        let mut ran_any = false;
        for entry in &log[held.applied..] {
            // A startup setting the connection already reports needs no SET,
            // but only while nothing else has run before it: after a RESET ALL
            // the reported value is stale.
            // For a startup setting the server reports: whether it reports
            // this very value.
            let reported = entry.startup.as_ref().and_then(|(k, v)| {
                held.conn
                    .params
                    .iter()
                    .find(|(pk, _)| pk.eq_ignore_ascii_case(k.as_bytes()))
                    .map(|(_, pv)| pv.as_slice() == v.as_bytes())
            });
            if !ran_any && reported == Some(true) {
                continue;
            }
            ran_any = true;
            // A startup setting the server reports stays visible in `params`;
            // anything else is state only `DISCARD ALL` can clear.
            held.dirty |= reported.is_none();
            if entry.resets_all {
                batches.push(entry.sql.to_vec());
                batches.push(Vec::new());
            } else if let Some(batch) = batches.last_mut() {
                if !batch.is_empty() {
                    batch.extend_from_slice(b"; ");
                }
                batch.extend_from_slice(&entry.sql);
            }
            drops |= entry.drops_prepared;
        }
        let applied = log.len();
        for sql in batches.iter().filter(|b| !b.is_empty()) {
            match held.conn.run_internal(sql).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    held.conn.broken = true;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if drops {
            held.conn.prepared.clear();
            held.conn.unnamed = None;
        }
        held.applied = applied;
        Ok(())
    }

    fn held_replica(&self, primary: Option<ServerId>) -> Option<ServerId> {
        self.conns
            .iter()
            .map(|h| h.conn.target.id)
            .find(|id| Some(*id) != primary && *id != self.ctx.configured_primary())
    }

    /// Chooses the server for a unit and attaches to it, falling back to the
    /// primary when a replica cannot be used.
    async fn place(&mut self, unit: &Unit, primary_only: bool) -> Result<Placement, ClientError> {
        if let Some(id) = self.st.txn {
            if !self.conns.iter().any(|h| h.conn.target.id == id) {
                self.st.txn = None;
                return Err(ClientError::refused(
                    "08006",
                    "the server connection running this transaction was lost",
                ));
            }
            let index = self.attach(id).await?;
            return Ok(Placement {
                index,
                reason: Reason::Transaction,
            });
        }
        let class = unit.class();
        let (target, reason) = if !unit.complete {
            // Sent before its Sync: later statements of the unit are unknown.
            (Target::Primary, Reason::Write)
        } else if primary_only {
            (Target::Primary, Reason::ReplicaDown)
        } else {
            let snapshot = self.ctx.health.get();
            let primary = match snapshot.primary {
                PrimaryState::Known(id) => Some(id),
                _ => None,
            };
            self.spin = self.spin.wrapping_add(1);
            let view = SessionView {
                txn: None,
                pinned: self.st.pinned,
                mode: self.st.mode,
                floor: self.floor(),
                held_replica: self.held_replica(primary),
                spin: self.spin,
            };
            match (route(&class, &view, &snapshot.replicas), view.floor) {
                // Only the floor kept the read off the replicas: positions
                // learned on demand may be ahead of the probe's, and else the
                // replica is asked.
                ((Target::Primary, Reason::ReadYourWrites), Some(floor)) => {
                    let replicas = self.ctx.replay.raise(&snapshot.replicas);
                    match route(&class, &view, &replicas) {
                        (Target::Primary, Reason::ReadYourWrites) => {
                            self.wait_for_replica(floor, &view, &replicas).await
                        }
                        decided => decided,
                    }
                }
                (decided, _) => decided,
            }
        };
        if let Target::Replica(id) = target {
            match self.attach(id).await {
                Ok(index) => return Ok(Placement { index, reason }),
                Err(e) => {
                    // A session change the replica refused to replay would
                    // fail again on every read: keep this session on the primary.
                    if matches!(
                        e,
                        ClientError::Backend(crate::backend::BackendError::Server { .. })
                    ) && self.st.pinned.is_none()
                    {
                        tracing::info!(error = %e, "replica refused the session's settings; session pinned to the primary");
                        self.st.pinned = Some(PinReason::SessionChange);
                    } else {
                        tracing::debug!(error = %e, "replica unavailable, reading from the primary");
                    }
                }
            }
        }
        let primary = self.primary_id().await?;
        let index = self.attach(primary).await?;
        let reason = if matches!(target, Target::Replica(_)) {
            Reason::ReplicaDown
        } else {
            reason
        };
        Ok(Placement { index, reason })
    }

    /// `SET pgsplit.route = ...` / `RESET pgsplit.route` sent alone as a simple
    /// query: pgsplit's own setting, answered here and never sent to a server
    /// (PostgreSQL would reject `= primary`, a reserved word). Inside a
    /// transaction it takes effect on commit, like a SET.
    async fn set_route_locally(&mut self, unit: &Unit) -> Result<bool, ClientError> {
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
            None => {
                self.st.mode = mode;
                TxStatus::Idle
            }
            Some(id) => {
                let failed = self
                    .conns
                    .iter()
                    .any(|h| h.conn.target.id == id && h.conn.status == TxStatus::Failed);
                if failed {
                    let mut msg = BytesMut::new();
                    msg.extend_from_slice(&build::error_response(
                        build::Severity::Error,
                        "25P02",
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

    /// After `RESET ALL` / `DISCARD ALL` on connection `index`: puts the client's
    /// startup parameters back (PostgreSQL resets to them, not to the server
    /// defaults) and tells the client the values it now has.
    async fn reapply_startup(&mut self, index: usize) -> Result<(), ClientError> {
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
        let conn = &mut self.conns[index].conn;
        let before = conn.params.clone();
        conn.run_internal(&sql).await??;
        let mut msg = BytesMut::new();
        for (k, v) in &conn.params {
            if before.get(k) != Some(v) {
                msg.extend_from_slice(&build::parameter_status(k, v));
            }
        }
        self.io.write(&msg).await
    }

    /// A unit of only Close/Sync/Flush outside a transaction (drivers send one
    /// whenever they drop a prepared statement) needs no server: the replies
    /// are composed here, and the statement is closed on each connection that
    /// has it ahead of that connection's next unit. This keeps such units
    /// working while there is no primary, and saves a round trip.
    async fn answer_closes_locally(&mut self, unit: &Unit) -> Result<bool, ClientError> {
        let statement_free = unit
            .frames
            .iter()
            .all(|f| matches!(f.tag, tag::CLOSE | tag::SYNC | tag::FLUSH));
        if !unit.complete || self.st.txn.is_some() || !statement_free {
            return Ok(false);
        }
        let mut reply = BytesMut::new();
        for frame in &unit.frames {
            match frame.tag {
                tag::CLOSE => {
                    let (kind, name) = crate::protocol::fields::target(frame.body(), "Close")?;
                    if kind == b'S' {
                        for held in &mut self.conns {
                            let conn = &mut held.conn;
                            if name.is_empty() {
                                conn.unnamed = None;
                            } else if let Some((key, _)) = conn.prepared.remove_entry(name) {
                                conn.pending_close.push(key);
                            }
                        }
                    }
                    reply.extend_from_slice(&build::close_complete());
                }
                tag::SYNC => reply.extend_from_slice(&build::ready_for_query(TxStatus::Idle)),
                _ => {}
            }
        }
        self.io.write(&reply).await?;
        Ok(true)
    }

    async fn run_unit(&mut self, unit: Unit) -> Result<(), ClientError> {
        if self.set_route_locally(&unit).await? || self.answer_closes_locally(&unit).await? {
            return Ok(());
        }
        let mut retried = false;
        loop {
            let placement = match self.place(&unit, retried).await {
                Ok(p) => p,
                Err(e @ (ClientError::Gone(_) | ClientError::Protocol(_))) => return Err(e),
                Err(e) => return self.fail_unit(&unit, &e).await,
            };
            let index = placement.index;
            let id = self.conns[index].conn.target.id;
            let on_primary = match self.current_primary() {
                Some(p) => p == id,
                None => id == self.ctx.configured_primary(),
            };
            let class = unit.class();
            // An open unit continues with statements not seen yet.
            self.conns[index].dirty |= !unit.complete || !leaves_no_state(&class);
            let retryable = !on_primary
                && !retried
                && unit.complete
                && self.st.txn.is_none()
                && class.kind == Kind::Read;
            let records_floor = on_primary && self.tracks_floor();
            let hold_ready = unit.resets_all
                || (records_floor
                    && if self.st.txn.is_some() {
                        super::floor_probe::may_end_transaction(&unit, &self.st)
                    } else {
                        class.kind == Kind::Write
                    });
            let mode = RelayMode {
                open: !unit.complete,
                extended: unit.frames.first().is_some_and(|f| f.tag != tag::QUERY),
                // Only a unit that may commit a write needs its ReadyForQuery held
                // back until the read-your-writes floor is recorded.
                hold_ready,
                // The floor query rides in the same flight when that is
                // invisible to the client (see `floor_probe`).
                floor_probe: hold_ready
                    && records_floor
                    && super::floor_probe::may_follow(&unit, &self.st, self.st.txn.is_some()),
                retry_conflict: retryable,
            };
            let started = Instant::now();
            match self.forward(&unit, index, mode).await {
                Ok(outcome) if outcome.retry_conflict => {
                    tracing::debug!(server = %self.conns[index].conn.target.name, "recovery conflict on a replica; retrying on the primary");
                    self.ctx.metrics.retry("recovery_conflict");
                    self.conns[index].conn.status = outcome.status;
                    retried = true;
                }
                Ok(outcome) => {
                    // Only a transaction that may have written leaves a floor:
                    // SHOW, SET, a read-only transaction or a bare Sync do not.
                    let wrote = (class.kind == Kind::Write && outcome.wrote) || self.txn_wrote;
                    let committed_write = mode.hold_ready
                        && wrote
                        && outcome.status == TxStatus::Idle
                        && outcome.error.is_none()
                        && !outcome.rolled_back;
                    self.txn_wrote = outcome.status != TxStatus::Idle && wrote;
                    self.learn(&unit, index, &outcome);
                    if committed_write {
                        match outcome.probe {
                            Some(lsn) => self.set_floor(lsn),
                            None => self.record_floor(index).await,
                        }
                    }
                    if unit.resets_all
                        && outcome.error.is_none()
                        && outcome.status == TxStatus::Idle
                    {
                        self.reapply_startup(index).await?;
                    }
                    if mode.hold_ready {
                        let mut msg = outcome.tail;
                        msg.extend_from_slice(&build::ready_for_query(outcome.status));
                        self.io.write(&msg).await?;
                    }
                    self.ctx
                        .metrics
                        .unit(placement.reason, on_primary, started.elapsed());
                    return Ok(());
                }
                Err(RelayError::Client(e)) => return Err(e),
                Err(RelayError::Server {
                    error,
                    sent_to_client,
                }) => {
                    // The broken connection goes; the pool discards it.
                    self.conns.swap_remove(index);
                    if self.st.txn == Some(id) {
                        self.st.txn = None;
                    }
                    if retryable && !sent_to_client {
                        tracing::info!(server = %id.0, %error, "read failed on a replica before any reply; retrying on the primary");
                        self.ctx.metrics.retry("replica_failed");
                        retried = true;
                        continue;
                    }
                    return Err(ClientError::Backend(error));
                }
            }
        }
    }

    fn tracks_floor(&self) -> bool {
        self.ctx.config().routing.read_your_writes != ReadYourWrites::Off
            && self.ctx.servers().list.len() > 1
    }

    /// Records the WAL position after a committed write as this session's (and,
    /// with `pod`, every session's) read-your-writes floor.
    async fn record_floor(&mut self, index: usize) {
        match self.conns[index].conn.wal_insert_lsn().await {
            Ok(lsn) => self.set_floor(lsn),
            Err(e) => {
                // Unknown position: keep this session's reads on the primary.
                tracing::debug!(error = %e, "cannot read the WAL position after a write");
                self.st.floor = Some(Lsn(u64::MAX));
            }
        }
    }

    /// A read held back only by its read-your-writes floor: asks a usable
    /// replica how far it has replayed, and waits up to
    /// `read_your_writes_wait` for it to pass the floor (see
    /// `backend::replay`). The primary serves the read if it does not.
    async fn wait_for_replica(
        &self,
        floor: Lsn,
        view: &SessionView,
        replicas: &[crate::route::router::ReplicaStatus],
    ) -> (Target, Reason) {
        let fallback = (Target::Primary, Reason::ReadYourWrites);
        let wait = self.ctx.config().routing.read_your_writes_wait;
        // An unknown position (u64::MAX) is never reached.
        if wait.is_zero() || floor == Lsn(u64::MAX) {
            return fallback;
        }
        let usable: Vec<_> = replicas.iter().filter(|r| r.up && !r.lagging).collect();
        let Some(choice) = usable
            .iter()
            .find(|r| Some(r.id) == view.held_replica)
            .or_else(|| usable.get(view.spin % usable.len().max(1)))
        else {
            return fallback;
        };
        let Some(target) = self.ctx.server(choice.id) else {
            return fallback;
        };
        let login = crate::backend::monitor::login(&target);
        let started = Instant::now();
        let outcome = self.ctx.replay.catch_up(&target, &login, floor, wait).await;
        let reached = outcome == crate::backend::replay::CatchUp::Reached;
        self.ctx.metrics.replay_wait(started.elapsed(), reached);
        if reached {
            (Target::Replica(choice.id), Reason::Read)
        } else {
            fallback
        }
    }

    /// Raises this session's (and, with `pod`, every session's) floor to the
    /// primary's insert position `lsn`, read after a commit.
    fn set_floor(&mut self, lsn: Lsn) {
        let lsn = lsn.record_boundary();
        self.st.floor = Some(self.st.floor.map_or(lsn, |f| f.max(lsn)));
        if self.ctx.config().routing.read_your_writes == ReadYourWrites::Pod {
            self.ctx.pod_floor.fetch_max(lsn.0, Ordering::AcqRel);
        }
    }

    /// The read-your-writes floor that applies to this session now.
    fn floor(&self) -> Option<Lsn> {
        match self.ctx.config().routing.read_your_writes {
            ReadYourWrites::Off => None,
            ReadYourWrites::Session => self.st.floor,
            ReadYourWrites::Pod => {
                let pod = self.ctx.pod_floor.load(Ordering::Acquire);
                let pod = (pod > 0).then_some(Lsn(pod));
                self.st.floor.max(pod)
            }
        }
    }

    fn current_primary(&self) -> Option<ServerId> {
        match self.ctx.health.get().primary {
            PrimaryState::Known(id) => Some(id),
            _ => None,
        }
    }

    /// Sends the unit to connection `index` and relays the replies.
    async fn forward(
        &mut self,
        unit: &Unit,
        index: usize,
        mode: RelayMode,
    ) -> Result<Outcome, RelayError> {
        let Session {
            io,
            conns,
            st,
            cancel,
            ..
        } = self;
        let conn = &mut conns[index].conn;
        let mut exp = Expect::default();
        let mut out = BytesMut::with_capacity(unit.bytes + 64);
        relay::stage_pending_closes(conn, &mut out, &mut exp);
        for frame in &unit.frames {
            relay::stage(frame, st, conn, &mut out, &mut exp)
                .map_err(|e| RelayError::Client(e.into()))?;
        }
        if mode.floor_probe {
            out.extend_from_slice(&build::query(super::floor_probe::SQL));
        }
        cancel.set(Some(CancelTarget {
            server: conn.target.clone(),
            key: conn.key,
        }));
        let result = relay::relay(io, conn, st, &mut exp, mode, out).await;
        cancel.set(None);
        relay::settle(&mut exp, st, conn);
        result
    }

    /// Updates the session from a finished unit: transaction, session changes,
    /// pins, prepared statements dropped.
    fn learn(&mut self, unit: &Unit, index: usize, outcome: &Outcome) {
        let class = unit.class();
        let held = &mut self.conns[index];
        held.conn.status = outcome.status;
        let ok = outcome.error.is_none();
        let was_applied = held.applied == self.st.replay.len();
        if ok {
            self.st.pending.extend(unit.session_changes.iter().cloned());
        }
        if outcome.status == TxStatus::Idle {
            self.st.txn = None;
            self.st.portals.clear();
            self.st.end_transaction(!outcome.rolled_back);
            // This connection ran the changes just logged.
            if was_applied {
                held.applied = self.st.replay.len();
            }
        } else {
            self.st.txn = Some(held.conn.target.id);
        }
        if ok {
            if class.pin == Some(PinReason::Listen) {
                self.listen_conn = Some(held.conn.target.id);
            }
            if let Some(pin) = class.pin
                && pin != PinReason::Hint
                && self.st.pinned.is_none()
            {
                tracing::debug!(reason = pin.as_str(), "session pinned to the primary");
                self.st.pinned = Some(pin);
            }
            if class.session_effect && class.kind != Kind::Session && self.st.pinned.is_none() {
                self.st.pinned = Some(PinReason::SessionChange);
            }
            if let Some(mode) = class.set_route {
                self.st.mode = mode;
            }
            if class.drops_prepared {
                self.st.statements.clear();
                self.st.unnamed = None;
                held.conn.prepared.clear();
                held.conn.unnamed = None;
            }
        }
    }

    /// Relays what a server sends between units (NotificationResponse,
    /// NoticeResponse, ParameterStatus); anything else there is a protocol
    /// breach by the server.
    async fn forward_async_messages(&mut self, index: usize) -> Result<(), ClientError> {
        let conn = &mut self.conns[index].conn;
        let mut out = BytesMut::new();
        loop {
            match crate::protocol::decode_frame(
                &mut conn.rbuf,
                crate::backend::conn::MAX_SERVER_MESSAGE,
            ) {
                Ok(Some(f)) => match f.tag {
                    b'A' | tag::backend::NOTICE_RESPONSE => out.extend_from_slice(&f.bytes),
                    tag::backend::PARAMETER_STATUS => {
                        conn.note_parameter(&f)?;
                        out.extend_from_slice(&f.bytes);
                    }
                    other => {
                        conn.broken = true;
                        return Err(conn
                            .protocol(ProtocolError::UnexpectedTag(char::from(other)))
                            .into());
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    conn.broken = true;
                    return Err(conn.protocol(e).into());
                }
            }
        }
        if !out.is_empty() {
            self.io.write(&out).await?;
        }
        Ok(())
    }

    /// Tells the client a unit could not run and keeps the session going. An
    /// unfinished extended unit is drained to its Sync first, as a server would.
    async fn fail_unit(&mut self, unit: &Unit, e: &ClientError) -> Result<(), ClientError> {
        tracing::warn!(code = e.sqlstate(), error = %e, "statement failed in pgsplit");
        self.ctx.metrics.error(e.sqlstate());
        if !unit.complete {
            while let Some(f) = self.io.read_frame().await? {
                if matches!(f.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
                    break;
                }
            }
        }
        let status = if self.st.txn.is_some() {
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

    /// Resets and returns every server connection (or drops the ones whose
    /// state is unknown).
    ///
    /// A connection this session used only for read-only work is returned
    /// without `DISCARD ALL` (a round trip per connection per client, most of
    /// the cost of a short-lived client): it differs from a fresh one only in
    /// the reported startup parameters this client set, which the next client's
    /// first `sync` sets or resets.
    async fn release(&mut self) {
        let startup: Vec<String> = self
            .st
            .startup
            .iter()
            .filter_map(|e| e.startup.as_ref().map(|(k, _)| k.clone()))
            .collect();
        for mut held in self.conns.drain(..) {
            if !held.dirty && held.conn.is_clean() {
                held.conn.carried.clone_from(&startup);
                continue;
            }
            if let Err(e) = held.conn.reset().await {
                tracing::debug!(error = %e, "server connection not reusable");
            }
        }
    }
}
