//! Whether the read-your-writes floor query may travel in the same flight as
//! a client's unit (pipelined behind its Sync or Query), saving the round trip
//! pgsplit would otherwise make after every committed write.
//!
//! The query, `SELECT pg_catalog.pg_current_wal_insert_lsn()`, runs on the
//! client's connection right after the unit. That is invisible to the client
//! only when the server is outside any transaction by then and reads the
//! query as a query: so the unit must be an autocommit write, or a lone
//! `COMMIT`/`END` (without `AND CHAIN`) of the open transaction, and nothing
//! in it may start a transaction or a `COPY ... FROM STDIN` (the server would
//! take the query for copy data). The texts are checked conservatively: a
//! word like `begin` or `copy` anywhere, even inside a string, keeps the
//! probe out of the flight and pgsplit asks afterwards, as it always did.

use super::state::SessionState;
use super::unit::Unit;
use crate::protocol::{fields, tag};
use crate::route::class::Kind;

/// The floor query pipelined behind a unit. Schema-qualified: a client's
/// `search_path` must not be able to put another function in its place.
pub(crate) const SQL: &[u8] = b"SELECT pg_catalog.pg_current_wal_insert_lsn()::text";

/// [`SQL`] as the Query message sent, built once at compile time.
pub(crate) const QUERY: [u8; SQL.len() + 6] = crate::protocol::build::query_const(SQL);

/// Whether the floor query may follow `unit` in the same flight. `in_txn`:
/// the session has a transaction open before the unit.
pub(crate) fn may_follow(unit: &Unit, st: &SessionState, in_txn: bool) -> bool {
    let class = unit.class();
    let shape = if in_txn {
        // A lone COMMIT/END ends the transaction (a failed one rolls back):
        // the server is idle when the probe arrives.
        class.kind == Kind::TxnControl && statements_run(unit) == 1
    } else {
        class.kind == Kind::Write
    };
    shape
        && unit.complete
        && any_text(unit, st, |t| {
            mentions_any(t, &[b"begin", b"start", b"copy"])
                || (in_txn && (!is_commit(t) || mentions_any(t, &[b"chain"])))
        }) == Some(false)
}

/// How many statements `unit` runs: those of its simple Query, or one per
/// Execute. (A class counts every message that names a statement, so an
/// extended unit's Parse, Bind and Describe of one statement count three.)
fn statements_run(unit: &Unit) -> usize {
    match unit.frames.first() {
        Some(f) if f.tag == tag::QUERY => {
            usize::try_from(unit.class().statements).unwrap_or(usize::MAX)
        }
        _ => unit.frames.iter().filter(|f| f.tag == tag::EXECUTE).count(),
    }
}

/// Whether `unit`, run inside an open transaction, may end it (and so commit
/// what the transaction wrote). Only such a unit needs its ReadyForQuery held
/// back for the floor; a statement in the middle of a transaction does not.
///
/// A statement the classifier read on its own is transaction control or it
/// cannot end the transaction (a function or procedure cannot commit inside
/// a transaction block), so the class answers for most units at no cost.
/// Only texts of several statements, or that could not be parsed, are
/// scanned, conservatively: any of the words that end a transaction counts.
pub(crate) fn may_end_transaction(unit: &Unit, st: &SessionState) -> bool {
    const ENDING: &[&[u8]] = &[b"commit", b"end", b"rollback", b"abort", b"prepare"];
    unit.class().kind == Kind::TxnControl
        || !unit.complete
        || unit.txn_control
        || (unit.opaque && any_text(unit, st, |t| mentions_any(t, ENDING)) == Some(true))
}

/// Runs `suspect` over the statement texts `unit` executes (its Query and
/// Parse texts, and the statements its Binds name): `Some(true)` when one is
/// suspect or cannot be seen (an unknown statement, a FunctionCall, a
/// malformed message), `Some(false)` when none is, `None` without any text.
fn any_text(
    unit: &Unit,
    st: &SessionState,
    mut suspect: impl FnMut(&[u8]) -> bool,
) -> Option<bool> {
    let mut seen = false;
    for frame in &unit.frames {
        let text: Option<&[u8]> = match frame.tag {
            tag::QUERY => fields::query_text(frame.body()).ok(),
            tag::PARSE => fields::parse(frame.body()).ok().map(|(_, t)| t),
            tag::BIND => fields::bind(frame.body())
                .ok()
                .and_then(|(_, name)| st.statement(name))
                .map(|s| &s.text[..]),
            tag::FUNCTION_CALL => None,
            _ => continue,
        };
        match text {
            Some(t) if !suspect(t) => seen = true,
            _ => return Some(true),
        }
    }
    seen.then_some(false)
}

/// A statement whose first word is COMMIT or END.
fn is_commit(text: &[u8]) -> bool {
    matches!(first_word(text), Some(w) if w.eq_ignore_ascii_case(b"commit") || w.eq_ignore_ascii_case(b"end"))
}

/// Whether any of `words` occurs in `text`, ignoring ASCII case.
fn mentions_any(text: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|w| {
        text.windows(w.len())
            .any(|window| window.eq_ignore_ascii_case(w))
    })
}

/// The first word of a statement, after whitespace, comments and `(`.
fn first_word(mut text: &[u8]) -> Option<&[u8]> {
    loop {
        text = text.trim_ascii_start();
        if let Some(rest) = text.strip_prefix(b"--") {
            let end = rest.iter().position(|b| *b == b'\n')?;
            text = &rest[end..];
        } else if let Some(rest) = text.strip_prefix(b"/*") {
            let end = rest.windows(2).position(|w| w == b"*/")?;
            text = &rest[end + 2..];
        } else if let Some(rest) = text.strip_prefix(b"(") {
            text = rest;
        } else {
            break;
        }
    }
    let len = text
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(text.len());
    (len > 0).then(|| &text[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;
    use crate::route::class::RouteMode;
    use crate::route::classify::Classifier;
    use bytes::Bytes;

    fn frame(t: u8, body: &[u8]) -> Frame {
        let mut v = vec![t];
        v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
        v.extend_from_slice(body);
        Frame {
            tag: t,
            bytes: Bytes::from(v),
        }
    }

    fn query_unit(sql: &str, st: &mut SessionState) -> Unit {
        let classifier = Classifier::new(crate::route::catalog::FunctionCatalog::builtin(), 64);
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        let mut unit = Unit::default();
        let done = unit
            .push(frame(tag::QUERY, &body), st, &classifier)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(done);
        unit
    }

    #[test]
    fn which_units_may_carry_the_probe() {
        // (sql, transaction open before, may follow)
        let cases = [
            ("INSERT INTO t VALUES (1)", false, true),
            ("UPDATE t SET v = v + 1 WHERE id = 3", false, true),
            ("/* note */ DELETE FROM t", false, true),
            (
                "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
                false,
                true,
            ),
            // A transaction or a COPY could follow: not in the flight.
            ("INSERT INTO t VALUES (1); BEGIN", false, false),
            ("COPY t FROM STDIN", false, false),
            ("INSERT INTO t VALUES ('copy')", false, false),
            ("BEGIN", false, false),
            // Reads never raise a floor.
            ("SELECT 1", false, false),
            // Inside a transaction: only what ends it.
            ("COMMIT", true, true),
            ("end", true, true),
            ("  -- done\n COMMIT", true, true),
            ("COMMIT AND CHAIN", true, false),
            ("ROLLBACK", true, false),
            ("UPDATE t SET v = 1", true, false),
            ("SAVEPOINT a", true, false),
            ("PREPARE TRANSACTION 'x'", true, false),
        ];
        for (sql, in_txn, want) in cases {
            let mut st = SessionState::new(RouteMode::Auto, &[]);
            let unit = query_unit(sql, &mut st);
            assert_eq!(
                may_follow(&unit, &st, in_txn),
                want,
                "{sql:?} in_txn={in_txn}"
            );
        }
    }

    /// Parse/Bind/Describe/Execute/Sync of `sql` as the unnamed statement,
    /// as pgbench `-M extended` and most drivers send it.
    fn extended_unit(sql: &str, st: &mut SessionState) -> Unit {
        let classifier = Classifier::new(crate::route::catalog::FunctionCatalog::builtin(), 64);
        let mut parse = b"\0".to_vec();
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(b"\0\0\0");
        let frames = [
            frame(tag::PARSE, &parse),
            frame(tag::BIND, b"\0\0\0\0\0\0\0\0"),
            frame(tag::DESCRIBE, b"P\0"),
            frame(tag::EXECUTE, b"\0\0\0\0\0"),
            frame(tag::SYNC, b""),
        ];
        let mut unit = Unit::default();
        let mut done = false;
        for f in frames {
            done = unit
                .push(f, st, &classifier)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(done);
        unit
    }

    #[test]
    fn extended_units_carry_the_probe_as_simple_ones_do() {
        for (sql, in_txn, want) in [
            ("END;", true, true),
            ("COMMIT", true, true),
            ("ROLLBACK", true, false),
            ("UPDATE t SET v = 1 WHERE id = $1", false, true),
            ("UPDATE t SET v = 1 WHERE id = $1", true, false),
            ("SELECT 1", false, false),
        ] {
            let mut st = SessionState::new(RouteMode::Auto, &[]);
            let unit = extended_unit(sql, &mut st);
            assert_eq!(
                may_follow(&unit, &st, in_txn),
                want,
                "{sql:?} in_txn={in_txn}"
            );
        }
    }

    #[test]
    fn which_units_may_end_a_transaction() {
        for (sql, want) in [
            ("UPDATE t SET v = 1", false),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 3", false),
            ("INSERT INTO t VALUES (1)", false),
            ("COMMIT", true),
            ("END", true),
            ("ROLLBACK", true),
            ("UPDATE t SET v = 1; COMMIT", true),
            ("SAVEPOINT a", true),
            // One statement the classifier read: its class answers.
            ("UPDATE t SET note = 'pending'", false),
            ("SELECT prepare_report()", false),
            // Several statements: conservative, the word anywhere counts.
            ("UPDATE t SET note = 'pending'; SELECT 1", true),
            ("UPDATE t SET v = 1; SELECT 1", false),
        ] {
            let mut st = SessionState::new(RouteMode::Auto, &[]);
            let unit = query_unit(sql, &mut st);
            assert_eq!(may_end_transaction(&unit, &st), want, "{sql:?}");
        }
    }

    #[test]
    fn first_words() {
        assert_eq!(first_word(b"  commit"), Some(&b"commit"[..]));
        assert_eq!(
            first_word(b"/* a */ -- b\n(select 1)"),
            Some(&b"select"[..])
        );
        assert_eq!(first_word(b"-- unterminated"), None);
        assert_eq!(first_word(b"/* unterminated"), None);
        assert_eq!(first_word(b""), None);
        assert_eq!(first_word(b"123"), None);
    }
}
