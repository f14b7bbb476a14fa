//! Metric names and handles in one place. Each running pgsplit owns its own
//! Prometheus recorder (no global recorder), so tests can run several
//! instances in one process and read each one's figures.
//!
//! Label values are bounded: route and reason enums, server names from the
//! config, SQLSTATE classes. Never SQL text or client addresses.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::backend::health::{HealthSnapshot, Role};
use crate::route::router::Reason;

const REASONS: [Reason; 11] = [
    Reason::Write,
    Reason::Read,
    Reason::Transaction,
    Reason::Session,
    Reason::Pinned,
    Reason::Hint,
    Reason::Lag,
    Reason::ReadYourWrites,
    Reason::ReplicaDown,
    Reason::PrimaryDown,
    Reason::ParseFallback,
];

/// Why a read ran a second time (`pgsplit_retries_total{reason}`).
pub const RETRY_REASONS: [&str; 5] = [
    "recovery_conflict",
    "replica_failed",
    "replica_refused",
    "replica_settings",
    "primary_failed",
];

/// How an optimistic transaction went (`pgsplit_transactions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Ended on the replica (COMMIT or ROLLBACK) having only read.
    ReadOnlyOnReplica,
    /// Its first statement needed the primary: it began there.
    StartedOnPrimary,
    /// A write moved it to the primary; its reads answered the same there.
    ReplayedMatch,
    /// Moved, and some read answered differently: 40001.
    ReplayedMismatch,
    /// Moved because the next statement could not be recorded (past the
    /// record's bounds, `SET`, `SET LOCAL`, a unit sent before its Sync);
    /// its reads answered the same.
    MovedBeforeUnreplayable,
}

impl TxnOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnOutcome::ReadOnlyOnReplica => "read_only_on_replica",
            TxnOutcome::StartedOnPrimary => "started_on_primary",
            TxnOutcome::ReplayedMatch => "replayed_match",
            TxnOutcome::ReplayedMismatch => "replayed_mismatch",
            TxnOutcome::MovedBeforeUnreplayable => "moved_before_unreplayable",
        }
    }
}

const TXN_OUTCOMES: [TxnOutcome; 5] = [
    TxnOutcome::ReadOnlyOnReplica,
    TxnOutcome::StartedOnPrimary,
    TxnOutcome::ReplayedMatch,
    TxnOutcome::ReplayedMismatch,
    TxnOutcome::MovedBeforeUnreplayable,
];

/// Latency buckets in seconds: 50us to 10s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

static META: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Every family with its type and help text (`# HELP` lines; promtool wants them).
const FAMILIES: &[(&str, char, &str)] = &[
    (
        "pgsplit_units_routed_total",
        'c',
        "Units (a query, or extended-protocol messages up to Sync) routed, by route and reason.",
    ),
    (
        "pgsplit_unit_duration_seconds",
        'h',
        "Time from a unit's routing to its ReadyForQuery, in seconds.",
    ),
    (
        "pgsplit_pool_checkout_seconds",
        'h',
        "Time to obtain a server connection from a pool, in seconds.",
    ),
    (
        "pgsplit_pool_waiting_clients",
        'g',
        "Client sessions waiting for a server connection from a pool now.",
    ),
    (
        "pgsplit_pool_exhausted_total",
        'c',
        "Checkouts that timed out because the pool was at its limit, by server.",
    ),
    (
        "pgsplit_client_connections",
        'g',
        "Client connections open now.",
    ),
    (
        "pgsplit_client_connections_total",
        'c',
        "Client connections accepted.",
    ),
    (
        "pgsplit_client_connections_rejected_total",
        'c',
        "Client connections refused, by reason.",
    ),
    (
        "pgsplit_auth_failures_total",
        'c',
        "Client authentication failures.",
    ),
    (
        "pgsplit_tls_handshakes_total",
        'c',
        "TLS handshakes with clients, by result.",
    ),
    (
        "pgsplit_read_your_writes_wait_seconds",
        'h',
        "Time reads waited for a replica to replay their read-your-writes floor, by outcome (replica: it did; primary: the wait ran out).",
    ),
    (
        "pgsplit_replay_position_queries_total",
        'c',
        "Replay-position queries sent to replicas on demand for reads ahead of the last probe.",
    ),
    (
        "pgsplit_errors_total",
        'c',
        "Errors pgsplit reported to clients itself, by SQLSTATE class and kind.",
    ),
    (
        "pgsplit_connection_pins_total",
        'c',
        "Transaction-pooled sessions that keep their server connections between transactions, by the state that cannot move.",
    ),
    (
        "pgsplit_retries_total",
        'c',
        "Reads retried on the primary after failing on a replica, by reason.",
    ),
    (
        "pgsplit_fallbacks_total",
        'c',
        "Reads that wanted a replica but ran on the primary, by reason.",
    ),
    (
        "pgsplit_transactions_total",
        'c',
        "Transactions begun without READ ONLY (optimistic transactions), by outcome.",
    ),
    (
        "pgsplit_transaction_replay_seconds",
        'h',
        "Time to move an optimistic transaction from a replica to the primary (replay its reads, check their answers), in seconds.",
    ),
    (
        "pgsplit_server_up",
        'g',
        "1 when the server answered its last health probe.",
    ),
    (
        "pgsplit_server_role",
        'g',
        "1 for the server's current role (primary or replica).",
    ),
    (
        "pgsplit_server_usable",
        'g',
        "1 when a replica may take reads (healthy, within lag limits).",
    ),
    (
        "pgsplit_server_lag_bytes",
        'g',
        "Replica replay position behind the primary's WAL position, in bytes.",
    ),
    (
        "pgsplit_server_lag_seconds",
        'g',
        "How long ago the primary passed the replica's replay position, in seconds.",
    ),
    (
        "pgsplit_server_probe_age_seconds",
        'g',
        "Seconds since the server last answered a health probe.",
    ),
    (
        "pgsplit_server_connections",
        'g',
        "Pooled server connections, by server and state (idle, active).",
    ),
    ("pgsplit_build_info", 'g', "Build information; always 1."),
];

fn describe(recorder: &PrometheusRecorder) {
    for (name, kind, help) in FAMILIES {
        let key = metrics::KeyName::from_const_str(name);
        let help = metrics::SharedString::const_str(help);
        match kind {
            'c' => recorder.describe_counter(key, None, help),
            'h' => recorder.describe_histogram(key, None, help),
            _ => recorder.describe_gauge(key, None, help),
        }
    }
}

/// See [`Metrics::waiting_for_checkout`].
pub struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    units: Vec<Counter>,
    unit_seconds: Histogram,
    checkout_seconds: Histogram,
    pool_waiting: Gauge,
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
    /// Replay-position queries sent to replicas on demand.
    pub replay_queries: Counter,
    /// Server names rendered before: a server removed by a reload has its
    /// gauges zeroed (the exporter cannot drop a series).
    rendered: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn labels(pairs: &[(&'static str, String)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect()
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let mut units = Vec::with_capacity(REASONS.len() * 2);
        for reason in REASONS {
            for route in ["primary", "replica"] {
                units.push(recorder.register_counter(
                    &Key::from_parts(
                        "pgsplit_units_routed_total",
                        vec![
                            Label::new("route", route),
                            Label::new("reason", reason.as_str()),
                        ],
                    ),
                    &META,
                ));
            }
        }
        let unit_seconds =
            recorder.register_histogram(&Key::from_name("pgsplit_unit_duration_seconds"), &META);
        let checkout_seconds =
            recorder.register_histogram(&Key::from_name("pgsplit_pool_checkout_seconds"), &META);
        let pool_waiting =
            recorder.register_gauge(&Key::from_name("pgsplit_pool_waiting_clients"), &META);
        let client_connections =
            recorder.register_gauge(&Key::from_name("pgsplit_client_connections"), &META);
        let client_connections_total =
            recorder.register_counter(&Key::from_name("pgsplit_client_connections_total"), &META);
        let replay_queries = recorder.register_counter(
            &Key::from_name("pgsplit_replay_position_queries_total"),
            &META,
        );
        recorder
            .register_gauge(
                &Key::from_parts(
                    "pgsplit_build_info",
                    vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
                ),
                &META,
            )
            .set(1.0);
        describe(&recorder);
        let m = Metrics {
            recorder,
            handle,
            units,
            unit_seconds,
            checkout_seconds,
            pool_waiting,
            client_connections,
            client_connections_total,
            replay_queries,
            rendered: std::sync::Mutex::new(std::collections::HashSet::new()),
        };
        // Families that should exist (at zero) before their first event, so
        // dashboards and alerts see them from the start.
        for reason in ["too_many_clients", "handshake", "auth", "draining"] {
            m.counter(
                "pgsplit_client_connections_rejected_total",
                &[("reason", reason.into())],
            )
            .increment(0);
        }
        m.counter("pgsplit_auth_failures_total", &[]).increment(0);
        // Counters of events, at zero from the start: the first event of a
        // fresh pod then shows in rate() and increase() too.
        for reason in RETRY_REASONS {
            m.counter("pgsplit_retries_total", &[("reason", reason.into())])
                .increment(0);
        }
        for reason in [Reason::Lag, Reason::ReadYourWrites, Reason::ReplicaDown] {
            m.counter(
                "pgsplit_fallbacks_total",
                &[("reason", reason.as_str().into())],
            )
            .increment(0);
        }
        for result in ["ok", "error"] {
            m.counter(
                "pgsplit_tls_handshakes_total",
                &[("side", "client".into()), ("result", result.into())],
            )
            .increment(0);
        }
        for reason in crate::route::class::ConnState::REASONS {
            m.counter(
                "pgsplit_connection_pins_total",
                &[("reason", reason.into())],
            )
            .increment(0);
        }
        for outcome in TXN_OUTCOMES {
            m.counter(
                "pgsplit_transactions_total",
                &[("outcome", outcome.as_str().into())],
            )
            .increment(0);
        }
        Arc::new(m)
    }

    fn counter(&self, name: &'static str, l: &[(&'static str, String)]) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels(l)), &META)
    }

    fn gauge(&self, name: &'static str, l: &[(&'static str, String)]) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels(l)), &META)
    }

    /// One routed unit, end to end.
    pub fn unit(&self, reason: Reason, on_primary: bool, took: Duration) {
        let i =
            REASONS.iter().position(|r| *r == reason).unwrap_or(0) * 2 + usize::from(!on_primary);
        if let Some(c) = self.units.get(i) {
            c.increment(1);
        }
        self.unit_seconds.record(took.as_secs_f64());
        if on_primary
            && matches!(
                reason,
                Reason::Lag | Reason::ReadYourWrites | Reason::ReplicaDown
            )
        {
            self.counter(
                "pgsplit_fallbacks_total",
                &[("reason", reason.as_str().into())],
            )
            .increment(1);
        }
    }

    /// A read that waited for a replica to replay its read-your-writes
    /// floor: how long, and whether the replica got there (else the primary
    /// served it).
    pub fn replay_wait(&self, took: Duration, reached: bool) {
        let outcome = if reached { "replica" } else { "primary" };
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "pgsplit_read_your_writes_wait_seconds",
                    labels(&[("outcome", outcome.into())]),
                ),
                &META,
            )
            .record(took.as_secs_f64());
    }

    /// An optimistic transaction's outcome.
    pub fn transaction(&self, outcome: TxnOutcome) {
        self.counter(
            "pgsplit_transactions_total",
            &[("outcome", outcome.as_str().into())],
        )
        .increment(1);
    }

    /// One move of an optimistic transaction to the primary.
    pub fn transaction_replay(&self, took: Duration) {
        self.recorder
            .register_histogram(&Key::from_name("pgsplit_transaction_replay_seconds"), &META)
            .record(took.as_secs_f64());
    }

    pub fn checkout(&self, server: &str, took: Duration, exhausted: bool) {
        self.checkout_seconds.record(took.as_secs_f64());
        if exhausted {
            self.counter("pgsplit_pool_exhausted_total", &[("server", server.into())])
                .increment(1);
        }
    }

    /// Counts a session as waiting for a server connection until the
    /// returned guard drops (checkout done, failed, or the client gone).
    pub fn waiting_for_checkout(&self) -> Waiting<'_> {
        self.pool_waiting.increment(1.0);
        Waiting(&self.pool_waiting)
    }

    pub fn connection_pin(&self, reason: &'static str) {
        self.counter(
            "pgsplit_connection_pins_total",
            &[("reason", reason.into())],
        )
        .increment(1);
    }

    pub fn retry(&self, reason: &'static str) {
        debug_assert!(RETRY_REASONS.contains(&reason), "retry reason {reason}");
        self.counter("pgsplit_retries_total", &[("reason", reason.into())])
            .increment(1);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.counter(
            "pgsplit_client_connections_rejected_total",
            &[("reason", reason.into())],
        )
        .increment(1);
    }

    pub fn auth_failure(&self) {
        self.counter("pgsplit_auth_failures_total", &[])
            .increment(1);
    }

    pub fn tls_handshake(&self, side: &'static str, result: &'static str) {
        self.counter(
            "pgsplit_tls_handshakes_total",
            &[("side", side.into()), ("result", result.into())],
        )
        .increment(1);
    }

    /// Errors by SQLSTATE class (first two characters keep the set bounded).
    /// An error pgsplit reported to a client itself: its SQLSTATE class and
    /// its kind (both bounded sets).
    pub fn error(&self, sqlstate: &str, kind: &'static str) {
        self.counter(
            "pgsplit_errors_total",
            &[
                (
                    "sqlstate_class",
                    crate::sqlstate::class(sqlstate).to_owned(),
                ),
                ("kind", kind.to_owned()),
            ],
        )
        .increment(1);
    }

    /// Refreshes the per-server gauges from the health snapshot and the pools,
    /// then renders the Prometheus text exposition.
    /// Every counter (`*_total`) as (name, labels, value), sorted, for the
    /// console's `SHOW STATS`.
    pub fn counters(&self) -> Vec<(String, String, f64)> {
        let text = self.handle.render();
        let mut out: Vec<(String, String, f64)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
                    None => (series, ""),
                };
                name.ends_with("_total")
                    .then(|| Some((name.to_owned(), labels.to_owned(), value.parse().ok()?)))
                    .flatten()
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    pub fn render(&self, health: &HealthSnapshot, pools: &[(String, u32, u32)]) -> String {
        {
            let mut rendered = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
            let now: std::collections::HashSet<String> =
                health.servers.iter().map(|s| s.name.clone()).collect();
            for gone in rendered.difference(&now) {
                let server = || vec![("server", gone.clone())];
                self.gauge("pgsplit_server_up", &server()).set(0.0);
                self.gauge("pgsplit_server_usable", &server()).set(0.0);
                for role in [Role::Primary, Role::Replica] {
                    let mut l = server();
                    l.push(("role", role.as_str().into()));
                    self.gauge("pgsplit_server_role", &l).set(0.0);
                }
            }
            rendered.extend(now);
        }
        for s in &health.servers {
            let server = || vec![("server", s.name.clone())];
            self.gauge("pgsplit_server_up", &server()).set(
                if matches!(s.role, Role::Primary | Role::Replica) {
                    1.0
                } else {
                    0.0
                },
            );
            for role in [Role::Primary, Role::Replica] {
                let mut l = server();
                l.push(("role", role.as_str().into()));
                self.gauge("pgsplit_server_role", &l)
                    .set(if s.role == role { 1.0 } else { 0.0 });
            }
            self.gauge("pgsplit_server_usable", &server())
                .set(if s.usable { 1.0 } else { 0.0 });
            if let Some(b) = s.lag_bytes {
                self.gauge("pgsplit_server_lag_bytes", &server())
                    .set(b as f64);
            }
            if let Some(l) = s.lag {
                self.gauge("pgsplit_server_lag_seconds", &server())
                    .set(l.as_secs_f64());
            }
            if let Some(t) = s.last_ok {
                self.gauge("pgsplit_server_probe_age_seconds", &server())
                    .set(t.elapsed().as_secs_f64());
            }
        }
        for (server, idle, active) in pools {
            for (state, n) in [("idle", idle), ("active", active)] {
                self.gauge(
                    "pgsplit_server_connections",
                    &[("server", server.clone()), ("state", state.into())],
                )
                .set(f64::from(*n));
            }
        }
        self.handle.render()
    }
}
