//! The routing decision: a unit's classification, the session's state and the
//! replicas' health in; a target and a reason out. Pure, so every rule of
//! DESIGN.md section 3 is a table test.

use super::class::{Class, Kind, PinReason, RouteMode};
use crate::server::{Lsn, ServerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    Replica(ServerId),
}

/// Why a unit went where it went (a metric label; bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A write (or anything not provably read-only) on the primary.
    Write,
    /// A read on a replica.
    Read,
    /// Follows the open transaction, or opened a read-write one.
    Transaction,
    /// Session-level SET/RESET/DISCARD: primary, replayed elsewhere.
    Session,
    /// The session is pinned to the primary.
    Pinned,
    /// A routing hint decided.
    Hint,
    /// Every replica is over the lag limits.
    Lag,
    /// No replica has replayed the client's last write yet.
    ReadYourWrites,
    /// No replica is up (or none is configured).
    ReplicaDown,
    /// The primary does not answer: a read it would have served (for a
    /// floor or the lag limits) runs on the freshest replica that is up.
    PrimaryDown,
    /// The parser could not read the statement.
    ParseFallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Read => "read",
            Reason::Transaction => "transaction",
            Reason::Session => "session",
            Reason::Pinned => "pinned",
            Reason::Hint => "hint",
            Reason::Lag => "lag",
            Reason::ReadYourWrites => "read_your_writes",
            Reason::ReplicaDown => "replica_down",
            Reason::PrimaryDown => "primary_down",
            Reason::ParseFallback => "parse_fallback",
        }
    }
}

/// A replica as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: ServerId,
    /// Reachable, in recovery, and through its probation after a bad spell.
    pub up: bool,
    /// Up but over `max_lag` / `max_lag_bytes`.
    pub lagging: bool,
    /// Last replay position seen by the health monitor.
    pub replay: Option<Lsn>,
}

/// The session facts routing depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    /// The server running the open transaction, if any.
    pub txn: Option<Target>,
    pub pinned: Option<PinReason>,
    /// `SET pgsplit.route` or the startup option.
    pub mode: RouteMode,
    /// The read-your-writes floor that applies to this session.
    pub floor: Option<Lsn>,
    /// The replica this session already holds a connection to, if any: reusing
    /// it saves a connection.
    pub held_replica: Option<ServerId>,
    /// Rotates the choice among equally good replicas.
    pub spin: usize,
    /// The primary answered its last health probe (or none has been asked
    /// yet). Not a fact of the session, but the one fact of the primary that
    /// a read's placement needs: while it is false, nothing that a replica
    /// can serve waits on the primary.
    pub primary_up: bool,
}

impl SessionView {
    /// A session that has just begun: no transaction, no pin, no hint, no
    /// replica held; `floor` the one every session shares, if any.
    pub fn new_session(floor: Option<Lsn>, primary_up: bool) -> SessionView {
        SessionView {
            txn: None,
            pinned: None,
            mode: RouteMode::Auto,
            floor,
            held_replica: None,
            spin: 0,
            primary_up,
        }
    }
}

pub fn route(class: &Class, session: &SessionView, replicas: &[ReplicaStatus]) -> (Target, Reason) {
    if let Some(t) = session.txn {
        return (t, Reason::Transaction);
    }
    let hint = class.hint.or(match session.mode {
        RouteMode::Auto => None,
        m => Some(m),
    });
    if hint == Some(RouteMode::Primary) {
        return (Target::Primary, Reason::Hint);
    }
    let wants_replica = match class.kind {
        Kind::Read => true,
        Kind::Begin { replica_ok } => replica_ok,
        Kind::Write if !class.parsed => return (Target::Primary, Reason::ParseFallback),
        Kind::Write => return (Target::Primary, Reason::Write),
        Kind::Session => return (Target::Primary, Reason::Session),
        Kind::TxnControl => return (Target::Primary, Reason::Transaction),
    };
    if !wants_replica {
        return (Target::Primary, Reason::Transaction);
    }
    // A pin set by this very statement (e.g. LISTEN is never Read, but a read
    // calling a session advisory lock is) also keeps it on the primary.
    if session.pinned.is_some() || class.pin.is_some() {
        return (Target::Primary, Reason::Pinned);
    }
    match pick_replica(session, replicas) {
        Ok((id, Reason::Read)) if hint == Some(RouteMode::Replica) => {
            (Target::Replica(id), Reason::Hint)
        }
        Ok((id, reason)) => (Target::Replica(id), reason),
        Err(reason) => (Target::Primary, reason),
    }
}

/// The replica for a read and why it was chosen, or why none was.
fn pick_replica(
    session: &SessionView,
    replicas: &[ReplicaStatus],
) -> Result<(ServerId, Reason), Reason> {
    let fresh = |r: &ReplicaStatus| match (session.floor, r.replay) {
        (None, _) => true,
        (Some(floor), Some(replay)) => replay >= floor,
        (Some(_), None) => false,
    };
    let eligible = |r: &&ReplicaStatus| r.up && !r.lagging && fresh(r);
    if let Some(held) = session.held_replica
        && replicas.iter().filter(eligible).any(|r| r.id == held)
    {
        return Ok((held, Reason::Read));
    }
    let candidates: Vec<&ReplicaStatus> = replicas.iter().filter(eligible).collect();
    if !candidates.is_empty() {
        return Ok((candidates[session.spin % candidates.len()].id, Reason::Read));
    }
    // A primary that does not answer cannot serve the read either: the
    // freshest replica that is up serves it, behind the floor or the limits
    // as it may be (DESIGN.md, "Fallback": a read never waits on a frozen
    // primary when a replica can answer).
    if !session.primary_up
        && let Some(best) = replicas
            .iter()
            .filter(|r| r.up)
            .max_by_key(|r| (r.replay, Some(r.id) == session.held_replica))
    {
        return Ok((best.id, Reason::PrimaryDown));
    }
    // Say why nothing qualified, most specific cause first.
    if !replicas.iter().any(|r| r.up) {
        Err(Reason::ReplicaDown)
    } else if replicas.iter().any(|r| r.up && !r.lagging) {
        Err(Reason::ReadYourWrites)
    } else {
        Err(Reason::Lag)
    }
}
