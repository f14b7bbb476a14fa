//! Session effects beyond the kind: `set_route`, `drops_prepared`, hints, statement
//! counts, and the cached classifier's catalog swap and bounds.

use std::sync::Arc;

use pgsplit::route::catalog::FunctionCatalog;
use pgsplit::route::class::{Class, Kind, PinReason, RouteMode};
use pgsplit::route::classify::{Classifier, classify};

fn class(sql: &str) -> Class {
    classify(sql, &FunctionCatalog::builtin())
}

#[test]
fn route_settings() {
    let cases: &[(&str, Option<RouteMode>, Option<PinReason>)] = &[
        (
            "SET pgsplit.route = primary",
            Some(RouteMode::Primary),
            Some(PinReason::Hint),
        ),
        (
            "SET SESSION pgsplit.route TO 'Primary'",
            Some(RouteMode::Primary),
            Some(PinReason::Hint),
        ),
        (
            "SET pgsplit.route = replica",
            Some(RouteMode::Replica),
            None,
        ),
        (
            "set PGSPLIT.ROUTE to 'replica'",
            Some(RouteMode::Replica),
            None,
        ),
        ("SET pgsplit.route = auto", Some(RouteMode::Auto), None),
        ("SET pgsplit.route TO DEFAULT", Some(RouteMode::Auto), None),
        ("RESET pgsplit.route", Some(RouteMode::Auto), None),
        ("RESET ALL", None, None),
        ("DISCARD ALL", None, None),
        ("SET pgsplit.route = sideways", None, None),
        ("SET pgsplit.other = primary", None, None),
        ("SET LOCAL pgsplit.route = primary", None, None),
        ("RESET search_path", None, None),
        // The last setting in a string wins; a pin, once set, stays.
        (
            "SET pgsplit.route = primary; SET pgsplit.route = auto",
            Some(RouteMode::Auto),
            Some(PinReason::Hint),
        ),
    ];
    for &(sql, route, pin) in cases {
        let got = class(sql);
        assert_eq!((got.set_route, got.pin), (route, pin), "{sql}");
    }
}

#[test]
fn session_effects() {
    for sql in [
        "SET a = 1",
        "RESET ALL",
        "DISCARD ALL",
        "SET a = 1; SELECT 1",
        "BEGIN; SET search_path = app; COMMIT",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SELECT set_config('search_path', 'app', false)",
        "SELECT pg_catalog.set_config('a.b', 'c', true)",
        // Unreadable, but a SET all the same.
        "SET a = (",
        "SELECT 1; RESET",
    ] {
        let got = class(sql);
        assert!(got.session_effect, "{sql}");
    }
    assert_eq!(class("SET a = 1; SELECT 1").kind, Kind::Write);
    assert!(!class("SET a = (").parsed);
    for sql in [
        "SELECT 1",
        "SET LOCAL a = 1",
        "SET TRANSACTION READ ONLY",
        "BEGIN",
        "COMMIT",
        "INSERT INTO t VALUES (1)",
        "DO $$ BEGIN END $$",
        "SELECT 'SET a = 1'",
    ] {
        assert!(!class(sql).session_effect, "{sql}");
    }
}

#[test]
fn dropping_prepared_statements() {
    for sql in [
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "deallocate prepare all",
        "SELECT 1; DISCARD ALL",
    ] {
        assert!(class(sql).drops_prepared, "{sql}");
    }
    for sql in [
        "DISCARD PLANS",
        "DEALLOCATE p",
        "DEALLOCATE \"all\"",
        "RESET ALL",
        "SELECT 1",
    ] {
        assert!(!class(sql).drops_prepared, "{sql}");
    }
}

#[test]
fn statement_counts_and_empty_queries() {
    for sql in [
        "",
        "   ",
        ";",
        ";;",
        "-- only a comment",
        "/* only */ /* comments */",
    ] {
        let got = class(sql);
        assert_eq!(got.kind, Kind::Read, "{sql:?}");
        assert_eq!(got.statements, 0, "{sql:?}");
        assert!(got.parsed, "{sql:?}");
    }
    assert_eq!(class("SELECT 1").statements, 1);
    assert_eq!(class("SELECT 1; SELECT 2;").statements, 2);
    assert_eq!(class("BEGIN; UPDATE t SET a = 1; COMMIT").statements, 3);
    let unparsed = class("/* pgsplit:replica */ DO $$ BEGIN END $$");
    assert_eq!(unparsed.statements, 1);
    assert!(!unparsed.parsed);
    assert_eq!(unparsed.kind, Kind::Write);
    assert_eq!(
        unparsed.hint,
        Some(RouteMode::Replica),
        "hint kept when unparsed"
    );
}

#[test]
fn combining_kinds() {
    assert_eq!(
        class("BEGIN READ ONLY").kind,
        Kind::Begin { replica_ok: true }
    );
    assert_eq!(class("SET a = 1").kind, Kind::Session);
    assert_eq!(class("COMMIT").kind, Kind::TxnControl);
    // Only a lone statement keeps a non-Read kind.
    for sql in [
        "BEGIN READ ONLY; SELECT 1",
        "SET a = 1; SELECT 1",
        "SELECT 1; COMMIT",
        "SET a = 1; SET b = 2",
    ] {
        assert_eq!(class(sql).kind, Kind::Write, "{sql}");
    }
}

#[test]
fn hints_from_the_uncached_function() {
    assert_eq!(
        class("/* pgsplit:replica */ SELECT 1").hint,
        Some(RouteMode::Replica)
    );
    assert_eq!(
        class("/* pgsplit:primary */ SELECT 1").hint,
        Some(RouteMode::Primary)
    );
    assert_eq!(class("SELECT /* pgsplit:primary */ 1").hint, None);
    // A replica hint never makes a write a read: the router decides with both.
    let hinted_write = class("/* pgsplit:replica */ DELETE FROM t");
    assert_eq!(
        (hinted_write.kind, hinted_write.hint),
        (Kind::Write, Some(RouteMode::Replica))
    );
}

#[test]
fn catalog_swap_clears_the_cache_only_on_change() {
    let classifier = Classifier::new(FunctionCatalog::builtin(), 100);
    assert_eq!(classifier.classify("SELECT price_of(1)").kind, Kind::Write);
    assert_eq!(classifier.cached(), 1);
    assert!(
        !classifier.set_catalog(FunctionCatalog::builtin()),
        "same catalog"
    );
    assert_eq!(classifier.cached(), 1);

    let loaded = FunctionCatalog::from_rows(
        vec![("public".to_owned(), "price_of".to_owned(), true)],
        &[],
        &[],
    );
    assert!(classifier.set_catalog(loaded.clone()));
    assert_eq!(classifier.cached(), 0);
    assert_eq!(*classifier.catalog(), loaded);
    assert_eq!(classifier.classify("SELECT price_of(2)").kind, Kind::Read);
}

#[test]
fn cache_is_bounded_and_skips_literal_dependent_text() {
    let classifier = Classifier::new(FunctionCatalog::builtin(), 3);
    for table in ["a", "b", "c", "d", "e"] {
        classifier.classify(&format!("SELECT * FROM {table}"));
        assert!(classifier.cached() <= 3);
    }
    let uncached = Classifier::new(FunctionCatalog::builtin(), 0);
    assert_eq!(uncached.classify("SELECT 1").kind, Kind::Read);
    assert_eq!(uncached.cached(), 0);

    // Same masked text, different classes: never cached.
    let classifier = Classifier::new(FunctionCatalog::builtin(), 100);
    let a = classifier.classify("SET default_transaction_isolation = 'serializable'");
    let b = classifier.classify("SET default_transaction_isolation = 'read committed'");
    assert_eq!(a.pin, Some(PinReason::Serializable));
    assert_eq!(b.pin, None);
    let c = classifier.classify("COPY t TO STDOUT");
    let d = classifier.classify("COPY t TO '/tmp/t'");
    assert_eq!((c.kind, d.kind), (Kind::Read, Kind::Write));
    assert_eq!(classifier.cached(), 0);
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();

    let classifier = Arc::new(Classifier::new(FunctionCatalog::builtin(), 1000));
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let sql = format!("SELECT * FROM t{} WHERE id = {i}", n % 2);
                    assert_eq!(classifier.classify(&sql).kind, Kind::Read);
                    if i % 50 == 0 {
                        classifier.set_catalog(FunctionCatalog::from_rows(
                            vec![("s".to_owned(), format!("f{i}"), true)],
                            &[],
                            &[],
                        ));
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        assert!(handle.join().is_ok());
    }
    assert!(classifier.cached() <= 2);
}

/// Pathological text must not overflow the stack of a tokio worker (2 MiB): it is
/// either classified or refused as unparsed, never a crash.
#[test]
fn deep_expressions_do_not_overflow_the_stack() {
    let n = 100_000;
    let texts = [
        format!("SELECT 1{}", "+1".repeat(n)),
        format!("SELECT 1 WHERE a{}", " AND a".repeat(n)),
        format!("SELECT 1{}", "::int".repeat(n)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(n)),
        format!("SELECT a{}", "[1]".repeat(n)),
        format!("SELECT {}1", "NOT ".repeat(n)),
        format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        format!("SELECT {}1{}", "f(".repeat(n), ")".repeat(n)),
        format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n)),
        format!("SELECT a FROM t WHERE id IN ({})", vec!["$1"; n].join(",")),
        // Just under the limit still parses.
        format!(
            "SELECT 1{}",
            "+1".repeat(pgsplit::route::classify::MAX_OPERATORS)
        ),
    ];
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            texts
                .iter()
                .map(|sql| classify(sql, &FunctionCatalog::builtin()))
                .collect::<Vec<_>>()
        });
    let classes = worker.map(|h| h.join());
    let Ok(Ok(classes)) = classes else {
        panic!("classifier thread failed");
    };
    for class in &classes[..4] {
        assert!(!class.parsed);
        assert_eq!(class.kind, Kind::Write);
    }
    let big_in_list = &classes[9];
    assert_eq!(
        big_in_list.kind,
        Kind::Read,
        "a long IN list is flat, not deep"
    );
    let at_limit = &classes[10];
    assert!(at_limit.parsed);
    assert_eq!(at_limit.kind, Kind::Read);
}
