//! SQL text → [`Class`]: the routing contract of DESIGN.md section 3.
//!
//! The rule is an allow-list: only query bodies (`SELECT`/`VALUES`/`WITH`), `EXPLAIN`
//! without `ANALYZE` of one, and `COPY ... TO STDOUT` can be [`Kind::Read`], and only
//! when a walk over the whole tree finds no data-modifying statement, no locking
//! clause, no `SELECT INTO` and no call to a function the catalog does not know to be
//! read-only. Every statement not recognised below is [`Kind::Write`], and text
//! sqlparser cannot read is [`Class::unparsed`].
//!
//! [`Classifier`] caches decisions by the text's masked shape ([`lexer::mask`]).

use std::ops::ControlFlow;

use sqlparser::ast::{
    CloseCursor, CopyTarget, DiscardObject, Expr, ObjectName, ObjectNamePart, Query, Reset, Select,
    Statement, TableFactor, TransactionAccessMode, TransactionIsolationLevel, TransactionMode,
    UtilityOption, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::catalog::FunctionCatalog;
use super::class::{Class, ConnState, Isolation, Kind, PinReason, RouteMode};
use super::lexer;

mod cache;
mod columns;
mod set;

pub use cache::Classifier;
pub use set::{SettingEffect, setting_effect};
use set::{decide_set, dotted, setting_text};

/// The session-level advisory lock functions: the lock belongs to the connection that
/// took it, so the session must stay there. The `_xact_` forms end with the
/// transaction and only make the statement a write.
const SESSION_ADVISORY_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Text with more operator tokens than this is not parsed (it goes to the primary as
/// unparsed): a chain of that many operators makes an AST that deep, and dropping or
/// walking it recurses once per level. Measured in a debug build on a 2 MiB thread
/// stack (tokio's default), chains of 8 000 operators of every kind tried (`+`,
/// `AND`, `::`, `[1]`, `UNION`) are still safe; this leaves a margin of two, and no
/// realistic read comes near it (a long `IN ($1, ...)` list is flat and not counted).
pub const MAX_OPERATORS: usize = 4_000;

/// Classifies `sql` (one or more `;`-separated statements) without a cache.
pub fn classify(sql: &str, catalog: &FunctionCatalog) -> Class {
    Class {
        hint: lexer::leading_hint(sql),
        ..classify_unhinted(sql, catalog)
    }
}

/// The class without the leading-comment hint: what the cache stores.
fn classify_unhinted(sql: &str, catalog: &FunctionCatalog) -> Class {
    if lexer::operator_count(sql) > MAX_OPERATORS {
        return Class::unparsed();
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        // An unreadable SET/RESET/DISCARD still changes the session on the primary;
        // saying so lets the router pin the session rather than let servers differ.
        return Class {
            session_effect: lexer::may_change_session(sql),
            ..Class::unparsed()
        };
    };
    let mut class = Class {
        statements: 0,
        ..Class::of(Kind::Read)
    };
    let mut all_read = true;
    // Every statement after the first is a read.
    let mut rest_read = true;
    let mut first_begin = None;
    let mut only = None;
    for statement in &statements {
        let one = classify_statement(statement, catalog);
        if class.statements == 0 {
            first_begin = one.deferrable_begin;
        } else {
            rest_read &= one.kind == Kind::Read;
        }
        class.statements = class.statements.saturating_add(1);
        all_read &= one.kind == Kind::Read;
        only = Some(one.kind);
        class.pin = class.pin.or(one.pin);
        class.set_route = one.set_route.or(class.set_route);
        class.drops_prepared |= one.drops_prepared;
        class.leaves = class
            .leaves
            .with(one.leaves)
            .with(ConnState::of_pin(one.pin));
        class.clears = class.clears.with(one.clears);
        class.session_effect |= one.kind == Kind::Session || one.session_effect;
        class.deferrable_begin = one.deferrable_begin;
    }
    if class.statements == 1 {
        if let [only] = statements.as_slice() {
            class.unverified_columns = columns::unverified_columns(only);
        }
    } else {
        class.deferrable_begin = None;
        if rest_read {
            class.opens_with_reads = first_begin;
        }
    }
    class.kind = match (class.statements, only) {
        _ if all_read => Kind::Read,
        (1, Some(kind)) => kind,
        _ => Kind::Write,
    };
    class
}

/// [`Class::unverified_columns`] of each statement of `sql`, in order (for a
/// string of several; a lone statement's class has its own). Not cached:
/// asked only when an optimistic transaction records such a string.
pub fn unverified_columns_each(sql: &str) -> Vec<u64> {
    if lexer::operator_count(sql) > MAX_OPERATORS {
        return Vec::new();
    }
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map(|statements| statements.iter().map(columns::unverified_columns).collect())
        .unwrap_or_default()
}

/// Why `sql` is not a provable read, in words, for the console's `SHOW
/// ROUTE`: the statement kind, or what inside a query makes it a write.
/// `None` for a read. Not on the data path (no cache).
pub fn why_not_read(sql: &str, catalog: &FunctionCatalog) -> Option<String> {
    if lexer::operator_count(sql) > MAX_OPERATORS {
        return Some(format!(
            "has more than {MAX_OPERATORS} operators (not parsed, to bound the parser's recursion)"
        ));
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Some("the parser could not read it".into());
    };
    for statement in &statements {
        let scan = Scan::run(statement, catalog);
        if decide(statement, &scan).kind == Kind::Read {
            continue;
        }
        let is_query = matches!(
            statement,
            Statement::Query(_) | Statement::Explain { .. } | Statement::Copy { .. }
        );
        return Some(match scan.why {
            Some(why) if is_query => why,
            _ => format!("is {}", statement_words(statement)),
        });
    }
    None
}

/// "a(n) INSERT statement": the statement's first keyword.
fn statement_words(statement: &Statement) -> String {
    let text = statement.to_string();
    let word = text.split_ascii_whitespace().next().unwrap_or("SQL");
    let article = if word.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word} statement")
}

/// What one statement is and does.
struct Decision {
    kind: Kind,
    pin: Option<PinReason>,
    set_route: Option<RouteMode>,
    drops_prepared: bool,
    /// Changes session state without being a `Kind::Session` statement
    /// (`SELECT set_config(...)`).
    session_effect: bool,
    /// See [`Class::leaves`] (beyond what `pin` says).
    leaves: ConnState,
    /// See [`Class::clears`].
    clears: ConnState,
    /// See [`Class::deferrable_begin`].
    deferrable_begin: Option<Isolation>,
}

impl Decision {
    fn of(kind: Kind) -> Self {
        Decision {
            kind,
            pin: None,
            set_route: None,
            drops_prepared: false,
            session_effect: false,
            leaves: ConnState::NONE,
            clears: ConnState::NONE,
            deferrable_begin: None,
        }
    }

    fn pinned(kind: Kind, pin: PinReason) -> Self {
        Decision {
            pin: Some(pin),
            ..Decision::of(kind)
        }
    }
}

fn classify_statement(statement: &Statement, catalog: &FunctionCatalog) -> Decision {
    let scan = Scan::run(statement, catalog);
    let mut decision = decide(statement, &scan);
    // Pins found anywhere in the tree (an advisory lock taken inside an INSERT...).
    if decision.pin.is_none() {
        decision.pin = scan.pin();
    }
    decision.session_effect |= scan.set_config;
    if scan.advisory_unlock_all {
        decision.clears = decision.clears.with(ConnState::ADVISORY_LOCK);
    }
    if scan.temp_table {
        decision.leaves = decision.leaves.with(ConnState::TEMP);
    }
    if scan.advisory_lock {
        decision.leaves = decision.leaves.with(ConnState::ADVISORY_LOCK);
    }
    decision
}

fn decide(statement: &Statement, scan: &Scan<'_>) -> Decision {
    let read_if_clean = || Decision::of(if scan.writes { Kind::Write } else { Kind::Read });
    match statement {
        Statement::Query(_) => read_if_clean(),
        Statement::Explain {
            analyze,
            options,
            statement: inner,
            ..
        } => {
            let executes = *analyze || options.as_deref().is_some_and(analyze_option);
            if !executes && matches!(**inner, Statement::Query(_)) {
                read_if_clean()
            } else {
                Decision::of(Kind::Write)
            }
        }
        Statement::Copy {
            to: true,
            target: CopyTarget::Stdout,
            ..
        } => read_if_clean(),
        Statement::StartTransaction {
            modes,
            statements,
            exception,
            modifier,
            has_end_keyword,
            ..
        } => {
            if statements.is_empty()
                && exception.is_none()
                && modifier.is_none()
                && !*has_end_keyword
            {
                Decision {
                    deferrable_begin: deferrable(modes),
                    ..Decision::of(Kind::Begin {
                        replica_ok: replica_ok(modes),
                    })
                }
            } else {
                Decision::of(Kind::Write)
            }
        }
        Statement::Commit { modifier: None, .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Decision::of(Kind::TxnControl),
        Statement::Set(set) => decide_set(set),
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => Decision {
                clears: ConnState::SESSION_CHANGE,
                ..Decision::of(Kind::Session)
            },
            Reset::SessionAuthorization => Decision::of(Kind::Session),
            Reset::ConfigurationParameter(name) => Decision {
                set_route: (dotted(name).as_deref() == Some("pgsplit.route"))
                    .then_some(RouteMode::Auto),
                ..Decision::of(Kind::Session)
            },
        },
        Statement::Discard { object_type } => match object_type {
            DiscardObject::ALL => Decision {
                drops_prepared: true,
                clears: ConnState::DISCARD_ALL,
                ..Decision::of(Kind::Session)
            },
            DiscardObject::TEMP => Decision {
                clears: ConnState::TEMP,
                ..Decision::of(Kind::Session)
            },
            DiscardObject::PLANS | DiscardObject::SEQUENCES => Decision::of(Kind::Session),
        },
        Statement::Deallocate { name, .. } => {
            let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
            Decision {
                drops_prepared: all,
                clears: if all {
                    ConnState::PREPARED
                } else {
                    ConnState::NONE
                },
                ..Decision::of(Kind::Write)
            }
        }
        Statement::Prepare { .. } => Decision {
            leaves: ConnState::PREPARED,
            ..Decision::of(Kind::Write)
        },
        Statement::Load { .. } => Decision {
            leaves: ConnState::LOAD,
            ..Decision::of(Kind::Write)
        },
        Statement::UNLISTEN { channel } if channel.value == "*" => Decision {
            clears: ConnState::LISTEN,
            ..Decision::of(Kind::Write)
        },
        Statement::Close {
            cursor: CloseCursor::All,
        } => Decision {
            clears: ConnState::HOLD_CURSOR,
            ..Decision::of(Kind::Write)
        },
        Statement::LISTEN { .. } => Decision::pinned(Kind::Write, PinReason::Listen),
        Statement::Declare { stmts, .. } if stmts.iter().any(|d| d.hold == Some(true)) => {
            Decision::pinned(Kind::Write, PinReason::HoldCursor)
        }
        Statement::CreateTable(create) if create.temporary || is_temp_schema(&create.name) => {
            Decision::pinned(Kind::Write, PinReason::TempObject)
        }
        Statement::CreateView(create) if create.temporary || is_temp_schema(&create.name) => {
            Decision::pinned(Kind::Write, PinReason::TempObject)
        }
        Statement::CreateSequence {
            temporary, name, ..
        } if *temporary || is_temp_schema(name) => {
            Decision::pinned(Kind::Write, PinReason::TempObject)
        }
        // DML, DDL, CALL, LOCK, NOTIFY, VACUUM, PREPARE/EXECUTE, GRANT, COPY FROM,
        // REFRESH, DECLARE, FETCH, SHOW and anything else: the primary.
        _ => Decision::of(Kind::Write),
    }
}

/// `BEGIN` may run on a replica only when READ ONLY and not SERIALIZABLE. Several
/// access modes may be given; any READ WRITE keeps it on the primary.
fn replica_ok(modes: &[TransactionMode]) -> bool {
    let mut read_only = false;
    for mode in modes {
        match mode {
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => read_only = true,
            TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
            | TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable) => {
                return false;
            }
            TransactionMode::IsolationLevel(_) => {}
        }
    }
    read_only
}

/// The isolation level of a `BEGIN` an optimistic transaction may defer:
/// any without an access mode (READ ONLY goes to a replica as it is, READ
/// WRITE to the primary) or SERIALIZABLE (which a standby refuses). `DEFERRABLE` does not parse and goes to the
/// primary as unparsed text.
fn deferrable(modes: &[TransactionMode]) -> Option<Isolation> {
    let mut level = Isolation::Default;
    for mode in modes {
        match mode {
            // An explicit READ WRITE says the transaction is there to
            // write: it begins on the primary.
            TransactionMode::AccessMode(_)
            | TransactionMode::IsolationLevel(
                TransactionIsolationLevel::Serializable | TransactionIsolationLevel::Snapshot,
            ) => return None,
            TransactionMode::IsolationLevel(
                TransactionIsolationLevel::ReadCommitted
                | TransactionIsolationLevel::ReadUncommitted,
            ) => level = Isolation::ReadCommitted,
            TransactionMode::IsolationLevel(TransactionIsolationLevel::RepeatableRead) => {
                level = Isolation::RepeatableRead;
            }
        }
    }
    Some(level)
}

/// Whether an `EXPLAIN (...)` option list asks to run the statement: `ANALYZE`,
/// `ANALYZE true`, `ANALYZE on`... anything but an explicit false.
fn analyze_option(options: &[UtilityOption]) -> bool {
    options.iter().any(|option| {
        option.name.value.eq_ignore_ascii_case("analyze")
            && !option
                .arg
                .as_ref()
                .is_some_and(|arg| setting_text(arg).is_some_and(|t| is_false(&t)))
    })
}

fn is_false(text: &str) -> bool {
    matches!(text, "false" | "off" | "0" | "no")
}

/// `pg_temp.x` / `pg_temp_3.x`: a temporary object however it is spelled.
fn is_temp_schema(name: &ObjectName) -> bool {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(schema), _] | [_, ObjectNamePart::Identifier(schema), _] => {
            schema.value.to_ascii_lowercase().starts_with("pg_temp")
        }
        _ => false,
    }
}

/// One walk over a statement's tree, collecting what makes it a write or pins the
/// session.
struct Scan<'c> {
    catalog: &'c FunctionCatalog,
    /// Nesting depth of statements: the root is 1; anything deeper but a plain query
    /// (a data-modifying CTE, `EXPLAIN INSERT`...) is a write.
    depth: usize,
    writes: bool,
    advisory_lock: bool,
    /// `pg_advisory_unlock_all()`.
    advisory_unlock_all: bool,
    temp_table: bool,
    /// `set_config(name, value, is_local)`: a SET by function call (session-level
    /// unless `is_local`; treated as session-level whatever the literal says, so
    /// that the answer does not depend on a literal).
    set_config: bool,
    /// The first thing found that makes it a write (for `SHOW ROUTE`).
    why: Option<String>,
}

impl<'c> Scan<'c> {
    fn run(statement: &Statement, catalog: &'c FunctionCatalog) -> Self {
        let mut scan = Scan {
            catalog,
            depth: 0,
            writes: false,
            advisory_lock: false,
            advisory_unlock_all: false,
            temp_table: false,
            set_config: false,
            why: None,
        };
        // The visitor never breaks: `Break = Infallible`-like `()` unused.
        let _ = statement.visit(&mut scan);
        scan
    }

    /// Found a write; `why` says what, for the first one found. (Classes
    /// are cached per text, so the words cost once per statement text.)
    fn write(&mut self, why: impl FnOnce() -> String) {
        self.writes = true;
        if self.why.is_none() {
            self.why = Some(why());
        }
    }

    fn pin(&self) -> Option<PinReason> {
        if self.temp_table {
            Some(PinReason::TempObject)
        } else if self.advisory_lock {
            Some(PinReason::AdvisoryLock)
        } else {
            None
        }
    }

    fn call(&mut self, name: &ObjectName) {
        let mut parts = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            match part {
                ObjectNamePart::Identifier(ident) => parts.push(ident.value.as_str()),
                ObjectNamePart::Function(_) => {
                    self.write(|| format!("calls {name}, a function pgsplit cannot look up"));
                    return;
                }
            }
        }
        let (schema, function) = match parts.as_slice() {
            [function] => (None, *function),
            [.., schema, function] => (Some(*schema), *function),
            [] => {
                self.write(|| "calls a function with no name".into());
                return;
            }
        };
        if SESSION_ADVISORY_LOCKS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(function))
        {
            self.advisory_lock = true;
        }
        if function.eq_ignore_ascii_case("pg_advisory_unlock_all") {
            self.advisory_unlock_all = true;
        }
        if function.eq_ignore_ascii_case("set_config") {
            self.set_config = true;
        }
        if !self.catalog.is_read_only(schema, function) {
            self.write(|| format!("calls {name}, which is not known to be read-only (volatile, or not in the catalog)"));
        }
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > 1 && !matches!(statement, Statement::Query(_)) {
            self.write(|| format!("contains {}", statement_words(statement)));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // FOR UPDATE / FOR SHARE / ... anywhere, including subqueries and CTEs.
        if let Some(lock) = query.locks.first() {
            self.write(|| format!("has the locking clause {lock}"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.write(|| "is SELECT INTO (creates a table)".into());
            if into.temporary {
                self.temp_table = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM f(1)` parses as a table with arguments.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            self.call(&function.name);
        }
        ControlFlow::Continue(())
    }
}
