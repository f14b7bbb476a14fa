//! The routing policy for one unit, whole: where it runs ([`place`]), how the
//! relay treats it there ([`relay_plan`]), and what its result means for the
//! read-your-writes floor ([`after`]). Facts about the unit, the session and
//! the servers in; decisions out. Pure, so every rule is a table test, the
//! open-transaction path included.
//!
//! What stays outside: waiting for a replica to replay (the session asks, then
//! plans again with what it learned), and attaching to the chosen server (a
//! replica that cannot take the session's state sends the unit to the primary).

use super::class::{Class, Kind};
use super::router::{Reason, ReplicaStatus, SessionView, Target, route};
use crate::protocol::TxStatus;
use crate::server::ServerId;

/// What routing needs to know about a unit's statement texts beyond its
/// class. Asked only when the answer matters: scanning texts costs. (`Sync`:
/// a session keeps a view while it waits for a replica.)
pub trait UnitTexts: Sync {
    /// Run inside an open transaction, the unit may end it (and commit what
    /// the transaction wrote).
    fn may_end_transaction(&self) -> bool;
    /// The floor query may ride in the same flight behind the unit without
    /// the client seeing it.
    fn floor_probe_may_follow(&self, in_txn: bool) -> bool;
}

/// A unit as the policy sees it.
#[derive(Clone, Copy)]
pub struct UnitView<'a> {
    pub class: Class,
    /// Ends with Sync, Query or FunctionCall: a ReadyForQuery will close it.
    pub complete: bool,
    /// Starts with an extended-protocol message rather than a simple Query.
    pub extended: bool,
    /// Runs `RESET ALL` or `DISCARD ALL`.
    pub resets_all: bool,
    pub texts: &'a dyn UnitTexts,
}

/// Where a unit runs. `replica_failed`: it failed on a replica before any
/// reply reached the client and runs again. (A read that failed so on the
/// primary is placed afresh: by then health says whether the primary
/// answers.)
#[inline]
pub fn place(
    unit: &UnitView<'_>,
    session: &SessionView,
    replicas: &[ReplicaStatus],
    replica_failed: bool,
) -> (Target, Reason) {
    if let Some(t) = session.txn {
        return (t, Reason::Transaction);
    }
    if !unit.complete {
        // Sent before its Sync: later statements of the unit are unknown.
        return (Target::Primary, Reason::Write);
    }
    if replica_failed {
        return (Target::Primary, Reason::ReplicaDown);
    }
    route(&unit.class, session, replicas)
}

/// Whether a placed read waits for a replica to replay the session's floor:
/// only the floor kept it off the replicas.
#[inline]
pub fn awaits_replay(placed: (Target, Reason), session: &SessionView) -> bool {
    placed == (Target::Primary, Reason::ReadYourWrites) && session.floor.is_some()
}

/// The replica a read held back by its floor waits for: the one the session
/// holds, else one of the usable ones in turn (as [`route`] rotates).
pub fn replica_to_await(session: &SessionView, replicas: &[ReplicaStatus]) -> Option<ServerId> {
    let usable = || replicas.iter().filter(|r| r.up && !r.lagging);
    if let Some(held) = usable().find(|r| Some(r.id) == session.held_replica) {
        return Some(held.id);
    }
    let n = usable().count();
    usable().nth(session.spin % n.max(1)).map(|r| r.id)
}

/// How the relay treats the end and the errors of a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayMode {
    /// The unit is still open (sent on Flush): read client messages until Sync.
    pub open: bool,
    /// Extended protocol (affects COPY, which then needs another Sync).
    pub extended: bool,
    /// Do not forward the final ReadyForQuery: the session sends it itself once
    /// it has recorded what the unit did (read-your-writes floor).
    pub hold_ready: bool,
    /// The floor query follows the unit in the same flight: its replies, after
    /// the unit's ReadyForQuery, are read by the relay and never reach the
    /// client. Implies `hold_ready`.
    pub floor_probe: bool,
    /// The unit may run again elsewhere if it fails before any reply reached
    /// the client (a read outside a transaction, not yet retried). On a
    /// replica: a recovery conflict, a replica gone or frozen. On the
    /// primary: a primary gone or frozen, when a replica can serve it.
    pub retry_conflict: bool,
}

/// Where the placed unit actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// On the server that is primary now.
    pub on_primary: bool,
    /// The session had a transaction open before the unit.
    pub in_txn: bool,
    /// This is the unit's second run.
    pub retried: bool,
    /// Read-your-writes is on and there is a replica to need it.
    pub tracks_floor: bool,
    /// A replica could serve the unit: it is on the primary only for
    /// freshness (its floor, or the lag limits). A read on the primary for
    /// any other reason (a hint, a pin, no replica up) stays there.
    pub replica_could_serve: bool,
    /// The open transaction is an optimistic one on a replica: it can move
    /// to the primary by replay, so a read of it that fails there before
    /// any reply may run again, on the primary.
    pub movable_txn: bool,
}

/// Whether a unit placed for `reason` on the primary could have run on a
/// replica that was fresh enough (see [`Execution::replica_could_serve`]).
#[inline]
pub fn only_for_freshness(reason: Reason) -> bool {
    matches!(reason, Reason::ReadYourWrites | Reason::Lag)
}

/// The relay's instructions for a unit about to run as `at` says.
#[inline]
pub fn relay_plan(unit: &UnitView<'_>, at: Execution) -> RelayMode {
    let records_floor = at.on_primary && at.tracks_floor;
    // Only a unit that may commit a write needs its ReadyForQuery held back
    // until the floor is recorded; RESET ALL needs it to re-apply the
    // client's startup settings first.
    let hold_ready = unit.resets_all
        || (records_floor
            && if at.in_txn {
                unit.texts.may_end_transaction()
            } else {
                unit.class.kind == Kind::Write
            });
    RelayMode {
        open: !unit.complete,
        extended: unit.extended,
        hold_ready,
        floor_probe: hold_ready && records_floor && unit.texts.floor_probe_may_follow(at.in_txn),
        retry_conflict: (!at.on_primary || at.replica_could_serve)
            && !at.retried
            && unit.complete
            && (!at.in_txn || at.movable_txn)
            && unit.class.kind == Kind::Read,
    }
}

/// What the server said about a unit, as far as the floor cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub status: TxStatus,
    /// Some statement failed.
    pub failed: bool,
    /// The unit's last command completed as ROLLBACK.
    pub rolled_back: bool,
    /// Some command completed with a tag that may mean it wrote
    /// (see [`super::outcome::tag_never_writes`]).
    pub wrote: bool,
}

/// The floor's view of a finished unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorEffect {
    /// A write was committed: record the primary's WAL position as the floor.
    pub record: bool,
    /// The transaction left open has written (carried to the unit that ends it).
    pub txn_wrote: bool,
}

/// Whether a unit committed a write. `txn_wrote`: the open transaction had
/// written before this unit. SHOW, SET, a read-only transaction or a bare
/// Sync leave no floor; neither does anything rolled back.
#[inline]
pub fn after(class: &Class, mode: RelayMode, ended: Ended, txn_wrote: bool) -> FloorEffect {
    let wrote = (class.kind == Kind::Write && ended.wrote) || txn_wrote;
    FloorEffect {
        record: mode.hold_ready
            && wrote
            && ended.status == TxStatus::Idle
            && !ended.failed
            && !ended.rolled_back,
        txn_wrote: ended.status != TxStatus::Idle && wrote,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
