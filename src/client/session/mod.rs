//! The session loop: read a unit, plan it (`route::plan`), make sure the chosen
//! server connection carries the session's state, forward, relay, learn.
//!
//! The loop is here; the parts it uses each have a file: the server
//! connections a session holds ([`held`]), running one unit ([`run`]), the
//! read-your-writes floor ([`floor`]) and what pgsplit answers itself
//! ([`local`]).
//!
//! Session pooling: the session keeps each server connection it uses until the
//! client leaves (the replica's only once it first reads). Transaction
//! pooling: [`Session::attach`] checks a connection out for a unit (and
//! replays the session's settings on it), and the loop hands it back after
//! the unit unless a transaction is open or the session left state on it
//! that cannot move (`held::release_between_units`).

mod floor;
mod held;
mod local;
mod optimistic;
mod run;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::cancel::CancelSlot;
use super::handshake::Hello;
use super::services::SessionDeps;
use super::state::SessionState;
use super::unit::{Unit, is_unit_message};
use super::{ClientError, ClientIo};
use crate::backend::health::PrimaryState;
use crate::backend::{Login, ServerId};
use crate::config::PoolMode;
use crate::lifecycle::Phase;
use crate::protocol::{Frame, ProtocolError, TxStatus, build, tag};
use held::HeldConns;

pub(crate) struct Session {
    ctx: Arc<SessionDeps>,
    io: ClientIo,
    login: Login,
    st: SessionState,
    conns: HeldConns,
    cancel: Arc<CancelSlot>,
    /// Rotates the choice among equally good replicas.
    spin: usize,
    /// The pool mode when the session began (a reload applies to new
    /// sessions).
    pool_mode: PoolMode,
    /// The session's connection pin is in the metrics.
    pin_counted: bool,
    /// Its entry among the open sessions (`SHOW CLIENTS`).
    client: Arc<crate::client::registry::ClientInfo>,
    /// Its optimistic transaction, if one is open.
    opt: optimistic::Optimistic,
}

impl Session {
    pub(crate) fn new(
        ctx: Arc<SessionDeps>,
        hello: Hello,
        cancel: Arc<CancelSlot>,
        client: Arc<crate::client::registry::ClientInfo>,
    ) -> Self {
        let mut st = SessionState::new(hello.mode, &hello.settings);
        let config = ctx.config();
        let pool_mode = config.pool.mode;
        if pool_mode == PoolMode::Transaction {
            let n = config.pool.prepared_statements;
            st.statement_cache = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        Session {
            login: Login {
                user: hello.user,
                database: hello.database,
            },
            io: hello.io,
            st,
            conns: HeldConns::default(),
            cancel,
            spin: rand::random::<u32>() as usize,
            pool_mode,
            pin_counted: false,
            client,
            opt: optimistic::Optimistic::default(),
            ctx,
        }
    }

    /// Finishes the login: the primary's parameters and our cancel key, then
    /// serves the client until it leaves. Server connections are reset and
    /// returned to their pools on the way out, whatever happened.
    pub(crate) async fn run(mut self, pid: i32, secret: &[u8]) -> Result<(), ClientError> {
        let result = self.serve(pid, secret).await;
        if let Err(e) = &result
            && !matches!(e, ClientError::Gone(_))
        {
            let _ = self.io.write(&e.fatal_response()).await;
        }
        self.release().await;
        result
    }

    async fn serve(&mut self, pid: i32, secret: &[u8]) -> Result<(), ClientError> {
        let mut hello = BytesMut::new();
        match self.remembered_greeting() {
            Some(params) => {
                for (k, v) in params.iter() {
                    hello.extend_from_slice(&build::parameter_status(k, v));
                }
            }
            None => {
                let primary = self.primary_id().await?;
                self.attach(primary).await?;
                let mut params: Vec<_> = self.conns.held(primary)?.conn.params().iter().collect();
                params.sort();
                for (k, v) in params {
                    hello.extend_from_slice(&build::parameter_status(k, v));
                }
            }
        }
        hello.extend_from_slice(&build::backend_key_data(pid, secret));
        hello.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        self.between_units().await;
        self.io.write(&hello).await?;

        // One waiter for the whole session, not one registered per message.
        let mut terminated = std::pin::pin!(self.ctx.lifecycle.reached(Phase::Terminating));
        loop {
            // A LISTENing session gets notifications while idle, as it would
            // from PostgreSQL: watch the connection that ran the LISTEN too.
            let listener = self.st.listen.filter(|id| self.conns.holds(*id));
            // Between units is where a draining pgsplit may end the session.
            let frame = tokio::select! {
                f = self.io.read_frame() => f?,
                () = &mut terminated => {
                    return Err(ClientError::ShuttingDown);
                }
                r = async {
                    match listener.and_then(|id| self.conns.get_mut(id)) {
                        Some(held) => held.conn.fill().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(id) = listener {
                        match r {
                            Ok(_) => self.forward_async_messages(id).await?,
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
                    self.client.began();
                    // New work waits while the console has pgsplit paused;
                    // a transaction already open goes on, to finish.
                    while self.st.txn.is_none() && self.ctx.pause.is_paused() {
                        self.client.waits();
                        // A shutdown does not wait for RESUME.
                        tokio::select! {
                            () = self.ctx.pause.resumed() => {}
                            () = &mut terminated => return Err(ClientError::ShuttingDown),
                        }
                        self.client.began();
                    }
                    self.run_unit(unit).await?;
                    self.between_units().await;
                    self.report();
                }
                // Copy messages after a COPY that already failed: PostgreSQL
                // ignores them too.
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {}
                other => return Err(ProtocolError::UnexpectedTag(char::from(other)).into()),
            }
        }
        Ok(())
    }

    /// What the session does now, for the console's `SHOW CLIENTS`.
    fn report(&self) {
        use crate::client::registry::ClientState;
        let server = self.st.txn.or_else(|| self.conns.ids().next());
        let state = match self.st.txn.and_then(|id| self.conns.get(id)) {
            Some(held) if held.conn.status() == TxStatus::Failed => ClientState::FailedTransaction,
            Some(_) => ClientState::InTransaction,
            None if self.opt.deferred() => ClientState::InTransaction,
            None => ClientState::Idle,
        };
        self.client.ended(state, self.st.pinned, server);
    }

    /// Transaction pooling hands connections back between units.
    #[inline]
    async fn between_units(&mut self) {
        if self.pool_mode == PoolMode::Transaction {
            self.release_between_units().await;
        }
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

    /// While the primary does not answer its probes: the parameters it
    /// reported when pgsplit last logged in to it, so that a new client is
    /// greeted at once and its reads go to a replica (a frozen primary must
    /// not hold up reads, new sessions' included). `None` when the primary
    /// answers (it greets the client itself, as always) or was never met.
    fn remembered_greeting(&self) -> Option<crate::backend::pool::Params> {
        let health = self.ctx.health.get();
        if health.writable_primary().is_some() {
            return None;
        }
        let id = match health.primary {
            PrimaryState::Known(id) => id,
            PrimaryState::None => self.ctx.configured_primary(),
            PrimaryState::Unknown | PrimaryState::Fenced => return None,
        };
        let target = self.ctx.server(id)?;
        self.ctx.pools.greeting(&target, &self.login)
    }

    /// The current primary, waiting up to `primary_wait` while there is none.
    async fn primary_id(&self) -> Result<ServerId, ClientError> {
        let deadline = Instant::now() + self.ctx.config().routing.primary_wait;
        loop {
            let snapshot = self.ctx.health.get();
            let state = snapshot.primary;
            match state {
                PrimaryState::Known(id) if snapshot.primary_answers => return Ok(id),
                // Before the first probe, trust the configuration.
                PrimaryState::Unknown => return Ok(self.ctx.configured_primary()),
                // A known primary that missed its last probe may be frozen:
                // a write sent to it could wait as long as the freeze.
                PrimaryState::Known(_) | PrimaryState::None | PrimaryState::Fenced => {
                    let now = Instant::now();
                    if now >= deadline {
                        // What is wrong with the configured primary, if
                        // known: for the log, not the client.
                        let cause = (state != PrimaryState::Fenced)
                            .then(|| {
                                let primary = match state {
                                    PrimaryState::Known(id) => id,
                                    _ => self.ctx.configured_primary(),
                                };
                                snapshot.server(primary).and_then(|s| {
                                    s.last_error.as_ref().map(|e| format!("{}: {e}", s.name))
                                })
                            })
                            .flatten();
                        let waited = self.ctx.config().routing.primary_wait;
                        tracing::warn!(
                            ?waited,
                            ?state,
                            cause = cause.as_deref().unwrap_or("unknown"),
                            "no primary for a session"
                        );
                        return Err(ClientError::NoPrimary {
                            fenced: state == PrimaryState::Fenced,
                            waited,
                        });
                    }
                    let wait = (deadline - now).min(Duration::from_millis(100));
                    let _ = tokio::time::timeout(wait, self.ctx.health.changed()).await;
                }
            }
        }
    }

    /// Relays what a server sends between units (NotificationResponse,
    /// NoticeResponse, ParameterStatus); anything else there is a protocol
    /// breach by the server.
    async fn forward_async_messages(&mut self, id: ServerId) -> Result<(), ClientError> {
        let conn = &mut self.conns.held(id)?.conn;
        let mut out = BytesMut::new();
        loop {
            match conn.take_buffered() {
                Ok(Some(f)) => match f.tag {
                    b'A' | tag::backend::NOTICE_RESPONSE => out.extend_from_slice(&f.bytes),
                    tag::backend::PARAMETER_STATUS => {
                        conn.note_parameter(&f)?;
                        out.extend_from_slice(&f.bytes);
                    }
                    other => {
                        conn.mark_broken();
                        return Err(conn
                            .protocol(ProtocolError::UnexpectedTag(char::from(other)))
                            .into());
                    }
                },
                Ok(None) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if !out.is_empty() {
            self.io.write(&out).await?;
        }
        Ok(())
    }
}
