//! What the classifier says about a piece of SQL. Pure data: the router turns it
//! into a target together with session state and server health.

/// Where a single statement (or a whole simple-query string) may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Provably read-only: may run on a replica fresh enough for the client.
    Read,
    /// Must run on the primary: DML, DDL, volatile functions, SHOW, anything unknown.
    Write,
    /// `BEGIN` / `START TRANSACTION`. `replica_ok` is true only for a READ ONLY
    /// transaction that is not SERIALIZABLE (a hot standby refuses SERIALIZABLE).
    Begin { replica_ok: bool },
    /// Session-level `SET` / `RESET` / `DISCARD` (and `SET SESSION CHARACTERISTICS`):
    /// runs on the primary and is replayed on every other server connection the
    /// session uses before that connection runs anything else.
    Session,
    /// `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`, `SET LOCAL`, `SET TRANSACTION`,
    /// `PREPARE TRANSACTION`...: runs wherever the open transaction runs, on the
    /// primary when there is none; never recorded for replay.
    TxnControl,
}

/// Why a session must stay on the primary from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// `CREATE TEMP TABLE` / `CREATE TEMPORARY ...`: the object exists only there.
    TempObject,
    /// `LISTEN`: notifications arrive on that connection only.
    Listen,
    /// Session-level advisory lock functions (`pg_advisory_lock`, `pg_try_advisory_lock`,
    /// their `_shared` forms): the lock belongs to that connection.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`: the cursor outlives its transaction on that connection.
    HoldCursor,
    /// `default_transaction_isolation = serializable` (by SET or SET SESSION
    /// CHARACTERISTICS): replicas cannot run serializable transactions.
    Serializable,
    /// A routing hint pinned the session (`SET pgsplit.route = primary`).
    Hint,
    /// A session change pgsplit cannot replay on its own: a SET sharing one query
    /// string with other statements, or a session log grown past its bound.
    SessionChange,
}

/// Kinds of state a session can leave on its server connection that cannot
/// move to another connection (PostgreSQL keeps them per backend), as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ConnState(u8);

impl ConnState {
    pub const NONE: ConnState = ConnState(0);
    /// Temporary tables, views, sequences.
    pub const TEMP: ConnState = ConnState(1);
    pub const LISTEN: ConnState = ConnState(1 << 1);
    /// Session-level advisory locks.
    pub const ADVISORY_LOCK: ConnState = ConnState(1 << 2);
    /// `WITH HOLD` cursors.
    pub const HOLD_CURSOR: ConnState = ConnState(1 << 3);
    /// Settings pgsplit does not replay (`set_config(..., false)`, a SET
    /// inside a multi-statement string).
    pub const SESSION_CHANGE: ConnState = ConnState(1 << 4);
    /// SQL-level `PREPARE`d statements.
    pub const PREPARED: ConnState = ConnState(1 << 5);
    /// A `LOAD`ed library: nothing unloads it.
    pub const LOAD: ConnState = ConnState(1 << 6);
    /// A statement pgsplit could not parse: it may have left any of these.
    pub const UNPARSED: ConnState = ConnState(1 << 7);
    /// What `DISCARD ALL` releases: everything but a loaded library.
    pub const DISCARD_ALL: ConnState = ConnState(!(1 << 6));

    /// The metric labels of the kinds, in bit order.
    pub const REASONS: [&'static str; 8] = [
        "temp_object",
        "listen",
        "advisory_lock",
        "hold_cursor",
        "session_change",
        "prepared_statement",
        "load",
        "unparsed",
    ];

    #[must_use]
    pub const fn with(self, other: ConnState) -> ConnState {
        ConnState(self.0 | other.0)
    }

    #[must_use]
    pub const fn without(self, other: ConnState) -> ConnState {
        ConnState(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, other: ConnState) -> bool {
        self.0 & other.0 == other.0
    }

    /// The metric label of the first kind held, if any.
    pub fn reason(self) -> Option<&'static str> {
        let i = self.0.trailing_zeros() as usize;
        Self::REASONS.get(i).copied()
    }

    /// The state behind a routing pin reason.
    pub const fn of_pin(pin: Option<PinReason>) -> ConnState {
        match pin {
            Some(PinReason::TempObject) => ConnState::TEMP,
            Some(PinReason::Listen) => ConnState::LISTEN,
            Some(PinReason::AdvisoryLock) => ConnState::ADVISORY_LOCK,
            Some(PinReason::HoldCursor) => ConnState::HOLD_CURSOR,
            Some(PinReason::SessionChange) => ConnState::SESSION_CHANGE,
            Some(PinReason::Serializable | PinReason::Hint) | None => ConnState::NONE,
        }
    }
}

/// The isolation level a deferred `BEGIN` asked for (see
/// [`Class::deferrable_begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// None given: the session's `default_transaction_isolation`.
    Default,
    /// READ COMMITTED (READ UNCOMMITTED is the same in PostgreSQL).
    ReadCommitted,
    RepeatableRead,
}

impl Isolation {
    /// How a transaction with this level begins read-only on a replica.
    pub fn begin_read_only(self) -> &'static [u8] {
        match self {
            Isolation::Default => b"BEGIN READ ONLY",
            Isolation::ReadCommitted => b"BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY",
            Isolation::RepeatableRead => b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }
}

/// A routing hint: `/* pgsplit:primary */`, `SET pgsplit.route = ...`, startup option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteMode {
    Primary,
    Replica,
    Auto,
}

/// The classification of one SQL string (one or more `;`-separated statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class {
    /// The combined kind: `Read` only when every statement is `Read`; a lone
    /// `Begin`/`Session`/`TxnControl` keeps its kind; any other mix is `Write`.
    pub kind: Kind,
    /// Set when some statement pins the session to the primary.
    pub pin: Option<PinReason>,
    /// `SET pgsplit.route = x` / `RESET pgsplit.route` (Auto) seen in this string.
    pub set_route: Option<RouteMode>,
    /// A leading comment hint `/* pgsplit:primary */` or `/* pgsplit:replica */`.
    pub hint: Option<RouteMode>,
    /// `DISCARD ALL` or `DEALLOCATE ALL`: drops every prepared statement on the
    /// connection that runs it.
    pub drops_prepared: bool,
    /// State it leaves on the server connection that runs it, which cannot
    /// move to another connection: under transaction pooling the client
    /// keeps that connection while any is held.
    pub leaves: ConnState,
    /// Such state it releases (`DISCARD ALL`/`TEMP`, `UNLISTEN *`,
    /// `pg_advisory_unlock_all()`, `CLOSE ALL`, `DEALLOCATE ALL`, `RESET ALL`).
    pub clears: ConnState,
    /// False when sqlparser could not read the text: the statement goes to the
    /// primary ("parse_fallback" in metrics).
    pub parsed: bool,
    /// Number of statements in the string (0 for an empty query).
    pub statements: u32,
    /// Some statement is a session-level SET/RESET/DISCARD (true for a lone
    /// `Kind::Session` statement as well as for one mixed with others).
    pub session_effect: bool,
    /// A lone `BEGIN`/`START TRANSACTION` that an optimistic transaction
    /// may defer: not READ ONLY (that goes to a replica as it is), not
    /// SERIALIZABLE or DEFERRABLE (a standby cannot run those). The level it
    /// asked for.
    pub deferrable_begin: Option<Isolation>,
    /// Columns of a lone SELECT's list that say when or where it ran
    /// (`now()`, `inet_server_port()`...), not what the data is: bit `i` for
    /// column `i` (see `classify::columns`). An optimistic transaction does
    /// not verify them on the primary.
    pub unverified_columns: u64,
    /// Several statements (one string, or an extended-protocol pipeline)
    /// that begin with a BEGIN an optimistic transaction may defer and are
    /// reads after it: the whole may open the transaction on a replica.
    pub opens_with_reads: Option<Isolation>,
}

impl Class {
    /// The fail-safe answer for text the classifier cannot read.
    pub const fn unparsed() -> Self {
        Class {
            kind: Kind::Write,
            pin: None,
            set_route: None,
            hint: None,
            drops_prepared: false,
            leaves: ConnState::UNPARSED,
            clears: ConnState::NONE,
            parsed: false,
            statements: 1,
            session_effect: false,
            deferrable_begin: None,
            unverified_columns: 0,
            opens_with_reads: None,
        }
    }

    /// A plain, parsed statement of the given kind with no side effects.
    pub const fn of(kind: Kind) -> Self {
        Class {
            kind,
            pin: None,
            set_route: None,
            hint: None,
            drops_prepared: false,
            leaves: ConnState::NONE,
            clears: ConnState::NONE,
            parsed: true,
            statements: 1,
            session_effect: matches!(kind, Kind::Session),
            deferrable_begin: None,
            unverified_columns: 0,
            opens_with_reads: None,
        }
    }
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::TempObject => "temp_object",
            PinReason::Listen => "listen",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::Serializable => "serializable",
            PinReason::Hint => "hint",
            PinReason::SessionChange => "session_change",
        }
    }
}

/// Folds the classes of the statements one extended-protocol unit touches (its
/// Parses, and the statements its Binds and Describes name) into one, with the
/// same rule as a multi-statement string: all reads stay a read, one kind
/// repeated (a Parse and a Bind of the same BEGIN) stays that kind, any other
/// mix goes to the primary.
pub fn merge(a: Class, b: Class) -> Class {
    let kind = match (a.kind, b.kind) {
        (x, y) if x == y => x,
        _ => Kind::Write,
    };
    Class {
        kind,
        pin: a.pin.or(b.pin),
        set_route: b.set_route.or(a.set_route),
        hint: a.hint.or(b.hint),
        drops_prepared: a.drops_prepared || b.drops_prepared,
        leaves: a.leaves.with(b.leaves),
        clears: a.clears.with(b.clears),
        parsed: a.parsed && b.parsed,
        statements: a.statements.saturating_add(b.statements),
        session_effect: a.session_effect || b.session_effect,
        // Per statement only: an extended unit's results take their
        // statements' own (see `session::optimistic::unit_masks`).
        unverified_columns: 0,
        // A BEGIN (or a BEGIN already followed by reads), then a read.
        opens_with_reads: match (a.deferrable_begin.or(a.opens_with_reads), b.kind) {
            (Some(level), Kind::Read) if a.kind != Kind::Read => Some(level),
            _ => None,
        },
        deferrable_begin: if kind == a.kind {
            a.deferrable_begin.and(b.deferrable_begin)
        } else {
            None
        },
    }
}
