//! The server connections a session holds, one per server at most, found by
//! server id: attaching (checkout, then replaying the session's changes),
//! and returning them to their pools when the client leaves.

use tokio::time::Instant;

use super::Session;
use crate::backend::{Pooled, ServerId};
use crate::client::ClientError;
use crate::client::state::SessionState;
use crate::client::unit::Unit;
use crate::config::PoolMode;
use crate::route::class::{Class, Kind, PinReason};
use crate::route::classify::{SettingEffect, setting_effect};

pub(super) struct Held {
    /// The server `conn` is to, kept beside it: the lookup key, read on every
    /// unit without following the connection's pointers.
    id: ServerId,
    pub(super) conn: Pooled,
    /// How much of the session's replay log this connection has applied.
    pub(super) applied: usize,
    /// This session ran something here that may leave state on the connection
    /// beyond reported parameters (see [`leaves_no_state`]): it needs
    /// `DISCARD ALL` before another client may use it.
    pub(super) dirty: bool,
    /// Settings statements to send ahead of the next unit, in its flight
    /// (see [`Session::attach_for_read`]); the connection's settings already
    /// count them.
    pub(super) setup: Option<Vec<u8>>,
}

/// The held connections, keyed by server. A session uses one or two servers
/// (the primary and a replica), so a short list beats a map.
#[derive(Default)]
pub(super) struct HeldConns(Vec<Held>);

impl HeldConns {
    #[inline]
    pub(super) fn holds(&self, id: ServerId) -> bool {
        self.0.iter().any(|h| h.id == id)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: ServerId) -> Option<&mut Held> {
        self.0.iter_mut().find(|h| h.id == id)
    }

    pub(super) fn get(&self, id: ServerId) -> Option<&Held> {
        self.0.iter().find(|h| h.id == id)
    }

    /// The connection to `id`, which the caller attached: its absence is a
    /// lost connection.
    #[inline]
    pub(super) fn held(&mut self, id: ServerId) -> Result<&mut Held, ClientError> {
        self.get_mut(id).ok_or(ClientError::TransactionLost)
    }

    /// The connections to `a` and to `b` (two servers), at once: `None` if
    /// `a` is not held; the second `None` if `b` is not.
    pub(super) fn pair_mut(
        &mut self,
        a: ServerId,
        b: ServerId,
    ) -> Option<(&mut Held, Option<&mut Held>)> {
        let i = self.0.iter().position(|h| h.id == a)?;
        let j = self.0.iter().position(|h| h.id == b).filter(|j| *j != i);
        Some(match j {
            None => (self.0.get_mut(i)?, None),
            Some(j) if i < j => {
                let (left, right) = self.0.split_at_mut(j);
                (left.get_mut(i)?, right.first_mut())
            }
            Some(j) => {
                let (left, right) = self.0.split_at_mut(i);
                (right.first_mut()?, left.get_mut(j))
            }
        })
    }

    /// Lets go of the connection to `id`: the pool resets or discards it.
    pub(super) fn remove(&mut self, id: ServerId) -> Option<Held> {
        let i = self.0.iter().position(|h| h.id == id)?;
        Some(self.0.swap_remove(i))
    }

    fn insert(&mut self, held: Held) {
        self.0.push(held);
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.0.iter().map(|h| h.id)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.0.iter_mut()
    }

    fn drain(&mut self) -> impl Iterator<Item = Held> + '_ {
        self.0.drain(..)
    }
}

/// Whether a unit of this class leaves nothing on a server connection once its
/// transaction ends.
///
/// Session pooling: provably read-only statements (the replica test: no
/// volatile function, no session effect, no cursor) and transaction control.
/// Transaction pooling counts plain writes too: what a statement can leave
/// that cannot move to another connection is tracked as the session's
/// `conn_state`, and the session keeps its connections while it holds any
/// (and they are reset when it leaves). A write that leaves none of it
/// leaves only its sequences' `currval`/`lastval`, as under PgBouncer.
pub(super) fn leaves_no_state(class: &Class, mode: PoolMode) -> bool {
    let kind = match mode {
        PoolMode::Session => matches!(
            class.kind,
            Kind::Read | Kind::Begin { .. } | Kind::TxnControl
        ),
        PoolMode::Transaction => {
            matches!(
                class.kind,
                Kind::Read | Kind::Begin { .. } | Kind::TxnControl | Kind::Write
            ) && class.parsed
                && class.leaves.is_empty()
        }
    };
    kind && !class.session_effect
        && !class.drops_prepared
        && class.pin.is_none_or(|p| p == PinReason::Hint)
}

/// Whether a unit changes nothing on a connection but settings (`SET`,
/// `RESET`, `RESET ALL`): once committed, the connection's settings say what
/// it left (see `backend::settings`), and the next client changes what
/// differs, so the connection needs no `DISCARD ALL`.
pub(super) fn only_settings(unit: &Unit, class: &Class, st: &SessionState) -> bool {
    class.kind == Kind::Session
        && class.parsed
        && class.leaves.is_empty()
        && !class.drops_prepared
        && class.pin.is_none_or(|p| p == PinReason::Hint)
        && !st.opaque
        && !unit.session_changes.is_empty()
        && unit.session_changes.iter().all(|e| {
            !matches!(
                setting_effect(&String::from_utf8_lossy(&e.sql)),
                SettingEffect::Other
            )
        })
}

impl Session {
    /// A connection to server `id` carrying every session change so far.
    pub(super) async fn attach(&mut self, id: ServerId) -> Result<(), ClientError> {
        self.attach_with(id, false).await
    }

    /// [`Session::attach`] for a read that may run again elsewhere: settings
    /// the connection lacks are not sent in a round trip of their own but
    /// ahead of the read, in its flight. Should they fail there, the read's
    /// answer is thrown away and it runs on the primary (see
    /// `Outcome::setup_failed`).
    pub(super) async fn attach_for_read(&mut self, id: ServerId) -> Result<(), ClientError> {
        self.attach_with(id, true).await
    }

    async fn attach_with(&mut self, id: ServerId, defer: bool) -> Result<(), ClientError> {
        // A held connection the server closed (or spoke on unprompted, e.g. a
        // shutdown notice) while the session was idle is replaced, unless it
        // runs the open transaction or the session's LISTEN.
        let keep = self.st.txn == Some(id) || self.st.listen == Some(id);
        let replay_len = self.st.replay.len();
        let needs_checkout = match self.conns.get_mut(id) {
            Some(held) => {
                if keep || held.conn.is_idle_and_open() {
                    // The common case, one lookup: held and up to date.
                    if held.applied >= replay_len && held.conn.has_settings(&self.st.desired) {
                        return Ok(());
                    }
                    false
                } else {
                    tracing::debug!(server = %held.conn.target().name, "held server connection went away; replacing it");
                    held.conn.mark_broken();
                    true
                }
            }
            None => true,
        };
        if needs_checkout {
            self.conns.remove(id);
            self.checkout(id).await?;
        }
        if let Err(e) = self.sync(id, defer).await {
            // A connection that could not take the session's state is not used.
            self.conns.remove(id);
            return Err(e);
        }
        Ok(())
    }

    /// Takes a connection to `id` from its pool.
    async fn checkout(&mut self, id: ServerId) -> Result<(), ClientError> {
        let target = self.ctx.server(id).ok_or(ClientError::ServerRemoved)?;
        let started = Instant::now();
        let waiting = self.ctx.metrics.waiting_for_checkout();
        let conn = self.ctx.pools.checkout(&target, &self.login).await;
        drop(waiting);
        let exhausted = matches!(conn, Err(crate::backend::CheckoutError::Exhausted { .. }));
        self.ctx
            .metrics
            .checkout(&target.name, started.elapsed(), exhausted);
        self.conns.insert(Held {
            id,
            conn: conn?,
            applied: 0,
            dirty: false,
            setup: None,
        });
        Ok(())
    }

    /// Gives the connection to `id` the session's settings, in one round
    /// trip at most: only what differs from the settings it has, or (for a
    /// session whose log is more than settings) the log entries it has not
    /// applied yet.
    async fn sync(&mut self, id: ServerId, defer: bool) -> Result<(), ClientError> {
        let held = self.conns.held(id)?;
        let st = &self.st;
        let log_len = st.replay.len();
        if held.applied >= log_len && held.conn.has_settings(&st.desired) {
            return Ok(());
        }
        if st.opaque {
            return self.replay_log(id).await;
        }
        let mut sql = Vec::new();
        let conn = &held.conn;
        conn.settings().diff(
            &st.desired,
            |name| {
                conn.params()
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| v.as_slice())
            },
            &mut sql,
        );
        if !sql.is_empty() {
            if defer {
                held.setup = Some(sql);
            } else {
                run_setup(&mut held.conn, &sql).await?;
            }
        }
        held.conn.set_settings(&st.desired);
        held.applied = log_len;
        Ok(())
    }

    /// [`Session::sync`] for a session whose log is more than settings:
    /// replays what the connection has not applied, after resetting what a
    /// previous client left. The connection is reset before another client
    /// gets it.
    async fn replay_log(&mut self, id: ServerId) -> Result<(), ClientError> {
        let held = self.conns.held(id)?;
        let log = &self.st.replay;
        held.dirty = true;
        // Entries go in as few round trips as possible: one query string, cut
        // before and after a `RESET ALL`/`DISCARD ALL` (DISCARD ALL refuses to
        // run inside the implicit transaction of a multi-statement string).
        let mut batches: Vec<Vec<u8>> = vec![Vec::new()];
        if held.applied == 0 && !held.conn.settings().is_empty() {
            // What the connection's previous client set goes back to the
            // connection's defaults first.
            let mut sql = Vec::new();
            held.conn
                .settings()
                .diff(&Default::default(), |_| None, &mut sql);
            batches.push(sql);
            batches.push(Vec::new());
        }
        let mut drops = false;
        for entry in &log[held.applied..] {
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
            run_setup(&mut held.conn, sql).await?;
        }
        if drops {
            held.conn.statements().clear();
        }
        held.conn.set_settings(&self.st.desired);
        held.applied = applied;
        Ok(())
    }

    /// The server other than the primary this session holds a connection
    /// to, if any: reusing it for a read saves a connection. `primary` is the
    /// one health knows; before the first probe, the configured one stands
    /// in. (A held connection to a server that is no usable replica is never
    /// chosen: the router takes it only from the eligible replicas.)
    pub(super) fn held_replica(&self, primary: Option<ServerId>) -> Option<ServerId> {
        let primary = primary.unwrap_or_else(|| self.ctx.configured_primary());
        self.conns.ids().find(|id| *id != primary)
    }

    /// Resets and returns every server connection (or drops the ones whose
    /// state is unknown).
    ///
    /// A connection this session used only for read-only work is returned
    /// without `DISCARD ALL` (a round trip per connection per client, most of
    /// the cost of a short-lived client): it differs from a fresh one only in
    /// the reported startup parameters this client set, which the next client's
    /// first `sync` sets or resets.
    pub(super) async fn release(&mut self) {
        // State that kept a transaction-pooled session on its connections
        // goes with DISCARD ALL (or the connection).
        let pinned = !self.st.conn_state.is_empty();
        for mut held in self.conns.drain() {
            held.dirty |= pinned;
            hand_back(held).await;
        }
    }

    /// Transaction pooling, between units: every held connection goes back
    /// to its pool except the one running the open transaction and the one
    /// the session LISTENs on. A session that left state on its connections
    /// that cannot move (see [`crate::route::class::ConnState`]) keeps them
    /// all, as in session pooling.
    pub(super) async fn release_between_units(&mut self) {
        if let Some(reason) = self.st.conn_state.reason() {
            if !self.pin_counted {
                self.pin_counted = true;
                tracing::debug!(reason, "session keeps its server connections");
                self.ctx.metrics.connection_pin(reason);
            }
            return;
        }
        // Released: a later pin counts again.
        self.pin_counted = false;
        let (txn, listen) = (self.st.txn, self.st.listen);
        loop {
            let next = self
                .conns
                .ids()
                .find(|id| Some(*id) != txn && Some(*id) != listen);
            let Some(held) = next.and_then(|id| self.conns.remove(id)) else {
                break;
            };
            hand_back(held).await;
        }
    }
}

/// Runs a statement string of pgsplit's own (the session's settings) on
/// `conn`; a connection that refuses it is not used again.
pub(super) async fn run_setup(conn: &mut Pooled, sql: &[u8]) -> Result<(), ClientError> {
    match conn.run_internal(sql).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            conn.mark_broken();
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Returns a connection to its pool: as it is when this client left nothing
/// on it but settings (the next client's `sync` changes what differs), else
/// after `DISCARD ALL` (or dropped when that fails).
async fn hand_back(mut held: Held) {
    // Settings never sent: the connection's record of them is wrong.
    held.dirty |= held.setup.is_some();
    if !held.dirty && held.conn.is_clean() {
        return;
    }
    if let Err(e) = held.conn.reset().await {
        tracing::debug!(error = %e, "server connection not reusable");
    }
}
