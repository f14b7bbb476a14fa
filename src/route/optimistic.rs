//! Optimistic transactions: the policy, pure. A transaction begun without
//! READ ONLY starts where its first statement goes; one that starts on a
//! replica runs its reads there, recorded, until something needs the primary,
//! when it moves there by replaying the reads and checking they answer the
//! same (README, "Transactions that start with reads").
//!
//! The session keeps the phase and the record and does the I/O; this file
//! says, for each unit, which step the transaction takes.

use super::class::{Class, Kind, RouteMode};

/// Where the session's optimistic transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// None open (a transaction may be open the usual way).
    Off,
    /// pgsplit answered the BEGIN; nothing has been sent anywhere yet.
    Deferred,
    /// Open on a replica, its units recorded.
    OnReplica {
        /// The replica's transaction is in the failed state: everything
        /// fails there as it would on the primary, until a rollback.
        failed: bool,
        /// The record can take this unit (see `optimistic_max_statements`,
        /// `optimistic_max_bytes`), and the replica is still one a read
        /// would choose (up, within the lag limits): else the transaction
        /// moves now rather than read on from a replica falling behind.
        room: bool,
    },
}

/// What the session may do, from its state and the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// `routing.optimistic_transactions`.
    pub enabled: bool,
    /// No transaction is open the usual way.
    pub no_txn: bool,
    /// Nothing keeps this session on the primary: no pin, no
    /// `pgsplit.route = primary`, no mismatch in its last transaction.
    pub replica_ok: bool,
}

/// A unit as this policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct UnitFacts {
    pub class: Class,
    /// Ends with Sync or Query (a ReadyForQuery closes it).
    pub complete: bool,
    /// One simple Query message.
    pub simple: bool,
    /// Extended-protocol messages that execute one statement (Parse, Bind,
    /// Describe, one Execute, Close, Flush) up to Sync: a BEGIN sent so can
    /// be answered as a simple one.
    pub single_extended: bool,
    /// It runs one transaction-control statement that only ends the
    /// transaction or works with savepoints (COMMIT, ROLLBACK, SAVEPOINT,
    /// RELEASE, ROLLBACK TO), which a replica runs as the primary would.
    pub replica_txn_control: bool,
    /// Names no statement (Close, Sync, Flush only): bookkeeping, the same
    /// on any server.
    pub statement_free: bool,
}

/// The step a unit takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing optimistic about it.
    AsUsual,
    /// A BEGIN to answer here and remember.
    Defer,
    /// The first unit after a deferred BEGIN: it opens the transaction where
    /// it is placed (a replica for a read), with the BEGIN ahead of it.
    Open,
    /// A unit that begins the transaction itself and then only reads (one
    /// query string, or a pipeline): placed as a read, it runs whole; on a
    /// replica it is the record's first unit.
    Opens,
    /// Runs on the replica, recorded.
    Record,
    /// Needs the primary: move the transaction there first.
    Move,
}

/// The step `unit` takes in `phase`.
pub fn step(unit: &UnitFacts, phase: Phase, allowed: Allowed) -> Step {
    let class = &unit.class;
    match phase {
        Phase::Off => {
            let defers = allowed.enabled
                && allowed.no_txn
                && allowed.replica_ok
                && (unit.simple || (unit.single_extended && unit.complete))
                && class.deferrable_begin.is_some()
                && class.hint != Some(RouteMode::Primary);
            let opens = allowed.enabled
                && allowed.no_txn
                && allowed.replica_ok
                && unit.complete
                && class.opens_with_reads.is_some()
                && class.hint != Some(RouteMode::Primary);
            if defers {
                Step::Defer
            } else if opens {
                Step::Opens
            } else {
                Step::AsUsual
            }
        }
        Phase::Deferred => Step::Open,
        // PostgreSQL refuses every statement of a failed transaction but
        // the ones that end it or roll back to a savepoint, the same way on
        // a replica as on the primary: nothing to move for.
        Phase::OnReplica { failed: true, room } => {
            if room && unit.complete {
                Step::Record
            } else {
                Step::Move
            }
        }
        Phase::OnReplica {
            failed: false,
            room,
        } => {
            let stays = unit.statement_free
                || match class.kind {
                    Kind::Read => class.pin.is_none() && class.hint != Some(RouteMode::Primary),
                    Kind::TxnControl => unit.replica_txn_control,
                    Kind::Write | Kind::Session | Kind::Begin { .. } => false,
                };
            if stays && room && unit.complete {
                Step::Record
            } else {
                Step::Move
            }
        }
    }
}

/// Whether a transaction-control text runs on a replica as on the primary:
/// COMMIT, END, ROLLBACK, ABORT (ending it), SAVEPOINT, RELEASE, ROLLBACK
/// TO. Not `PREPARE TRANSACTION`, `SET TRANSACTION`, `SET LOCAL` (a standby
/// refuses some of them, or they change what later statements do).
pub fn replica_txn_control(text: &[u8]) -> bool {
    let word = text
        .trim_ascii_start()
        .split(|c| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        word.as_slice(),
        b"commit" | b"end" | b"rollback" | b"abort" | b"savepoint" | b"release"
    )
}

/// Whether a statement ends the transaction: COMMIT, END, ROLLBACK, ABORT,
/// not `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] ...` nor the two-phase
/// `COMMIT PREPARED` / `ROLLBACK PREPARED`.
pub fn ends_transaction(text: &[u8]) -> bool {
    let mut words = text
        .split(|c: &u8| c.is_ascii_whitespace() || *c == b';')
        .filter(|w| !w.is_empty());
    let ends = words.next().is_some_and(|w| {
        [&b"commit"[..], b"end", b"rollback", b"abort"]
            .iter()
            .any(|e| w.eq_ignore_ascii_case(e))
    });
    ends && !words.any(|w| w.eq_ignore_ascii_case(b"to") || w.eq_ignore_ascii_case(b"prepared"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::class::{Isolation, PinReason};

    fn facts(class: Class) -> UnitFacts {
        UnitFacts {
            class,
            complete: true,
            simple: true,
            replica_txn_control: false,
            statement_free: false,
            single_extended: false,
        }
    }

    const ALLOWED: Allowed = Allowed {
        enabled: true,
        no_txn: true,
        replica_ok: true,
    };

    fn begin(isolation: Option<Isolation>) -> Class {
        Class {
            deferrable_begin: isolation,
            ..Class::of(Kind::Begin { replica_ok: false })
        }
    }

    #[test]
    fn steps() {
        let read = Class::of(Kind::Read);
        let write = Class::of(Kind::Write);
        let control = Class::of(Kind::TxnControl);
        let on_replica = Phase::OnReplica {
            failed: false,
            room: true,
        };
        let full = Phase::OnReplica {
            failed: false,
            room: false,
        };
        let failed = Phase::OnReplica {
            failed: true,
            room: true,
        };
        let off = |f: fn(&mut Allowed)| {
            let mut a = ALLOWED;
            f(&mut a);
            a
        };
        let extended = |c: Class| UnitFacts {
            simple: false,
            ..facts(c)
        };
        let open = |c: Class| UnitFacts {
            complete: false,
            ..facts(c)
        };
        let ends = UnitFacts {
            replica_txn_control: true,
            ..facts(control)
        };
        let cases: &[(&str, UnitFacts, Phase, Allowed, Step)] = &[
            // Which BEGIN is deferred.
            (
                "BEGIN",
                facts(begin(Some(Isolation::Default))),
                Phase::Off,
                ALLOWED,
                Step::Defer,
            ),
            (
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
                facts(begin(Some(Isolation::RepeatableRead))),
                Phase::Off,
                ALLOWED,
                Step::Defer,
            ),
            (
                "BEGIN READ ONLY: a replica already",
                facts(begin(None)),
                Phase::Off,
                ALLOWED,
                Step::AsUsual,
            ),
            (
                "turned off",
                facts(begin(Some(Isolation::Default))),
                Phase::Off,
                off(|a| a.enabled = false),
                Step::AsUsual,
            ),
            (
                "pinned, hinted or after a mismatch",
                facts(begin(Some(Isolation::Default))),
                Phase::Off,
                off(|a| a.replica_ok = false),
                Step::AsUsual,
            ),
            (
                "inside a transaction",
                facts(begin(Some(Isolation::Default))),
                Phase::Off,
                off(|a| a.no_txn = false),
                Step::AsUsual,
            ),
            (
                "extended protocol",
                extended(begin(Some(Isolation::Default))),
                Phase::Off,
                ALLOWED,
                Step::AsUsual,
            ),
            (
                "/* pgsplit:primary */ BEGIN",
                facts(Class {
                    hint: Some(RouteMode::Primary),
                    ..begin(Some(Isolation::Default))
                }),
                Phase::Off,
                ALLOWED,
                Step::AsUsual,
            ),
            (
                "a read outside one",
                facts(read),
                Phase::Off,
                ALLOWED,
                Step::AsUsual,
            ),
            // The first statement opens it, whatever it is.
            (
                "first: a read",
                facts(read),
                Phase::Deferred,
                ALLOWED,
                Step::Open,
            ),
            (
                "first: a write",
                facts(write),
                Phase::Deferred,
                ALLOWED,
                Step::Open,
            ),
            ("first: COMMIT", ends, Phase::Deferred, ALLOWED, Step::Open),
            // On a replica.
            ("a read", facts(read), on_replica, ALLOWED, Step::Record),
            (
                "an extended read",
                extended(read),
                on_replica,
                ALLOWED,
                Step::Record,
            ),
            (
                "COMMIT, SAVEPOINT...",
                ends,
                on_replica,
                ALLOWED,
                Step::Record,
            ),
            (
                "SET LOCAL, PREPARE TRANSACTION",
                facts(control),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "extended COMMIT",
                extended(control),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            ("a write", facts(write), on_replica, ALLOWED, Step::Move),
            (
                "a SET",
                facts(Class::of(Kind::Session)),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "a nested BEGIN",
                facts(begin(Some(Isolation::Default))),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "a read taking a session lock",
                facts(Class {
                    pin: Some(PinReason::AdvisoryLock),
                    ..read
                }),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "/* pgsplit:primary */ SELECT",
                facts(Class {
                    hint: Some(RouteMode::Primary),
                    ..read
                }),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "a read sent before its Sync",
                open(read),
                on_replica,
                ALLOWED,
                Step::Move,
            ),
            (
                "a read past the record's bounds",
                facts(read),
                full,
                ALLOWED,
                Step::Move,
            ),
            // A failed transaction refuses anything but its end, anywhere.
            (
                "a write, failed",
                facts(write),
                failed,
                ALLOWED,
                Step::Record,
            ),
            ("ROLLBACK, failed", ends, failed, ALLOWED, Step::Record),
        ];
        for (name, unit, phase, allowed, want) in cases {
            assert_eq!(step(unit, *phase, *allowed), *want, "{name}");
        }
    }

    #[test]
    fn statements_that_end_a_transaction() {
        for text in [
            "COMMIT",
            "end work;",
            "ROLLBACK",
            "abort transaction",
            "COMMIT AND NO CHAIN",
        ] {
            assert!(ends_transaction(text.as_bytes()), "{text}");
        }
        for text in [
            "ROLLBACK TO SAVEPOINT a",
            "rollback work to a",
            "ROLLBACK TRANSACTION TO SAVEPOINT a",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "SAVEPOINT a",
            "SELECT 1",
            "",
        ] {
            assert!(!ends_transaction(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn transaction_control_a_replica_runs() {
        for text in [
            "COMMIT",
            "  end work",
            "ROLLBACK",
            "rollback to savepoint a",
            "ABORT",
            "SAVEPOINT s1",
            "RELEASE SAVEPOINT s1",
            "commit;",
        ] {
            assert!(replica_txn_control(text.as_bytes()), "{text}");
        }
        for text in [
            "PREPARE TRANSACTION 'x'",
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION READ WRITE",
            "",
        ] {
            assert!(!replica_txn_control(text.as_bytes()), "{text}");
        }
    }
}
