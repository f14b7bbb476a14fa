//! Table tests of the whole unit policy: placement (with the session's open
//! transaction as production passes it), relay instructions, floor effects.
//! Each table reports every failing row by description.

use super::*;
use crate::route::class::{PinReason, RouteMode};
use crate::server::{Lsn, ServerId};

const R1: ServerId = ServerId(1);
const R2: ServerId = ServerId(2);

/// Fixed answers to the text questions.
struct Texts {
    ends: bool,
    probe: bool,
}

impl UnitTexts for Texts {
    fn may_end_transaction(&self) -> bool {
        self.ends
    }
    fn floor_probe_may_follow(&self, _in_txn: bool) -> bool {
        self.probe
    }
}

const PLAIN_TEXT: Texts = Texts {
    ends: false,
    probe: true,
};

fn unit(kind: Kind) -> UnitView<'static> {
    UnitView {
        class: Class::of(kind),
        complete: true,
        extended: false,
        resets_all: false,
        texts: &PLAIN_TEXT,
    }
}

const IDLE: SessionView = SessionView {
    txn: None,
    pinned: None,
    mode: RouteMode::Auto,
    floor: None,
    held_replica: None,
    spin: 0,
    primary_up: true,
};

fn replica(id: ServerId, replay: u64) -> ReplicaStatus {
    ReplicaStatus {
        id,
        up: true,
        lagging: false,
        replay: Some(Lsn(replay)),
    }
}

fn check<T: PartialEq + std::fmt::Debug>(rows: Vec<(&str, T, T)>) {
    let failed: Vec<String> = rows
        .into_iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got:?}, want {want:?}"))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn placement() {
    let replicas = [replica(R1, 100), replica(R2, 100)];
    let in_txn_on = |t| SessionView {
        txn: Some(t),
        ..IDLE
    };
    let open = UnitView {
        complete: false,
        ..unit(Kind::Read)
    };
    let pinned = SessionView {
        pinned: Some(PinReason::TempObject),
        ..IDLE
    };
    let behind = SessionView {
        floor: Some(Lsn(200)),
        ..IDLE
    };
    let p = |u: &UnitView<'_>, s: &SessionView, retried| place(u, s, &replicas, retried);
    check(vec![
        (
            "a read outside a transaction goes to a replica",
            p(&unit(Kind::Read), &IDLE, false),
            (Target::Replica(R1), Reason::Read),
        ),
        (
            "a write goes to the primary",
            p(&unit(Kind::Write), &IDLE, false),
            (Target::Primary, Reason::Write),
        ),
        (
            "a read inside a transaction on the primary stays there",
            p(&unit(Kind::Read), &in_txn_on(Target::Primary), false),
            (Target::Primary, Reason::Transaction),
        ),
        (
            "a write inside a read-only transaction on a replica stays there (the server refuses it)",
            p(&unit(Kind::Write), &in_txn_on(Target::Replica(R2)), false),
            (Target::Replica(R2), Reason::Transaction),
        ),
        (
            "a retried unit inside a transaction still follows it",
            p(&unit(Kind::Read), &in_txn_on(Target::Primary), true),
            (Target::Primary, Reason::Transaction),
        ),
        (
            "an open unit (sent before Sync) goes to the primary",
            p(&open, &IDLE, false),
            (Target::Primary, Reason::Write),
        ),
        (
            "a retried read goes to the primary",
            p(&unit(Kind::Read), &IDLE, true),
            (Target::Primary, Reason::ReplicaDown),
        ),
        (
            "a pinned session reads on the primary",
            p(&unit(Kind::Read), &pinned, false),
            (Target::Primary, Reason::Pinned),
        ),
        (
            "a floor no replica has reached keeps the read on the primary",
            p(&unit(Kind::Read), &behind, false),
            (Target::Primary, Reason::ReadYourWrites),
        ),
    ]);
}

#[test]
fn only_the_floor_makes_a_read_wait_for_replay() {
    let behind = SessionView {
        floor: Some(Lsn(200)),
        ..IDLE
    };
    let rows = vec![
        (
            "floor, primary for read-your-writes",
            awaits_replay((Target::Primary, Reason::ReadYourWrites), &behind),
            true,
        ),
        (
            "no floor",
            awaits_replay((Target::Primary, Reason::ReadYourWrites), &IDLE),
            false,
        ),
        (
            "replicas down",
            awaits_replay((Target::Primary, Reason::ReplicaDown), &behind),
            false,
        ),
        (
            "already on a replica",
            awaits_replay((Target::Replica(R1), Reason::Read), &behind),
            false,
        ),
    ];
    check(rows);
}

#[test]
fn the_replica_a_read_waits_for() {
    let lagging = ReplicaStatus {
        lagging: true,
        ..replica(R1, 100)
    };
    let down = ReplicaStatus {
        up: false,
        ..replica(R1, 100)
    };
    let both = [replica(R1, 100), replica(R2, 100)];
    let spun = |spin| SessionView { spin, ..IDLE };
    let holding = |id| SessionView {
        held_replica: Some(id),
        spin: 0,
        ..IDLE
    };
    check(vec![
        (
            "the held replica",
            replica_to_await(&holding(R2), &both),
            Some(R2),
        ),
        (
            "in turn, first",
            replica_to_await(&spun(0), &both),
            Some(R1),
        ),
        (
            "in turn, second",
            replica_to_await(&spun(1), &both),
            Some(R2),
        ),
        (
            "in turn, wraps",
            replica_to_await(&spun(2), &both),
            Some(R1),
        ),
        (
            "a lagging replica is skipped",
            replica_to_await(&spun(0), &[lagging, replica(R2, 100)]),
            Some(R2),
        ),
        (
            "a held replica that is down is not waited for",
            replica_to_await(&holding(R1), &[down, replica(R2, 100)]),
            Some(R2),
        ),
        ("none usable", replica_to_await(&IDLE, &[down]), None),
        ("none at all", replica_to_await(&IDLE, &[]), None),
    ]);
}

#[test]
fn relay_instructions() {
    let primary = Execution {
        on_primary: true,
        in_txn: false,
        retried: false,
        tracks_floor: true,
        replica_could_serve: false,
        movable_txn: false,
    };
    let replica = Execution {
        on_primary: false,
        ..primary
    };
    let in_txn = Execution {
        in_txn: true,
        ..primary
    };
    let no_floor = Execution {
        tracks_floor: false,
        ..primary
    };
    let commit_text = Texts {
        ends: true,
        probe: true,
    };
    let copy_text = Texts {
        ends: false,
        probe: false,
    };
    let commit = UnitView {
        texts: &commit_text,
        ..unit(Kind::TxnControl)
    };
    let copy = UnitView {
        texts: &copy_text,
        ..unit(Kind::Write)
    };
    let reset_all = UnitView {
        resets_all: true,
        ..unit(Kind::Session)
    };
    let extended_open = UnitView {
        complete: false,
        extended: true,
        ..unit(Kind::Write)
    };
    let mode = |hold_ready, floor_probe, retry_conflict| RelayMode {
        open: false,
        extended: false,
        hold_ready,
        floor_probe,
        retry_conflict,
    };
    check(vec![
        (
            "a read on a replica may be retried",
            relay_plan(&unit(Kind::Read), replica),
            mode(false, false, true),
        ),
        (
            "a read in a transaction is not retried",
            relay_plan(
                &unit(Kind::Read),
                Execution {
                    in_txn: true,
                    ..replica
                },
            ),
            mode(false, false, false),
        ),
        (
            "a read in an optimistic transaction on a replica is (it can move)",
            relay_plan(
                &unit(Kind::Read),
                Execution {
                    in_txn: true,
                    movable_txn: true,
                    ..replica
                },
            ),
            mode(false, false, true),
        ),
        (
            "its COMMIT is not",
            relay_plan(
                &unit(Kind::TxnControl),
                Execution {
                    in_txn: true,
                    movable_txn: true,
                    ..replica
                },
            ),
            mode(false, false, false),
        ),
        (
            "a second run is not retried again",
            relay_plan(
                &unit(Kind::Read),
                Execution {
                    retried: true,
                    ..replica
                },
            ),
            mode(false, false, false),
        ),
        (
            "a read on the primary is neither held nor retried",
            relay_plan(&unit(Kind::Read), primary),
            mode(false, false, false),
        ),
        (
            "a read on the primary for freshness may run again on a replica",
            relay_plan(
                &unit(Kind::Read),
                Execution {
                    replica_could_serve: true,
                    ..primary
                },
            ),
            mode(false, false, true),
        ),
        (
            "... but not inside a transaction",
            relay_plan(
                &unit(Kind::Read),
                Execution {
                    replica_could_serve: true,
                    ..in_txn
                },
            ),
            mode(false, false, false),
        ),
        (
            "an autocommit write on the primary records the floor in flight",
            relay_plan(&unit(Kind::Write), primary),
            mode(true, true, false),
        ),
        (
            "a COPY FROM STDIN write records the floor after the unit",
            relay_plan(&copy, primary),
            mode(true, false, false),
        ),
        (
            "without read-your-writes a write is relayed as is",
            relay_plan(&unit(Kind::Write), no_floor),
            mode(false, false, false),
        ),
        (
            "a write inside a transaction does not end it: nothing held",
            relay_plan(&unit(Kind::Write), in_txn),
            mode(false, false, false),
        ),
        (
            "COMMIT inside a transaction holds ReadyForQuery for the floor",
            relay_plan(&commit, in_txn),
            mode(true, true, false),
        ),
        (
            "RESET ALL holds ReadyForQuery even without a floor",
            relay_plan(&reset_all, no_floor),
            mode(true, false, false),
        ),
        (
            "an open extended unit says so",
            relay_plan(&extended_open, no_floor),
            RelayMode {
                open: true,
                extended: true,
                ..RelayMode::default()
            },
        ),
        (
            "an open read is not retried",
            relay_plan(
                &UnitView {
                    complete: false,
                    ..unit(Kind::Read)
                },
                replica,
            ),
            RelayMode {
                open: true,
                ..RelayMode::default()
            },
        ),
    ]);
}

#[test]
fn floor_effects() {
    let held = RelayMode {
        hold_ready: true,
        ..RelayMode::default()
    };
    let ended = |status, failed, rolled_back, wrote| Ended {
        status,
        failed,
        rolled_back,
        wrote,
    };
    let fx = |record, txn_wrote| FloorEffect { record, txn_wrote };
    let write = Class::of(Kind::Write);
    let read = Class::of(Kind::Read);
    let commit = Class::of(Kind::TxnControl);
    let idle = TxStatus::Idle;
    let open = TxStatus::InTransaction;
    check(vec![
        (
            "an autocommit INSERT records",
            after(&write, held, ended(idle, false, false, true), false),
            fx(true, false),
        ),
        (
            "a SELECT on the primary calling nothing that writes does not",
            after(&write, held, ended(idle, false, false, false), false),
            fx(false, false),
        ),
        (
            "a read does not",
            after(&read, held, ended(idle, false, false, true), false),
            fx(false, false),
        ),
        (
            "a failed write does not",
            after(&write, held, ended(idle, true, false, true), false),
            fx(false, false),
        ),
        (
            "a write inside a transaction is carried",
            after(
                &write,
                RelayMode::default(),
                ended(open, false, false, true),
                false,
            ),
            fx(false, true),
        ),
        (
            "COMMIT of a transaction that wrote records",
            after(&commit, held, ended(idle, false, false, false), true),
            fx(true, false),
        ),
        (
            "ROLLBACK of a transaction that wrote does not",
            after(&commit, held, ended(idle, false, true, false), true),
            fx(false, false),
        ),
        (
            "COMMIT not held back (no floor tracking) records nothing",
            after(
                &commit,
                RelayMode::default(),
                ended(idle, false, false, false),
                true,
            ),
            fx(false, false),
        ),
        (
            "a read inside a transaction that wrote keeps it carried",
            after(
                &read,
                RelayMode::default(),
                ended(open, false, false, false),
                true,
            ),
            fx(false, true),
        ),
    ]);
}
