//! The Grafana dashboard (`deploy/grafana/pgsplit.json`, issue 16) against a
//! real Prometheus scraping a real pgsplit: after traffic that makes every
//! series of the dashboard exist, every query of every panel (and the
//! `instance` variable's) is evaluated with `/api/v1/query` and must succeed
//! with a non-empty result. A typo'd metric or label name, a histogram
//! without `_bucket`, a broken vector match, all end up here as "no data".
//! `deploy/check/grafana_dashboard.py` checks the JSON statically.
//!
//! Grafana's variables are replaced as Grafana would for one selected
//! pgsplit: `$instance` by this pgsplit's address (regex-escaped),
//! `$__rate_interval` by 1m (what Grafana computes for a 15s scrape interval),
//! `$__range` by 5m, the textbox variables (the lag limits) by their defaults.
//!
//! Series that exist only after an event, and what provokes each here:
//! errors and pool exhaustion (a transaction holds the only primary
//! connection of `max_size = 1` while another session writes: 53300),
//! retries and fallbacks (a STABLE function that raises 40001 on the replica
//! only: the read is retried on the primary, `recovery_conflict`, and counted
//! there as `replica_down`), the read-your-writes wait (a read right after a
//! write), the move of an optimistic transaction (begun on the replica with a
//! read, then a write), connection pins (a temporary table), TLS handshakes (a TLS client,
//! and an SSLRequest followed by bytes that are not TLS), and an
//! authentication failure. The other families are exported from the start.
//! Nothing is skipped. The traffic runs twice, with a scrape in between, so
//! that the rates of the counters born in the first round move too: a query
//! that answers NaN (a ratio or quantile of rates that are all 0) fails.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::common::prometheus::Prometheus;
use crate::common::tls::{ClientTls, TestCa, TlsDir, Usage};
use crate::common::{Proxy, cluster, connect, http_get, start};
use pgsplit_cluster::{DATABASE, Node};
use serde_norway::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

const DASHBOARD: &str = "deploy/grafana/pgsplit.json";

/// Grafana's interval variables, as Grafana sets them for a 15s scrape
/// interval and a 5-minute dashboard range.
const BUILTINS: [(&str, &str); 3] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

/// One target of one panel.
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
}

fn dashboard() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // JSON is (flow-style) YAML: parse it with the YAML dev-dependency.
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Every target of every panel, rows' nested panels included.
fn queries(dash: &Value) -> Vec<Query> {
    fn walk(panels: &[Value], out: &mut Vec<Query>) {
        for p in panels {
            for t in list(p, "targets") {
                out.push(Query {
                    panel: text(p, "title").unwrap_or("(untitled)").to_owned(),
                    ref_id: text(t, "refId").unwrap_or("?").to_owned(),
                    expr: text(t, "expr").unwrap_or_default().to_owned(),
                });
            }
            walk(list(p, "panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(list(dash, "panels"), &mut out);
    out
}

/// The value of each variable for the test: `instance` is `instance`
/// (regex-escaped, as Grafana formats a selection for Prometheus), a textbox
/// or constant its default. The datasource variable has no value in PromQL.
fn variables(dash: &Value, instance: &str) -> HashMap<String, String> {
    let templating = dash.get("templating").expect("templating");
    let mut vars: HashMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for v in list(templating, "list") {
        let name = text(v, "name").expect("variable name").to_owned();
        let value = match text(v, "type") {
            Some("datasource") => continue,
            Some("query") => {
                assert_eq!(name, "instance", "a query variable the test does not know");
                // A PromQL string literal holding a regex: `\.` is written `\\.`.
                instance.replace('.', "\\\\.")
            }
            _ => v
                .get("current")
                .and_then(|c| text(c, "value"))
                .or_else(|| text(v, "query"))
                .unwrap_or_else(|| panic!("variable {name} has no value"))
                .to_owned(),
        };
        vars.insert(name, value);
    }
    vars
}

/// `expr` with Grafana's `$name`, `${name}` and `${name:format}` replaced.
fn substitute(expr: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or("unclosed ${")?;
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(inner), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable ${name}"))?;
        out.push_str(value);
        rest = &after[used..];
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn substitution_replaces_longest_names_and_braces() {
    let vars: HashMap<String, String> = [("max_lag", "1"), ("max_lag_bytes", "16"), ("i", "a")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(
        substitute(
            "vector($max_lag_bytes) + $max_lag + ${i:regex}{x=~\"$i\"}",
            &vars
        )
        .unwrap(),
        "vector(16) + 1 + a{x=~\"a\"}"
    );
    assert!(substitute("$nope", &vars).is_err());
}

/// pgsplit's own exposition, for waiting on events before Prometheus sees them.
async fn metrics_text(proxy: &Proxy) -> String {
    http_get(proxy.admin, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
}

/// Sum of the samples of `name` whose label text contains `labels`.
fn sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Whether the samples of `name` with `labels` add up to more in `now` than
/// in `before`.
fn grew(before: &str, now: &str, name: &str, labels: &str) -> bool {
    sum(now, name, labels) > sum(before, name, labels)
}

/// Does `step` (then waits `pause`) until pgsplit's `/metrics` has more of
/// `name` (with `labels`) than `before` had; `what` names the event for the
/// failure message.
async fn repeat_until_grew<F, Fut>(
    proxy: &Proxy,
    before: &str,
    (name, labels): (&str, &str),
    what: &str,
    pause: Duration,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        step().await;
        let text = metrics_text(proxy).await;
        if grew(before, &text, name, labels) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(pause).await;
    }
}

/// Waits until pgsplit's `/metrics` has more of `name` (with `labels`) than
/// `before` had.
async fn wait_for_series(proxy: &Proxy, before: &str, name: &str, labels: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics_text(proxy).await;
        if grew(before, &text, name, labels) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgsplit's {name}{{{labels}}} never grew:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drives traffic through pgsplit until every series a panel draws exists
/// and has moved since the round began (a histogram that did not move in the
/// rate window gives NaN quantiles).
async fn provoke_every_series(proxy: &Proxy, ca: &TestCa) {
    let c = cluster();
    let url = proxy.url(c);
    let before = metrics_text(proxy).await;

    // Writes (primary), and reads: on the replica once it has replayed the
    // write (read-your-writes: until then they run on the primary).
    let app = connect(&url).await;
    app.batch_execute("INSERT INTO dashboard_t (v) VALUES ('write')")
        .await
        .unwrap();
    repeat_until_grew(
        proxy,
        &before,
        (
            "pgsplit_units_routed_total",
            "route=\"replica\",reason=\"read\"",
        ),
        "no read ever ran on the replica",
        Duration::from_millis(100),
        || async {
            for _ in 0..10 {
                app.simple_query("SELECT count(*) FROM dashboard_t")
                    .await
                    .unwrap();
            }
        },
    )
    .await;

    // A read right after a write: its read-your-writes floor is ahead of what
    // pgsplit knows of the replica, so it waits for the replica (or, after
    // read_your_writes_wait, runs on the primary).
    repeat_until_grew(
        proxy,
        &before,
        ("pgsplit_read_your_writes_wait_seconds_count", ""),
        "no read ever waited for its read-your-writes floor",
        Duration::ZERO,
        || async {
            app.batch_execute("INSERT INTO dashboard_t (v) VALUES ('floor')")
                .await
                .unwrap();
            app.simple_query("SELECT max(id) FROM dashboard_t")
                .await
                .unwrap();
        },
    )
    .await;

    // An optimistic transaction: it begins on the replica with a read, and
    // its write moves it to the primary (its read replayed there). Until the
    // replica has replayed the previous writes, it begins on the primary.
    repeat_until_grew(
        proxy,
        &before,
        ("pgsplit_transaction_replay_seconds_count", ""),
        "no transaction ever moved from the replica to the primary",
        Duration::from_millis(200),
        || async {
            app.batch_execute("BEGIN").await.unwrap();
            app.simple_query("SELECT count(*) FROM dashboard_t")
                .await
                .unwrap();
            app.batch_execute("INSERT INTO dashboard_t (v) VALUES ('moved'); COMMIT")
                .await
                .unwrap();
        },
    )
    .await;

    // Retry and fallback: the function is STABLE, so pgsplit sends the read to
    // the replica, where it raises 40001 (as a recovery conflict would);
    // pgsplit runs it again on the primary, where it answers.
    repeat_until_grew(
        proxy,
        &before,
        ("pgsplit_retries_total", "recovery_conflict"),
        "the read raising 40001 on the replica was never retried",
        Duration::from_millis(100),
        || async {
            let rows = app
                .simple_query("SELECT dashboard_conflict()")
                .await
                .unwrap_or_else(|e| panic!("the retried read failed: {e}"));
            assert!(!rows.is_empty());
        },
    )
    .await;
    wait_for_series(proxy, &before, "pgsplit_fallbacks_total", "").await;

    // A connection pin: a temporary table keeps the session on its server
    // connection (transaction pooling). The session then leaves, freeing it.
    {
        let pinned = connect(&url).await;
        pinned
            .batch_execute("CREATE TEMP TABLE dashboard_pin (x int)")
            .await
            .unwrap();
        wait_for_series(
            proxy,
            &before,
            "pgsplit_connection_pins_total",
            "temp_object",
        )
        .await;
    }
    // Its connection back in the pool before anyone needs it (max_size = 1).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics_text(proxy).await;
        if sum(&text, "pgsplit_server_connections", "state=\"active\"") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pinned session's connection never went back to its pool:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Pool exhaustion: `holder` keeps the primary's only pooled connection
    // (max_size = 1) in an open transaction; `blocked` waits for it for
    // checkout_timeout and gets 53300, which pgsplit counts as an error.
    // (Both log in first: a login needs a server connection too.)
    let holder = connect(&url).await;
    let blocked = connect(&url).await;
    holder
        .batch_execute("BEGIN; INSERT INTO dashboard_t (v) VALUES ('held')")
        .await
        .unwrap();
    let err = blocked
        .batch_execute("INSERT INTO dashboard_t (v) VALUES ('blocked')")
        .await
        .expect_err("a write with the pool exhausted");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("53300"),
        "{err}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    wait_for_series(proxy, &before, "pgsplit_pool_exhausted_total", "").await;
    wait_for_series(
        proxy,
        &before,
        "pgsplit_errors_total",
        "sqlstate_class=\"53\"",
    )
    .await;

    // A failed login.
    let bad = format!("postgres://{}:wrong@{}/{DATABASE}", c.user(), proxy.addr);
    let refused = tokio_postgres::connect(&bad, NoTls).await;
    assert!(refused.is_err(), "a wrong password was accepted");
    wait_for_series(proxy, &before, "pgsplit_auth_failures_total", "").await;

    // TLS: one client that completes its handshake, one that sends an
    // SSLRequest and then something that is not TLS.
    let tls = ClientTls::new(&ca.der, None, false);
    let client = tls
        .connect(&format!("{url}?sslmode=require"))
        .await
        .unwrap_or_else(|e| panic!("TLS login: {e}"));
    client.simple_query("SELECT 1").await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&crate::common::tls::ssl_request_packet())
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S', "pgsplit did not accept the SSLRequest");
    tcp.write_all(b"this is not a TLS ClientHello\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    wait_for_series(
        proxy,
        &before,
        "pgsplit_tls_handshakes_total",
        "result=\"ok\"",
    )
    .await;
    wait_for_series(
        proxy,
        &before,
        "pgsplit_tls_handshakes_total",
        "result=\"error\"",
    )
    .await;
    drop(client);
    drop(blocked);
    drop(holder);
    drop(app);
}

/// The table and the function the traffic uses, created before pgsplit
/// starts (its function catalog is read at start) and replayed on the replica.
async fn prepare_schema() {
    let c = cluster();
    let primary = connect(&c.url(Node::Primary)).await;
    primary
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS dashboard_t (id bigserial PRIMARY KEY, v text);
             CREATE OR REPLACE FUNCTION dashboard_conflict() RETURNS int
               LANGUAGE plpgsql STABLE AS $$
               BEGIN
                 IF pg_is_in_recovery() THEN
                   RAISE EXCEPTION 'dashboard test: a conflict on the replica'
                     USING ERRCODE = '40001';
                 END IF;
                 RETURN 1;
               END $$",
        )
        .await
        .unwrap();
    let replica = connect(&c.url(Node::Replica)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = replica
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE proname = 'dashboard_conflict'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never replayed dashboard_conflict()"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until Prometheus holds `n` scrapes of `instance` taken after `since`.
async fn wait_scrapes_after(
    prometheus: &mut Prometheus,
    instance: &str,
    since: SystemTime,
    n: usize,
) {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The samples of `up` in the last minute: one per scrape, with its time.
    let query = format!("up{{instance=\"{instance}\"}}[1m]");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        prometheus.assert_running();
        let after = prometheus.query(&query).await.map(|r| {
            r.iter()
                .flat_map(|series| list(series, "values"))
                .filter_map(|v| v.as_sequence()?.first()?.as_f64())
                .filter(|t| *t > since)
                .count()
        });
        if after.as_ref().is_ok_and(|count| *count >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape {instance} {n} times within 60s ({after:?}); log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dash = dashboard();
    let all = queries(&dash);
    assert!(all.len() >= 20, "only {} queries in {DASHBOARD}", all.len());

    prepare_schema().await;
    let ca = TestCa::new("pgsplit dashboard test CA");
    let dir = TlsDir::new();
    let leaf = ca.leaf("pgsplit", &["localhost", "127.0.0.1"], Usage::Server);
    let cert = dir.write_cert("pgsplit.crt", &leaf.cert_pem);
    let key = dir.write_key("pgsplit.key", &leaf.key_pem);
    // Transaction pooling with one connection per server, so that one open
    // transaction exhausts the primary's pool; TLS allowed, not required, so
    // plain and TLS clients both connect.
    let proxy = start(
        cluster(),
        &format!(
            "[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"500ms\"\n\
             [tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let instance = proxy.admin.to_string();
    let mut prometheus = Prometheus::start(&[proxy.admin]);

    // Traffic between scrapes, so that every rate is above 0 (Prometheus
    // scrapes for the first time a few seconds after it starts); then two
    // more scrapes, so that every series born of the traffic has the two
    // samples `rate` needs.
    wait_scrapes_after(&mut prometheus, &instance, SystemTime::UNIX_EPOCH, 1).await;
    provoke_every_series(&proxy, &ca).await;
    // Again, once Prometheus has seen the series the first round created
    // (pgsplit creates most event counters at their first event, so that
    // event itself never shows in a rate): now the panels draw the events.
    wait_scrapes_after(&mut prometheus, &instance, SystemTime::now(), 1).await;
    provoke_every_series(&proxy, &ca).await;
    wait_scrapes_after(&mut prometheus, &instance, SystemTime::now(), 2).await;

    // The instance variable: label_values(<metric>, instance) lists this pgsplit.
    let templating = dash.get("templating").expect("templating");
    for v in list(templating, "list") {
        if text(v, "type") != Some("query") {
            continue;
        }
        let q = v
            .get("query")
            .and_then(|q| text(q, "query").or_else(|| q.as_str()))
            .expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q}: expected label_values(...)"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let result = prometheus
            .query(selector.trim())
            .await
            .unwrap_or_else(|e| panic!("variable query {q}: {e}"));
        let values: Vec<&str> = result
            .iter()
            .filter_map(|r| text(r.get("metric")?, label.trim()))
            .collect();
        assert!(
            values.contains(&instance.as_str()),
            "variable query {q} gives {values:?}, not {instance}"
        );
    }

    let vars = variables(&dash, &instance);
    let mut failures = Vec::new();
    for q in &all {
        let expr = match substitute(&q.expr, &vars) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{} [{}]: {e}\n  {}", q.panel, q.ref_id, q.expr));
                continue;
            }
        };
        match prometheus.query(&expr).await {
            Ok(result) if !result.is_empty() => {
                let values: Vec<&str> = result
                    .iter()
                    .filter_map(|r| r.get("value")?.as_sequence()?.get(1)?.as_str())
                    .collect();
                // NaN: a ratio or quantile over rates that are all 0, which
                // a panel draws as nothing.
                if values.contains(&"NaN") {
                    failures.push(format!(
                        "{} [{}]: NaN ({values:?})\n  {}",
                        q.panel,
                        q.ref_id,
                        expr.replace('\n', " ")
                    ));
                } else {
                    println!("ok   {} [{}]: {values:?}", q.panel, q.ref_id);
                }
            }
            Ok(_) => failures.push(format!(
                "{} [{}]: no data\n  {}",
                q.panel,
                q.ref_id,
                expr.replace('\n', " ")
            )),
            Err(e) => failures.push(format!(
                "{} [{}]: {e}\n  {}",
                q.panel,
                q.ref_id,
                expr.replace('\n', " ")
            )),
        }
    }
    let metrics = metrics_text(&proxy).await;
    drop(prometheus);
    proxy.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}\n--- pgsplit /metrics ---\n{metrics}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    println!(
        "{} dashboard queries evaluated against Prometheus, all returned data",
        all.len()
    );
}
