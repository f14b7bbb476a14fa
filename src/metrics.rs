//! Metric names and handles in one place. Each running pgsplit owns its own
//! Prometheus recorder (no global recorder), so tests can run several
//! instances in one process and read each one's figures.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::route::router::Reason;

const REASONS: [Reason; 10] = [
    Reason::Write,
    Reason::Read,
    Reason::Transaction,
    Reason::Session,
    Reason::Pinned,
    Reason::Hint,
    Reason::Lag,
    Reason::ReadYourWrites,
    Reason::ReplicaDown,
    Reason::ParseFallback,
];

/// Latency buckets in seconds: 100us to 10s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static META: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    units: Vec<Counter>,
    unit_seconds: Histogram,
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
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
        let client_connections =
            recorder.register_gauge(&Key::from_name("pgsplit_client_connections"), &META);
        let client_connections_total =
            recorder.register_counter(&Key::from_name("pgsplit_client_connections_total"), &META);
        Arc::new(Metrics {
            recorder,
            handle,
            units,
            unit_seconds,
            client_connections,
            client_connections_total,
        })
    }

    /// One routed unit, end to end.
    pub fn unit(&self, reason: Reason, on_primary: bool, took: Duration) {
        let i =
            REASONS.iter().position(|r| *r == reason).unwrap_or(0) * 2 + usize::from(!on_primary);
        if let Some(c) = self.units.get(i) {
            c.increment(1);
        }
        self.unit_seconds.record(took.as_secs_f64());
    }

    pub fn retry(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts("pgsplit_retries_total", vec![Label::new("reason", reason)]),
                &META,
            )
            .increment(1);
    }

    pub fn error(&self, sqlstate: &str) {
        // SQLSTATE classes (first two characters) keep the label set bounded.
        let class: String = sqlstate.chars().take(2).collect();
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "pgsplit_errors_total",
                    vec![Label::new("sqlstate_class", class)],
                ),
                &META,
            )
            .increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
