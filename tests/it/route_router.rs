//! Table tests of the routing decision (DESIGN.md section 3): a class, the
//! session's state and the replicas' health in; a target and a reason out. Also
//! the rule that folds several statements' classes into one (`merge`).
//!
//! Each table collects every failing row and reports them all, by description.

use pgsplit::route::class::{Class, ConnState, Kind, PinReason, RouteMode, merge};
use pgsplit::route::router::{Reason, ReplicaStatus, SessionView, Target, route};
use pgsplit::server::{Lsn, ServerId};

const R1: ServerId = ServerId(1);
const R2: ServerId = ServerId(2);
const R3: ServerId = ServerId(3);

/// A session outside any transaction, unpinned, in auto mode, with no floor.
const PLAIN: SessionView = SessionView {
    txn: None,
    pinned: None,
    mode: RouteMode::Auto,
    floor: None,
    held_replica: None,
    spin: 0,
    primary_up: true,
};

/// Up, under the lag limits, replayed up to `replay`.
fn ok(id: ServerId, replay: u64) -> ReplicaStatus {
    ReplicaStatus {
        id,
        up: true,
        lagging: false,
        replay: Some(Lsn(replay)),
    }
}

fn down(id: ServerId) -> ReplicaStatus {
    ReplicaStatus {
        id,
        up: false,
        lagging: false,
        replay: None,
    }
}

fn lagging(id: ServerId, replay: u64) -> ReplicaStatus {
    ReplicaStatus {
        id,
        up: true,
        lagging: true,
        replay: Some(Lsn(replay)),
    }
}

/// Two healthy replicas, both replayed to 1000.
fn two() -> Vec<ReplicaStatus> {
    vec![ok(R1, 1000), ok(R2, 1000)]
}

fn read() -> Class {
    Class::of(Kind::Read)
}

fn write() -> Class {
    Class::of(Kind::Write)
}

fn hinted(kind: Kind, hint: RouteMode) -> Class {
    Class {
        hint: Some(hint),
        ..Class::of(kind)
    }
}

fn in_txn(t: Target) -> SessionView {
    SessionView {
        txn: Some(t),
        ..PLAIN
    }
}

fn mode(m: RouteMode) -> SessionView {
    SessionView { mode: m, ..PLAIN }
}

fn pinned(p: PinReason) -> SessionView {
    SessionView {
        pinned: Some(p),
        ..PLAIN
    }
}

fn floor(lsn: u64) -> SessionView {
    SessionView {
        floor: Some(Lsn(lsn)),
        ..PLAIN
    }
}

fn held(id: ServerId) -> SessionView {
    SessionView {
        held_replica: Some(id),
        ..PLAIN
    }
}

/// `s` while the primary misses its health probes.
fn primary_silent(s: SessionView) -> SessionView {
    SessionView {
        primary_up: false,
        ..s
    }
}

fn spin(n: usize) -> SessionView {
    SessionView { spin: n, ..PLAIN }
}

struct Row {
    desc: &'static str,
    class: Class,
    session: SessionView,
    replicas: Vec<ReplicaStatus>,
    want: (Target, Reason),
}

fn row(
    desc: &'static str,
    class: Class,
    session: SessionView,
    replicas: Vec<ReplicaStatus>,
    want: (Target, Reason),
) -> Row {
    Row {
        desc,
        class,
        session,
        replicas,
        want,
    }
}

fn routing_rows() -> Vec<Row> {
    use Reason::*;
    use Target::{Primary, Replica};
    vec![
        // The statement kinds.
        row(
            "read goes to a replica",
            read(),
            PLAIN,
            two(),
            (Replica(R1), Read),
        ),
        row(
            "read with a single replica goes to it",
            read(),
            PLAIN,
            vec![ok(R2, 5)],
            (Replica(R2), Read),
        ),
        row(
            "write goes to the primary",
            write(),
            PLAIN,
            two(),
            (Primary, Write),
        ),
        row(
            "write with no replica configured goes to the primary as a write",
            write(),
            PLAIN,
            vec![],
            (Primary, Write),
        ),
        row(
            "unparsed text goes to the primary",
            Class::unparsed(),
            PLAIN,
            two(),
            (Primary, ParseFallback),
        ),
        row(
            "unparsed text with a replica hint still goes to the primary",
            Class {
                hint: Some(RouteMode::Replica),
                ..Class::unparsed()
            },
            PLAIN,
            two(),
            (Primary, ParseFallback),
        ),
        row(
            "session SET goes to the primary",
            Class::of(Kind::Session),
            PLAIN,
            two(),
            (Primary, Session),
        ),
        row(
            "COMMIT/ROLLBACK outside a transaction goes to the primary",
            Class::of(Kind::TxnControl),
            PLAIN,
            two(),
            (Primary, Transaction),
        ),
        row(
            "BEGIN (read-write) goes to the primary",
            Class::of(Kind::Begin { replica_ok: false }),
            PLAIN,
            two(),
            (Primary, Transaction),
        ),
        row(
            "BEGIN READ ONLY goes to a replica",
            Class::of(Kind::Begin { replica_ok: true }),
            PLAIN,
            two(),
            (Replica(R1), Read),
        ),
        row(
            "BEGIN READ ONLY with every replica down goes to the primary",
            Class::of(Kind::Begin { replica_ok: true }),
            PLAIN,
            vec![down(R1), down(R2)],
            (Primary, ReplicaDown),
        ),
        // An open transaction decides, whatever the class.
        row(
            "read inside a transaction on a replica stays on that replica",
            read(),
            in_txn(Replica(R2)),
            two(),
            (Replica(R2), Transaction),
        ),
        row(
            "COMMIT inside a transaction on a replica goes to that replica",
            Class::of(Kind::TxnControl),
            in_txn(Replica(R2)),
            two(),
            (Replica(R2), Transaction),
        ),
        row(
            "write inside a transaction on a replica goes to that replica (a transaction never spans two servers)",
            write(),
            in_txn(Replica(R1)),
            two(),
            (Replica(R1), Transaction),
        ),
        row(
            "transaction on a replica stays there even when health says it is down",
            read(),
            in_txn(Replica(R1)),
            vec![down(R1), ok(R2, 1000)],
            (Replica(R1), Transaction),
        ),
        row(
            "read inside a transaction on the primary stays on the primary",
            read(),
            in_txn(Primary),
            two(),
            (Primary, Transaction),
        ),
        row(
            "replica hint inside a transaction on the primary stays on the primary",
            hinted(Kind::Read, RouteMode::Replica),
            in_txn(Primary),
            two(),
            (Primary, Transaction),
        ),
        row(
            "primary hint inside a transaction on a replica stays on the replica",
            hinted(Kind::Read, RouteMode::Primary),
            in_txn(Replica(R1)),
            two(),
            (Replica(R1), Transaction),
        ),
        row(
            "unparsed text inside a transaction on the primary follows the transaction",
            Class::unparsed(),
            in_txn(Primary),
            two(),
            (Primary, Transaction),
        ),
        // Comment hints.
        row(
            "primary hint on a read goes to the primary",
            hinted(Kind::Read, RouteMode::Primary),
            PLAIN,
            two(),
            (Primary, Hint),
        ),
        row(
            "replica hint on a read goes to a replica",
            hinted(Kind::Read, RouteMode::Replica),
            PLAIN,
            two(),
            (Replica(R1), Hint),
        ),
        row(
            "replica hint on a write never sends it to a replica",
            hinted(Kind::Write, RouteMode::Replica),
            PLAIN,
            two(),
            (Primary, Write),
        ),
        row(
            "replica hint on a session SET keeps it on the primary",
            hinted(Kind::Session, RouteMode::Replica),
            PLAIN,
            two(),
            (Primary, Session),
        ),
        row(
            "replica hint on a read-write BEGIN keeps it on the primary",
            hinted(Kind::Begin { replica_ok: false }, RouteMode::Replica),
            PLAIN,
            two(),
            (Primary, Transaction),
        ),
        row(
            "replica hint on a read with every replica down falls back to the primary",
            hinted(Kind::Read, RouteMode::Replica),
            PLAIN,
            vec![down(R1), down(R2)],
            (Primary, ReplicaDown),
        ),
        row(
            "auto hint on a read behaves like no hint",
            hinted(Kind::Read, RouteMode::Auto),
            PLAIN,
            two(),
            (Replica(R1), Read),
        ),
        // Session route mode (SET pgsplit.route / startup option).
        row(
            "session mode primary sends a read to the primary",
            read(),
            mode(RouteMode::Primary),
            two(),
            (Primary, Hint),
        ),
        row(
            "session mode replica sends a read to a replica",
            read(),
            mode(RouteMode::Replica),
            two(),
            (Replica(R1), Hint),
        ),
        row(
            "session mode replica never sends a write to a replica",
            write(),
            mode(RouteMode::Replica),
            two(),
            (Primary, Write),
        ),
        row(
            "session mode auto sends a read to a replica",
            read(),
            mode(RouteMode::Auto),
            two(),
            (Replica(R1), Read),
        ),
        row(
            "comment hint primary wins over session mode replica",
            hinted(Kind::Read, RouteMode::Primary),
            mode(RouteMode::Replica),
            two(),
            (Primary, Hint),
        ),
        row(
            "comment hint replica wins over session mode primary",
            hinted(Kind::Read, RouteMode::Replica),
            mode(RouteMode::Primary),
            two(),
            (Replica(R1), Hint),
        ),
        // Pins.
        row(
            "read in a session pinned by a temp table goes to the primary",
            read(),
            pinned(PinReason::TempObject),
            two(),
            (Primary, Pinned),
        ),
        row(
            "replica hint does not unpin a pinned session",
            hinted(Kind::Read, RouteMode::Replica),
            pinned(PinReason::Listen),
            two(),
            (Primary, Pinned),
        ),
        row(
            "BEGIN READ ONLY in a pinned session goes to the primary",
            Class::of(Kind::Begin { replica_ok: true }),
            pinned(PinReason::HoldCursor),
            two(),
            (Primary, Pinned),
        ),
        row(
            "write in a pinned session is still reported as a write",
            write(),
            pinned(PinReason::TempObject),
            two(),
            (Primary, Write),
        ),
        row(
            "read that itself takes a session advisory lock goes to the primary",
            Class {
                pin: Some(PinReason::AdvisoryLock),
                ..read()
            },
            PLAIN,
            two(),
            (Primary, Pinned),
        ),
        // A primary that does not answer its probes.
        row(
            "primary silent: a read behind the floor runs on the freshest replica",
            read(),
            primary_silent(floor(2000)),
            vec![ok(R1, 1500), ok(R2, 1800)],
            (Replica(R2), PrimaryDown),
        ),
        row(
            "primary silent: every replica lagging, the freshest serves",
            read(),
            primary_silent(PLAIN),
            vec![lagging(R1, 1000), lagging(R2, 900)],
            (Replica(R1), PrimaryDown),
        ),
        row(
            "primary silent: equally fresh, the held replica serves",
            read(),
            primary_silent(SessionView {
                held_replica: Some(R2),
                ..floor(2000)
            }),
            vec![lagging(R1, 1000), lagging(R2, 1000)],
            (Replica(R2), PrimaryDown),
        ),
        row(
            "primary silent: an eligible replica is a plain read",
            read(),
            primary_silent(floor(900)),
            two(),
            (Replica(R1), Read),
        ),
        row(
            "primary silent: with no replica up the read still goes to the primary",
            read(),
            primary_silent(PLAIN),
            vec![down(R1), down(R2)],
            (Primary, ReplicaDown),
        ),
        row(
            "primary silent: a write still goes to the primary (and waits there)",
            write(),
            primary_silent(PLAIN),
            two(),
            (Primary, Write),
        ),
        row(
            "primary silent: a pinned session's read stays on the primary",
            read(),
            primary_silent(pinned(PinReason::TempObject)),
            two(),
            (Primary, Pinned),
        ),
        row(
            "primary silent: a primary hint is obeyed",
            hinted(Kind::Read, RouteMode::Primary),
            primary_silent(PLAIN),
            two(),
            (Primary, Hint),
        ),
        // Replica health.
        row(
            "every replica down sends a read to the primary",
            read(),
            PLAIN,
            vec![down(R1), down(R2)],
            (Primary, ReplicaDown),
        ),
        row(
            "no replica configured sends a read to the primary",
            read(),
            PLAIN,
            vec![],
            (Primary, ReplicaDown),
        ),
        row(
            "every replica lagging sends a read to the primary",
            read(),
            PLAIN,
            vec![lagging(R1, 1000), lagging(R2, 1000)],
            (Primary, Lag),
        ),
        row(
            "one replica down and the other lagging: lag is the reason",
            read(),
            PLAIN,
            vec![down(R1), lagging(R2, 1000)],
            (Primary, Lag),
        ),
        row(
            "a lagging replica is skipped for a healthy one",
            read(),
            PLAIN,
            vec![lagging(R1, 1000), ok(R2, 1000)],
            (Replica(R2), Read),
        ),
        row(
            "a down replica is skipped for a healthy one",
            read(),
            PLAIN,
            vec![down(R1), ok(R2, 1000)],
            (Replica(R2), Read),
        ),
        // Read-your-writes.
        row(
            "floor above every replica's replay sends a read to the primary",
            read(),
            floor(2000),
            two(),
            (Primary, ReadYourWrites),
        ),
        row(
            "floor met by only the second of two replicas picks it",
            read(),
            floor(1500),
            vec![ok(R1, 1000), ok(R2, 1500)],
            (Replica(R2), Read),
        ),
        row(
            "floor met by only the second replica picks it whatever the spin",
            read(),
            SessionView {
                spin: 1,
                ..floor(1500)
            },
            vec![ok(R1, 1000), ok(R2, 2000)],
            (Replica(R2), Read),
        ),
        row(
            "floor exactly at a replica's replay is met",
            read(),
            floor(1000),
            vec![ok(R1, 1000)],
            (Replica(R1), Read),
        ),
        row(
            "floor with the replica's replay position unknown goes to the primary",
            read(),
            floor(1),
            vec![ReplicaStatus {
                replay: None,
                ..ok(R1, 0)
            }],
            (Primary, ReadYourWrites),
        ),
        row(
            "floor unmet by the healthy replica while the other lags: read-your-writes",
            read(),
            floor(2000),
            vec![ok(R1, 1000), lagging(R2, 3000)],
            (Primary, ReadYourWrites),
        ),
        row(
            "a lagging replica past the floor is still not used",
            read(),
            floor(2000),
            vec![lagging(R1, 3000)],
            (Primary, Lag),
        ),
        // Held replica and rotation.
        row(
            "the replica the session already holds is preferred",
            read(),
            held(R2),
            two(),
            (Replica(R2), Read),
        ),
        row(
            "the held replica is preferred over the spin's choice",
            read(),
            SessionView {
                spin: 2,
                ..held(R2)
            },
            two(),
            (Replica(R2), Read),
        ),
        row(
            "a lagging held replica gives way to another",
            read(),
            held(R2),
            vec![ok(R1, 1000), lagging(R2, 1000)],
            (Replica(R1), Read),
        ),
        row(
            "a down held replica gives way to another",
            read(),
            held(R1),
            vec![down(R1), ok(R2, 1000)],
            (Replica(R2), Read),
        ),
        row(
            "a held replica below the floor gives way to one past it",
            read(),
            SessionView {
                floor: Some(Lsn(1500)),
                ..held(R1)
            },
            vec![ok(R1, 1000), ok(R2, 1500)],
            (Replica(R2), Read),
        ),
        row(
            "a held replica no longer configured is ignored",
            read(),
            held(R3),
            two(),
            (Replica(R1), Read),
        ),
        row(
            "spin 0 picks the first replica",
            read(),
            spin(0),
            two(),
            (Replica(R1), Read),
        ),
        row(
            "spin 1 picks the second replica",
            read(),
            spin(1),
            two(),
            (Replica(R2), Read),
        ),
        row(
            "spin 2 wraps to the first replica",
            read(),
            spin(2),
            two(),
            (Replica(R1), Read),
        ),
        row(
            "spin rotates among eligible replicas only (spin 0)",
            read(),
            spin(0),
            vec![lagging(R1, 1000), ok(R2, 1000), ok(R3, 1000)],
            (Replica(R2), Read),
        ),
        row(
            "spin rotates among eligible replicas only (spin 1)",
            read(),
            spin(1),
            vec![lagging(R1, 1000), ok(R2, 1000), ok(R3, 1000)],
            (Replica(R3), Read),
        ),
        row(
            "a huge (odd) spin does not overflow",
            read(),
            spin(usize::MAX),
            two(),
            (Replica(R2), Read),
        ),
    ]
}

#[test]
fn routing_table() {
    let rows = routing_rows();
    assert!(rows.len() >= 30, "only {} rows", rows.len());
    let mut failures = Vec::new();
    for r in &rows {
        let got = route(&r.class, &r.session, &r.replicas);
        if got != r.want {
            failures.push(format!(
                "- {}\n    want {:?}, got {:?}\n    class {:?}\n    session {:?}\n    replicas {:?}",
                r.desc, r.want, got, r.class, r.session, r.replicas
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} routing rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// No row may ever send a non-read statement to a replica outside a transaction
/// that is already there, whatever the hints, mode, pins and health.
#[test]
fn a_write_never_reaches_a_replica() {
    let kinds = [
        Kind::Write,
        Kind::Session,
        Kind::TxnControl,
        Kind::Begin { replica_ok: false },
    ];
    let hints = [
        None,
        Some(RouteMode::Primary),
        Some(RouteMode::Replica),
        Some(RouteMode::Auto),
    ];
    let modes = [RouteMode::Primary, RouteMode::Replica, RouteMode::Auto];
    for kind in kinds {
        for parsed in [true, false] {
            for hint in hints {
                for m in modes {
                    for s in 0..3 {
                        let class = Class {
                            hint,
                            parsed,
                            ..Class::of(kind)
                        };
                        let session = SessionView {
                            mode: m,
                            spin: s,
                            held_replica: Some(R1),
                            ..PLAIN
                        };
                        let (target, reason) = route(&class, &session, &two());
                        assert_eq!(
                            target,
                            Target::Primary,
                            "{kind:?} (parsed {parsed}, hint {hint:?}, mode {m:?}, spin {s}) went to a replica ({reason:?})"
                        );
                    }
                }
            }
        }
    }
}

/// Different spins spread reads over both replicas.
#[test]
fn spin_spreads_reads_over_every_eligible_replica() {
    let mut hit = std::collections::BTreeSet::new();
    for s in 0..8 {
        match route(&read(), &spin(s), &two()) {
            (Target::Replica(id), Reason::Read) => {
                hit.insert(id);
            }
            other => panic!("spin {s}: read went to {other:?}"),
        }
    }
    assert_eq!(hit.into_iter().collect::<Vec<_>>(), vec![R1, R2]);
}

struct MergeRow {
    desc: &'static str,
    a: Class,
    b: Class,
    want: Class,
}

fn merge_rows() -> Vec<MergeRow> {
    let begin_ro = Class::of(Kind::Begin { replica_ok: true });
    let begin_rw = Class::of(Kind::Begin { replica_ok: false });
    let two_of = |kind: Kind| Class {
        statements: 2,
        ..Class::of(kind)
    };
    vec![
        MergeRow {
            desc: "Read + Read = Read",
            a: read(),
            b: read(),
            want: two_of(Kind::Read),
        },
        MergeRow {
            desc: "Begin + Begin (read only) = Begin (read only)",
            a: begin_ro,
            b: begin_ro,
            want: two_of(Kind::Begin { replica_ok: true }),
        },
        MergeRow {
            desc: "Begin + Begin (read-write) = Begin (read-write)",
            a: begin_rw,
            b: begin_rw,
            want: two_of(Kind::Begin { replica_ok: false }),
        },
        MergeRow {
            desc: "Begin read only + Begin read-write = Write",
            a: begin_ro,
            b: begin_rw,
            want: two_of(Kind::Write),
        },
        MergeRow {
            desc: "Read + Write = Write",
            a: read(),
            b: write(),
            want: two_of(Kind::Write),
        },
        MergeRow {
            desc: "Write + Read = Write",
            a: write(),
            b: read(),
            want: two_of(Kind::Write),
        },
        MergeRow {
            desc: "Session + Read = Write, keeping the session effect",
            a: Class::of(Kind::Session),
            b: read(),
            want: Class {
                session_effect: true,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "Read + Session = Write, keeping the session effect",
            a: read(),
            b: Class::of(Kind::Session),
            want: Class {
                session_effect: true,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "Session + Session = Session",
            a: Class::of(Kind::Session),
            b: Class::of(Kind::Session),
            want: two_of(Kind::Session),
        },
        MergeRow {
            desc: "TxnControl + TxnControl = TxnControl",
            a: Class::of(Kind::TxnControl),
            b: Class::of(Kind::TxnControl),
            want: two_of(Kind::TxnControl),
        },
        MergeRow {
            desc: "Read + TxnControl = Write",
            a: read(),
            b: Class::of(Kind::TxnControl),
            want: two_of(Kind::Write),
        },
        MergeRow {
            desc: "Begin + Read = Write",
            a: begin_ro,
            b: read(),
            want: two_of(Kind::Write),
        },
        MergeRow {
            desc: "pin of the first is kept",
            a: Class {
                pin: Some(PinReason::TempObject),
                ..read()
            },
            b: read(),
            want: Class {
                pin: Some(PinReason::TempObject),
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "pin of the second is kept",
            a: read(),
            b: Class {
                pin: Some(PinReason::AdvisoryLock),
                ..read()
            },
            want: Class {
                pin: Some(PinReason::AdvisoryLock),
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "drops_prepared of the first is kept",
            a: Class {
                drops_prepared: true,
                ..Class::of(Kind::Session)
            },
            b: read(),
            want: Class {
                drops_prepared: true,
                session_effect: true,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "drops_prepared of the second is kept",
            a: read(),
            b: Class {
                drops_prepared: true,
                ..read()
            },
            want: Class {
                drops_prepared: true,
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "unparsed + Read = unparsed Write",
            a: Class::unparsed(),
            b: read(),
            want: Class {
                parsed: false,
                leaves: ConnState::UNPARSED,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "Read + unparsed = unparsed Write",
            a: read(),
            b: Class::unparsed(),
            want: Class {
                parsed: false,
                leaves: ConnState::UNPARSED,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "parsed is AND-ed even when the kinds agree",
            a: Class {
                parsed: false,
                ..read()
            },
            b: read(),
            want: Class {
                parsed: false,
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "leading hint (the first statement's) wins",
            a: hinted(Kind::Read, RouteMode::Primary),
            b: hinted(Kind::Read, RouteMode::Replica),
            want: Class {
                hint: Some(RouteMode::Primary),
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "hint of the second is used when the first has none",
            a: read(),
            b: hinted(Kind::Read, RouteMode::Replica),
            want: Class {
                hint: Some(RouteMode::Replica),
                ..two_of(Kind::Read)
            },
        },
        MergeRow {
            desc: "the later SET pgsplit.route wins",
            a: Class {
                set_route: Some(RouteMode::Primary),
                ..Class::of(Kind::Session)
            },
            b: Class {
                set_route: Some(RouteMode::Auto),
                ..Class::of(Kind::Session)
            },
            want: Class {
                set_route: Some(RouteMode::Auto),
                ..two_of(Kind::Session)
            },
        },
        MergeRow {
            desc: "an earlier SET pgsplit.route is kept when the later has none",
            a: Class {
                set_route: Some(RouteMode::Replica),
                ..Class::of(Kind::Session)
            },
            b: read(),
            want: Class {
                set_route: Some(RouteMode::Replica),
                session_effect: true,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "connection state left and released is kept from both",
            a: Class {
                leaves: ConnState::TEMP,
                clears: ConnState::LISTEN,
                ..write()
            },
            b: Class {
                leaves: ConnState::PREPARED,
                ..write()
            },
            want: Class {
                leaves: ConnState::TEMP.with(ConnState::PREPARED),
                clears: ConnState::LISTEN,
                ..two_of(Kind::Write)
            },
        },
        MergeRow {
            desc: "statement counts add up and saturate",
            a: Class {
                statements: u32::MAX,
                ..read()
            },
            b: Class {
                statements: 3,
                ..read()
            },
            want: Class {
                statements: u32::MAX,
                ..read()
            },
        },
    ]
}

#[test]
fn merge_table() {
    let rows = merge_rows();
    let mut failures = Vec::new();
    for r in &rows {
        let got = merge(r.a, r.b);
        if got != r.want {
            failures.push(format!(
                "- {}\n    a    {:?}\n    b    {:?}\n    want {:?}\n    got  {:?}",
                r.desc, r.a, r.b, r.want, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} merge rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// A merged unit routes like its most restrictive part.
#[test]
fn merged_units_route_like_their_most_restrictive_part() {
    let cases = [
        (
            "Read + Read merged stays on a replica",
            merge(read(), read()),
            (Target::Replica(R1), Reason::Read),
        ),
        (
            "Read + unparsed merged falls back to the primary",
            merge(read(), Class::unparsed()),
            (Target::Primary, Reason::ParseFallback),
        ),
        (
            "Read + Write merged goes to the primary as a write",
            merge(read(), write()),
            (Target::Primary, Reason::Write),
        ),
        (
            "Read + pinning read merged stays on the primary",
            merge(
                read(),
                Class {
                    pin: Some(PinReason::AdvisoryLock),
                    ..read()
                },
            ),
            (Target::Primary, Reason::Pinned),
        ),
    ];
    for (desc, class, want) in cases {
        assert_eq!(route(&class, &PLAIN, &two()), want, "{desc}");
    }
}
