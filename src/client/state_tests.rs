//! Table tests of [`SessionState::learn`]: a session, a unit's class and how
//! the server ended it in; the session's memory and the connection's duties
//! out.

use bytes::Bytes;

use super::*;

const P: ServerId = ServerId(0);
const R: ServerId = ServerId(1);

fn set(sql: &'static str) -> ReplayEntry {
    ReplayEntry {
        sql: Bytes::from_static(sql.as_bytes()),
        startup: None,
        drops_prepared: false,
        resets_all: false,
    }
}

fn done<'a>(status: TxStatus, ok: bool, changes: &'a [ReplayEntry]) -> Finished<'a> {
    Finished {
        server: P,
        status,
        ok,
        rolled_back: false,
        changes,
    }
}

fn logged(st: &SessionState) -> Vec<&[u8]> {
    st.replay.iter().map(|e| &e.sql[..]).collect()
}

#[test]
fn transactions_and_session_changes() {
    let set_a = [set("SET a = 1")];
    let session = Class::of(Kind::Session);

    // An autocommit SET is logged at once.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    let l = st.learn(&session, done(TxStatus::Idle, true, &set_a));
    assert_eq!(
        l,
        Learned {
            txn_ended: true,
            drops_prepared: false
        }
    );
    assert_eq!(logged(&st), vec![&b"SET a = 1"[..]]);
    assert_eq!(st.txn, None);

    // Inside a transaction: pending until COMMIT.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(
        &Class::of(Kind::Begin { replica_ok: false }),
        done(TxStatus::InTransaction, true, &[]),
    );
    assert_eq!(st.txn, Some(P));
    st.learn(&session, done(TxStatus::InTransaction, true, &set_a));
    assert!(st.replay.is_empty());
    assert_eq!(st.pending.len(), 1);
    let l = st.learn(
        &Class::of(Kind::TxnControl),
        done(TxStatus::Idle, true, &[]),
    );
    assert!(l.txn_ended);
    assert_eq!(logged(&st), vec![&b"SET a = 1"[..]]);
    assert!(st.pending.is_empty());

    // ROLLBACK drops what the transaction set.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(&session, done(TxStatus::InTransaction, true, &set_a));
    st.learn(
        &Class::of(Kind::TxnControl),
        Finished {
            rolled_back: true,
            ..done(TxStatus::Idle, true, &[])
        },
    );
    assert!(st.replay.is_empty() && st.pending.is_empty());

    // A failed SET is not logged, and a failed transaction stays open.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(&session, done(TxStatus::Failed, false, &set_a));
    assert!(st.pending.is_empty());
    assert_eq!(st.txn, Some(P));

    // The transaction belongs to the server that ran it.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(
        &Class::of(Kind::Begin { replica_ok: true }),
        Finished {
            server: R,
            ..done(TxStatus::InTransaction, true, &[])
        },
    );
    assert_eq!(st.txn, Some(R));
}

#[test]
fn pins_listen_route_and_prepared_statements() {
    let with = |f: fn(&mut Class)| {
        let mut c = Class::of(Kind::Write);
        f(&mut c);
        c
    };
    let listen = with(|c| c.pin = Some(PinReason::Listen));
    let temp = with(|c| c.pin = Some(PinReason::TempObject));
    let hint = with(|c| c.pin = Some(PinReason::Hint));
    let mixed_set = with(|c| c.session_effect = true);
    let route = with(|c| c.set_route = Some(RouteMode::Replica));
    let discard = with(|c| c.drops_prepared = true);

    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(&listen, done(TxStatus::Idle, true, &[]));
    assert_eq!(st.listen, Some(P));
    assert_eq!(st.pinned, Some(PinReason::Listen));
    // The first pin is the one reported.
    st.learn(&temp, done(TxStatus::Idle, true, &[]));
    assert_eq!(st.pinned, Some(PinReason::Listen));

    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(&temp, done(TxStatus::Idle, false, &[]));
    assert_eq!(st.pinned, None, "a failed statement pins nothing");
    st.learn(&hint, done(TxStatus::Idle, true, &[]));
    assert_eq!(st.pinned, None, "a hint routes one statement only");
    st.learn(&mixed_set, done(TxStatus::Idle, true, &[]));
    assert_eq!(
        st.pinned,
        Some(PinReason::SessionChange),
        "a SET sharing a string with other statements cannot be replayed"
    );

    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.learn(&route, done(TxStatus::Idle, true, &[]));
    assert_eq!(st.mode, RouteMode::Replica);

    let mut st = SessionState::new(RouteMode::Auto, &[]);
    st.statements.insert(
        Bytes::from_static(b"s1"),
        Statement {
            parse: Bytes::new(),
            text: Bytes::new(),
            hash: 1,
            class: Class::of(Kind::Read),
            generation: 0,
        },
    );
    let l = st.learn(&discard, done(TxStatus::Idle, false, &[]));
    assert!(!l.drops_prepared && st.statements.len() == 1);
    let l = st.learn(&discard, done(TxStatus::Idle, true, &[]));
    assert!(l.drops_prepared && st.statements.is_empty());
}

#[test]
fn what_keeps_a_transaction_pooled_session_on_its_connections() {
    let catalog = crate::route::catalog::FunctionCatalog::builtin();
    let cases = [
        ("SELECT 1", ConnState::NONE),
        ("UPDATE t SET v = 1", ConnState::NONE),
        ("SET search_path = app", ConnState::NONE),
        ("CREATE TEMP TABLE t (x int)", ConnState::TEMP),
        ("LISTEN jobs", ConnState::LISTEN),
        ("SELECT pg_advisory_lock(1)", ConnState::ADVISORY_LOCK),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            ConnState::HOLD_CURSOR,
        ),
        (
            "SELECT set_config('search_path', 'app', false)",
            ConnState::SESSION_CHANGE,
        ),
        ("SET a.b = 1; SELECT 1", ConnState::SESSION_CHANGE),
        ("PREPARE q AS SELECT 1", ConnState::PREPARED),
        ("LOAD 'auto_explain'", ConnState::LOAD),
        ("SELEC 1 FROM", ConnState::UNPARSED),
        // Every kind a string leaves, not only the first.
        (
            "CREATE TEMP TABLE t (x int); LISTEN jobs",
            ConnState::TEMP.with(ConnState::LISTEN),
        ),
    ];
    for (sql, want) in cases {
        let class = crate::route::classify::classify(sql, &catalog);
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        st.learn(&class, done(TxStatus::Idle, true, &[]));
        assert_eq!(st.conn_state, want, "{sql}");
        // A failed unit pins too: what it did before failing stays.
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        st.learn(&class, done(TxStatus::Idle, false, &[]));
        assert_eq!(st.conn_state, want, "{sql} (failed)");
    }
}

#[test]
fn a_pooled_session_is_released_when_it_releases_the_state() {
    let catalog = crate::route::catalog::FunctionCatalog::builtin();
    let learn = |st: &mut SessionState, sql: &str, ok: bool| {
        let class = crate::route::classify::classify(sql, &catalog);
        st.learn(&class, done(TxStatus::Idle, ok, &[]));
    };
    // (what pins, what releases it)
    for (pin, release) in [
        ("CREATE TEMP TABLE t (x int)", "DISCARD TEMP"),
        ("CREATE TEMP TABLE t (x int)", "DISCARD ALL"),
        ("LISTEN jobs", "UNLISTEN *"),
        (
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_advisory_unlock_all()",
        ),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE ALL"),
        ("PREPARE q AS SELECT 1", "DEALLOCATE ALL"),
        ("SELECT set_config('a.b', '1', false)", "RESET ALL"),
        ("SELEC 1 FROM", "DISCARD ALL"),
    ] {
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        learn(&mut st, pin, true);
        assert!(!st.conn_state.is_empty(), "{pin}");
        learn(&mut st, release, false);
        assert!(
            !st.conn_state.is_empty(),
            "{pin}: a failed {release} releases nothing"
        );
        learn(&mut st, release, true);
        assert_eq!(st.conn_state, ConnState::NONE, "{pin} then {release}");
    }
    // Not released: a LOAD by anything, another channel, one lock.
    for (pin, release) in [
        ("LOAD 'auto_explain'", "DISCARD ALL"),
        ("LISTEN jobs", "UNLISTEN other"),
        ("SELECT pg_advisory_lock(1)", "SELECT pg_advisory_unlock(1)"),
        ("CREATE TEMP TABLE t (x int)", "DROP TABLE t"),
    ] {
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        learn(&mut st, pin, true);
        learn(&mut st, release, true);
        assert!(
            !st.conn_state.is_empty(),
            "{pin} then {release}: still held"
        );
    }
    // UNLISTEN * also ends the session's LISTEN connection.
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    learn(&mut st, "LISTEN jobs", true);
    assert_eq!(st.listen, Some(P));
    learn(&mut st, "UNLISTEN *", true);
    assert_eq!(st.listen, None);
}

/// The settings a session needs follow its committed log: startup
/// parameters, SETs, RESETs, RESET ALL (back to the startup parameters); a
/// change that is more than a setting makes the log the only description.
#[test]
fn desired_settings_follow_the_committed_log() {
    let settings = [("TimeZone".to_owned(), "UTC".to_owned())];
    let mut st = SessionState::new(RouteMode::Auto, &settings);
    let session = Class::of(Kind::Session);
    let mut want = Settings::default();
    want.set("timezone", st.startup[0].sql.clone(), Some("UTC"));
    assert_eq!(*st.desired, want);
    let key_before = st.shared_key(7);

    let changes = [set("SET search_path TO a"), set("SET work_mem = '8MB'")];
    // Inside a transaction: nothing until it commits.
    st.learn(&session, done(TxStatus::InTransaction, true, &changes));
    assert_eq!(*st.desired, want);
    st.learn(
        &Class::of(Kind::TxnControl),
        done(TxStatus::Idle, true, &[]),
    );
    want.set(
        "search_path",
        Bytes::from_static(b"SET search_path TO a"),
        None,
    );
    want.set(
        "work_mem",
        Bytes::from_static(b"SET work_mem = '8MB'"),
        None,
    );
    assert_eq!(*st.desired, want);
    assert_ne!(st.shared_key(7), key_before, "settings are part of the key");

    st.learn(
        &session,
        done(TxStatus::Idle, true, &[set("RESET work_mem")]),
    );
    want.reset("work_mem");
    assert_eq!(*st.desired, want);

    let reset_all = ReplayEntry {
        resets_all: true,
        ..set("RESET ALL")
    };
    st.learn(&session, done(TxStatus::Idle, true, &[reset_all]));
    want.reset("search_path");
    assert_eq!(*st.desired, want, "back to the startup parameters");
    assert!(!st.opaque);

    st.learn(
        &session,
        done(TxStatus::Idle, true, &[set("SET ROLE other")]),
    );
    assert!(st.opaque && st.desired.is_empty());
    // For good: later settings do not make the log a state again.
    st.learn(&session, done(TxStatus::Idle, true, &[set("RESET ALL")]));
    assert!(st.opaque);
}
