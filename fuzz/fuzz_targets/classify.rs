//! The SQL classifier and the lexer that keys its cache.
//!
//! The input is read as UTF-8 (invalid sequences become U+FFFD) and split at the
//! first NUL into two texts `a` and `b` (no NUL: `b` is empty and only `a` is used).
//! SQL text cannot hold a NUL on the wire, so the split costs nothing real.
//!
//! Checked, beyond "never panics" and "never overflows the stack":
//! - `route::classify::classify`, `route::lexer::mask` and the other lexer entry
//!   points agree on the leading-comment hint;
//! - the cache invariant (route/lexer.rs, "The cache invariant"): a fresh
//!   `Classifier` that classifies `a` and then `b` returns for each exactly what the
//!   uncached `classify` returns, so when `a` and `b` have the same cacheable mask
//!   key, `b` answered from `a`'s cache entry must still be right; the same pair
//!   check is made against a copy of `a` with its digits changed (same key, other
//!   literal values), and across inputs with a table of the first text seen for each
//!   cacheable key (its panic message names both texts; put them in one input
//!   separated by a NUL to get a standalone reproducer).
//!
//! One known edge is documented in route/lexer.rs ("One known edge"): all literal
//! kinds mask to the same `?`, so a text sqlparser reads and one it cannot read may
//! share a key (`SELECT 1::numeric(10)` / `SELECT 1::numeric('10')`, kept in
//! regressions/classify/). By default a pair that differs only that way (exactly one
//! side unparsed) is tolerated and printed once per key to stderr as
//! `known edge: ...`; with `PGSPLIT_FUZZ_STRICT=1` it fails like any other pair.
//! Two parsed texts with one cacheable key must always classify the same.
//!
//! The work runs on a thread with a 2 MiB stack, the size of the tokio worker threads
//! the classifier runs on in pgsplit (`#[tokio::main]` defaults), so a recursion that
//! would crash the proxy crashes here too. `PGSPLIT_FUZZ_STACK` (bytes) overrides it.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pgsplit::route::catalog::FunctionCatalog;
use pgsplit::route::class::Class;
use pgsplit::route::classify::{Classifier, classify};
use pgsplit::route::lexer;

/// Beyond this many remembered keys the cross-input table starts over.
const WITNESS_LIMIT: usize = 200_000;

/// Keys already reported as the known edge (only printed once each).
const EDGE_REPORT_LIMIT: usize = 50;

struct State {
    catalog: FunctionCatalog,
    strict: bool,
    /// Cacheable key → the first text seen with it and its class without hint.
    witness: HashMap<String, (String, Class)>,
    edges: HashSet<String>,
}

impl State {
    /// Whether two classes for texts sharing a cacheable key are acceptable.
    fn agree(&mut self, key: &str, a: (&str, Class), b: (&str, Class)) -> bool {
        if a.1 == b.1 {
            return true;
        }
        if self.strict || a.1.parsed == b.1.parsed {
            return false;
        }
        if self.edges.len() < EDGE_REPORT_LIMIT && self.edges.insert(key.to_owned()) {
            eprintln!("known edge: {:?} and {:?} share key {key:?}; parsed {} vs {}", a.0, b.0, a.1.parsed, b.1.parsed);
        }
        true
    }
}

struct Worker {
    to: SyncSender<String>,
    from: Receiver<()>,
}

fn worker() -> &'static Mutex<Worker> {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let stack = std::env::var("PGSPLIT_FUZZ_STACK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2 << 20);
        let (to, inbox) = sync_channel::<String>(0);
        let (done, from) = sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("classify".into())
            .stack_size(stack)
            .spawn(move || {
                let mut state = State {
                    catalog: FunctionCatalog::builtin(),
                    strict: std::env::var("PGSPLIT_FUZZ_STRICT").is_ok_and(|v| v == "1"),
                    witness: HashMap::new(),
                    edges: HashSet::new(),
                };
                for input in inbox {
                    check_input(&input, &mut state);
                    if done.send(()).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the classify thread");
        Mutex::new(Worker { to, from })
    })
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data).into_owned();
    let w = worker().lock().unwrap_or_else(|e| e.into_inner());
    // A panic on the worker aborts the process (libfuzzer-sys's panic hook), so a
    // failed send or receive cannot happen without a crash already reported.
    w.to.send(input).expect("classify thread is gone");
    w.from.recv().expect("classify thread is gone");
});

fn check_input(input: &str, st: &mut State) {
    let (a, b) = input.split_once('\0').unwrap_or((input, ""));
    let class_a = check_text(a, st);
    if b.is_empty() {
        // One text: pair it with a copy whose literal values differ.
        let twin: String = a
            .chars()
            .map(|c| match c {
                '0'..='8' => char::from(c as u8 + 1),
                '9' => '0',
                other => other,
            })
            .collect();
        if twin != a {
            check_pair(a, class_a, &twin, st);
        }
    } else {
        check_pair(a, class_a, b, st);
    }
}

/// Classifies `first` then `second` with one fresh cached `Classifier` and checks
/// both answers against the uncached classifier.
fn check_pair(first: &str, class_first: Class, second: &str, st: &mut State) {
    let class_second = check_text(second, st);
    let cached = Classifier::new(st.catalog.clone(), 16);
    assert_eq!(cached.classify(first), class_first, "Classifier vs classify for {first:?}");
    let got = cached.classify(second);
    if got == class_second {
        return;
    }
    let (ma, mb) = (lexer::mask(first), lexer::mask(second));
    // The Classifier can only differ by answering from `first`'s entry.
    assert!(ma.cacheable && mb.cacheable && ma.key == mb.key, "Classifier differs without a shared key");
    let hinted = |c: Class| Class { hint: None, ..c };
    if !st.agree(&mb.key, (first, hinted(class_first)), (second, hinted(class_second))) {
        panic!(
            "cache invariant broken: after {first:?} (key {:?}), the Classifier answered \
             {got:?} for {second:?} but classify says {class_second:?}",
            ma.key
        );
    }
}

/// The uncached class of `sql`, after checking the lexer entry points against it and
/// the cross-input table.
fn check_text(sql: &str, st: &mut State) -> Class {
    let class = classify(sql, &st.catalog);
    let masked = lexer::mask(sql);
    let hint = lexer::leading_hint(sql);
    assert_eq!(class.hint, hint, "classify and leading_hint disagree on {sql:?}");
    assert_eq!(masked.hint, hint, "mask and leading_hint disagree on {sql:?}");
    let _ = lexer::operator_count(sql);
    let _ = lexer::may_change_session(sql);
    if !class.parsed {
        assert_eq!(class.kind, Class::unparsed().kind, "unparsed text not sent to the primary");
    }
    if masked.cacheable {
        assert!(!masked.key.is_empty(), "cacheable with an empty key: {sql:?}");
        let unhinted = Class { hint: None, ..class };
        if st.witness.len() >= WITNESS_LIMIT {
            st.witness.clear();
        }
        let (seen_text, seen_class) = st
            .witness
            .entry(masked.key.clone())
            .or_insert_with(|| (sql.to_owned(), unhinted))
            .clone();
        if !st.agree(&masked.key, (&seen_text, seen_class), (sql, unhinted)) {
            panic!(
                "cache invariant broken: {seen_text:?} and {sql:?} share the cacheable key {:?} \
                 but classify differently: {seen_class:?} vs {unhinted:?}",
                masked.key
            );
        }
    }
    class
}
