//! Operations (issue 5) against real servers: the admin endpoints and the
//! Prometheus exposition (checked by `promtool` and scraped by a real
//! Prometheus), counters and gauges that move by the right amounts, and the
//! `pgsplit` binary under SIGTERM (drain) and SIGHUP (reload), with its logs.
//!
//! The test that stops the primary starts a cluster of its own, the one that
//! pauses replay takes its turn on the replay cluster (`common::replay`); the
//! others share the binary's cluster but each runs its own pgsplit (and so its
//! own metrics recorder).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::own::{blocking, own_cluster};
use crate::common::prometheus::Prometheus;
use crate::common::replay::replay_cluster;
use crate::common::{Proxy, cluster, connect, free_port, percent};
use pgsplit_cluster::{Cluster, DATABASE, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

// ----- HTTP -----

/// A minimal HTTP/1.1 GET: (status, body). `Connection: close`, body read to
/// the end (chunked transfer decoded).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("GET http://{addr}{path} timed out"),
        )),
    }
}

fn parse_http_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

// ----- Prometheus text format -----

/// One scrape of `/metrics`: the raw text and every sample by series key
/// (`name{label="value",...}` with labels sorted by name).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<(&str, &str)> = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// One sample line: (name, labels, value).
type Sample = (String, Vec<(String, String)>, f64);

/// Parses one sample line.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        loop {
            // label name
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            if let Some((i, '}')) = chars.peek().copied() {
                end = Some(i);
                break;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    value.push(match c {
                        'n' => '\n',
                        other => other,
                    });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    break;
                } else {
                    value.push(c);
                }
            }
            labels.push((key.trim().to_owned(), value));
            if chars.peek().is_none() {
                break;
            }
        }
        rest = &after[end? + 1..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, value) =
            parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line: {line}"));
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.insert(series_key(&name, &pairs), value);
    }
    out
}

impl Scrape {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series_key(name, labels)).copied()
    }

    /// A series that must be present.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "series {} missing from /metrics:\n{}",
                series_key(name, labels),
                self.text
            )
        })
    }

    /// A counter series; absent counts as 0 (it has not moved yet).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over every series of one metric name.
    fn sum(&self, name: &str) -> f64 {
        let prefix = format!("{name}{{");
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// The `# TYPE` of a metric family, if declared.
    fn type_of(&self, name: &str) -> Option<String> {
        let prefix = format!("# TYPE {name} ");
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|t| t.trim().to_owned())
    }
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, text) = http_get(admin, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(status, 200, "GET /metrics: {text}");
    let samples = parse_metrics(&text);
    Scrape { text, samples }
}

// ----- small helpers -----

/// Connects without TLS and returns the connection task's handle, whose
/// result carries an error the server sent outside any request (a FATAL).
async fn connect_watched(
    url: &str,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect: {e}"));
    (client, tokio::spawn(connection))
}

/// Which server answered `SELECT inet_server_port()`, over the simple
/// protocol: unlike `common::server_port` (which prepares and then closes a
/// statement), it sends one unit and nothing that could count as a write.
async fn server_port(client: &Client) -> u16 {
    let rows = client
        .simple_query("SELECT inet_server_port()")
        .await
        .unwrap_or_else(|e| panic!("inet_server_port: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .expect("a port")
}

/// A client URL for a pgsplit listening on `addr` in front of `c`.
fn proxy_url(c: &Cluster, addr: SocketAddr) -> String {
    format!(
        "postgres://{}:{}@{addr}/{DATABASE}",
        percent(c.user()),
        percent(c.password())
    )
}

/// The `server` label pgsplit uses for a node.
fn server_label(c: &Cluster, node: Node) -> String {
    format!("127.0.0.1:{}", c.port(node))
}

fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_000)
}

// ----- the pgsplit binary -----

/// A `pgsplit` process with its stderr captured line by line.
struct Binary {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Binary {
    fn spawn(config: &Path, log_format: &str, listen: SocketAddr, admin: SocketAddr) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg(log_format)
            .env("RUST_LOG", "debug")
            .env_remove("PGSPLIT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pgsplit: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Binary {
            child,
            lines,
            listen,
            admin,
        }
    }

    fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{sig}: {e}"));
        assert!(status.success(), "kill -{sig} {} failed", self.child.id());
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "pgsplit exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pgsplit never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No log line may carry the cluster's password.
    fn assert_no_password(&self, c: &Cluster) {
        let pw = c.password();
        let leaks: Vec<String> = self
            .logs()
            .into_iter()
            .filter(|l| l.contains(pw) || l.contains(&percent(pw)))
            .collect();
        assert!(
            leaks.is_empty(),
            "log lines carry the password:\n{}",
            leaks.join("\n")
        );
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A config file for the binary: loopback listeners, the cluster's primary,
/// `replicas`, then `extra`.
fn binary_config(
    c: &Cluster,
    listen: SocketAddr,
    admin: SocketAddr,
    replicas: &[String],
    extra: &str,
) -> String {
    let replicas: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\nprimary = \"{}\"\nreplicas = [{}]\n{extra}",
        c.url(Node::Primary),
        replicas.join(", ")
    )
}

fn write_file(path: &Path, text: &str) {
    // Write then rename, so that a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("create config");
    f.write_all(text.as_bytes()).expect("write config");
    f.sync_all().expect("sync config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn start_binary(
    dir: &Path,
    c: &Cluster,
    replicas: &[String],
    extra: &str,
    log_format: &str,
) -> (Binary, PathBuf) {
    let listen = loopback(free_port());
    let admin = loopback(free_port());
    let file = dir.join("pgsplit.toml");
    write_file(&file, &binary_config(c, listen, admin, replicas, extra));
    (Binary::spawn(&file, log_format, listen, admin), file)
}

// ----- /metrics -----

const COUNTERS: [&str; 4] = [
    "pgsplit_units_routed_total",
    "pgsplit_client_connections_total",
    "pgsplit_client_connections_rejected_total",
    "pgsplit_auth_failures_total",
];
const EVENT_COUNTERS: [&str; 5] = [
    "pgsplit_tls_handshakes_total",
    "pgsplit_errors_total",
    "pgsplit_retries_total",
    "pgsplit_fallbacks_total",
    "pgsplit_pool_exhausted_total",
];
const GAUGES: [&str; 9] = [
    "pgsplit_client_connections",
    "pgsplit_server_up",
    "pgsplit_server_role",
    "pgsplit_server_usable",
    "pgsplit_server_lag_bytes",
    "pgsplit_server_lag_seconds",
    "pgsplit_server_probe_age_seconds",
    "pgsplit_server_connections",
    "pgsplit_build_info",
];
const HISTOGRAMS: [&str; 2] = [
    "pgsplit_unit_duration_seconds",
    "pgsplit_pool_checkout_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    // Some traffic first, so that every family has samples.
    let bad = format!("postgres://{}:wrong@{}/{DATABASE}", c.user(), proxy.addr);
    assert!(tokio_postgres::connect(&bad, NoTls).await.is_err());
    let client = connect(&proxy.url(c)).await;
    client.simple_query("SELECT 1").await.unwrap();
    client
        .simple_query("CREATE TABLE IF NOT EXISTS ops_promtool (id int)")
        .await
        .unwrap();
    client
        .simple_query("INSERT INTO ops_promtool VALUES (1)")
        .await
        .unwrap();
    assert!(
        client
            .simple_query("SELECT * FROM no_such_table")
            .await
            .is_err()
    );
    let m = scrape(proxy.admin).await;

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool (Debian package `prometheus`) cannot be run: {e}"));
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(m.text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\nstdout: {}\nstderr: {}\n--- /metrics ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.text
    );

    // Every family is there with its type.
    for name in COUNTERS {
        assert_eq!(
            m.type_of(name).as_deref(),
            Some("counter"),
            "{name}:\n{}",
            m.text
        );
    }
    for name in EVENT_COUNTERS {
        if let Some(t) = m.type_of(name) {
            assert_eq!(t, "counter", "{name}");
        }
    }
    for name in GAUGES {
        assert_eq!(
            m.type_of(name).as_deref(),
            Some("gauge"),
            "{name}:\n{}",
            m.text
        );
    }
    for name in HISTOGRAMS {
        assert_eq!(
            m.type_of(name).as_deref(),
            Some("histogram"),
            "{name}:\n{}",
            m.text
        );
        m.value(&format!("{name}_bucket"), &[("le", "+Inf")]);
        m.value(&format!("{name}_sum"), &[]);
        m.value(&format!("{name}_count"), &[]);
    }
    assert_eq!(
        m.value(
            "pgsplit_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let primary = server_label(c, Node::Primary);
    let replica = server_label(c, Node::Replica);
    assert_eq!(m.value("pgsplit_server_up", &[("server", &primary)]), 1.0);
    assert_eq!(m.value("pgsplit_server_up", &[("server", &replica)]), 1.0);
    assert_eq!(
        m.value(
            "pgsplit_server_role",
            &[("server", &primary), ("role", "primary")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "pgsplit_server_role",
            &[("server", &replica), ("role", "replica")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "pgsplit_server_role",
            &[("server", &replica), ("role", "primary")]
        ),
        0.0
    );
    assert_eq!(
        m.value("pgsplit_server_usable", &[("server", &replica)]),
        1.0
    );
    m.value("pgsplit_server_lag_bytes", &[("server", &replica)]);
    m.value("pgsplit_server_lag_seconds", &[("server", &replica)]);
    let age = m.value("pgsplit_server_probe_age_seconds", &[("server", &replica)]);
    assert!((0.0..5.0).contains(&age), "probe age {age}");
    for state in ["idle", "active"] {
        m.value(
            "pgsplit_server_connections",
            &[("server", &primary), ("state", state)],
        );
    }
    // Bounded labels: no SQL text, no client address.
    for line in m.text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("SELECT")
                && !line.contains("ops_promtool")
                && !line.contains(&proxy.addr.to_string()),
            "unbounded label value: {line}"
        );
    }
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_pgsplit_with_up_1() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let mut prometheus = Prometheus::start(&[proxy.admin]);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let up = loop {
        prometheus.assert_running();
        if let Ok((200, body)) = prometheus.get("/api/v1/query?query=up").await {
            if let Some(v) = up_value(&body, &proxy.admin.to_string()) {
                last = body;
                if v == "1" {
                    break true;
                }
            } else {
                last = body;
            }
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let targets = if up {
        String::new()
    } else {
        prometheus
            .get("/api/v1/targets")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let log = prometheus.log();
    drop(prometheus);
    assert!(
        up,
        "Prometheus never saw up == 1 for pgsplit; last answer: {last}\ntargets: {targets}\nlog:\n{log}"
    );
    proxy.stop().await;
}

/// The value of `up` for the pgsplit job's `instance` in a query answer.
fn up_value(body: &str, instance: &str) -> Option<String> {
    // JSON is (flow-style) YAML: parse it with the YAML dev-dependency.
    let v: serde_norway::Value = serde_norway::from_str(body).ok()?;
    if v.get("status")?.as_str()? != "success" {
        return None;
    }
    v.get("data")?
        .get("result")?
        .as_sequence()?
        .iter()
        .find(|r| {
            let metric = r.get("metric");
            metric.and_then(|m| m.get("job")).and_then(|j| j.as_str()) == Some("pgsplit")
                && metric
                    .and_then(|m| m.get("instance"))
                    .and_then(|i| i.as_str())
                    == Some(instance)
        })
        .and_then(|r| {
            r.get("value")?
                .as_sequence()?
                .get(1)?
                .as_str()
                .map(str::to_owned)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_right_amounts() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute("CREATE TABLE IF NOT EXISTS ops_counters (id serial PRIMARY KEY, v int)")
        .await
        .unwrap();
    let before = scrape(proxy.admin).await;
    assert_eq!(before.value("pgsplit_client_connections", &[]), 0.0);

    // One failed login, then one client sending exactly 14 units, each a
    // simple-protocol Query (no Parse/Describe of its own).
    let bad = format!("postgres://{}:wrong@{}/{DATABASE}", c.user(), proxy.addr);
    let err = tokio_postgres::connect(&bad, NoTls)
        .await
        .err()
        .expect("a wrong password must be refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    let client = connect(&proxy.url(c)).await;
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    // Before the writes: after them, read-your-writes may keep reads on
    // the primary for a moment.
    for _ in 0..2 {
        client.simple_query("BEGIN").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        client.simple_query("COMMIT").await.unwrap();
    }
    for i in 0..3 {
        client
            .simple_query(&format!("INSERT INTO ops_counters (v) VALUES ({i})"))
            .await
            .unwrap();
    }
    let during = scrape(proxy.admin).await;
    assert_eq!(during.value("pgsplit_client_connections", &[]), 1.0);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = scrape(proxy.admin).await;
        if m.value("pgsplit_client_connections", &[]) == 0.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "pgsplit_client_connections never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let units = "pgsplit_units_routed_total";
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.counter(name, labels) - before.counter(name, labels)
    };
    let report = format!("before:\n{}\nafter:\n{}", before.text, after.text);
    // The transactions' BEGINs are answered by pgsplit (optimistic
    // transactions); their SELECTs are reads on the replica, and their
    // COMMITs follow them there.
    assert_eq!(
        delta(units, &[("route", "replica"), ("reason", "read")]),
        7.0,
        "{report}"
    );
    assert_eq!(
        delta(units, &[("route", "primary"), ("reason", "write")]),
        3.0,
        "{report}"
    );
    assert_eq!(
        delta(units, &[("route", "replica"), ("reason", "transaction")]),
        2.0,
        "{report}"
    );
    assert_eq!(
        delta(
            "pgsplit_transactions_total",
            &[("outcome", "read_only_on_replica")]
        ),
        2.0,
        "{report}"
    );
    assert_eq!(after.sum(units) - before.sum(units), 12.0, "{report}");
    assert_eq!(
        delta("pgsplit_unit_duration_seconds_count", &[]),
        12.0,
        "{report}"
    );
    assert!(
        delta("pgsplit_pool_checkout_seconds_count", &[]) >= 1.0,
        "no pool checkout recorded:\n{report}"
    );
    assert_eq!(
        delta("pgsplit_client_connections_total", &[]),
        2.0,
        "{report}"
    );
    assert_eq!(delta("pgsplit_auth_failures_total", &[]), 1.0, "{report}");
    assert_eq!(
        delta(
            "pgsplit_client_connections_rejected_total",
            &[("reason", "auth")]
        ),
        1.0,
        "{report}"
    );
    assert_eq!(
        after.sum("pgsplit_fallbacks_total") - before.sum("pgsplit_fallbacks_total"),
        0.0,
        "{report}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauges_grow_while_replay_is_paused() {
    let (cl, _turn) = replay_cluster().await;
    let proxy = Proxy::start(&cl, "[routing]\nhealth_interval = \"100ms\"\n").await;
    let replica = server_label(&cl, Node::Replica);
    let direct = connect(&cl.url(Node::Primary)).await;
    direct
        .batch_execute("CREATE TABLE ops_lag (id bigserial PRIMARY KEY, pad text)")
        .await
        .unwrap();
    blocking(&cl, |c| c.pause_replay())
        .await
        .expect("pause replay");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                direct
                    .batch_execute(
                        "INSERT INTO ops_lag (pad) SELECT repeat('x', 200) FROM generate_series(1, 200)",
                    )
                    .await
                    .expect("write on the primary");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = scrape(proxy.admin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = scrape(proxy.admin).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer task");
    let resumed = blocking(&cl, |c| c.resume_replay()).await;

    let bytes = |m: &Scrape| m.value("pgsplit_server_lag_bytes", &[("server", &replica)]);
    let secs = |m: &Scrape| m.value("pgsplit_server_lag_seconds", &[("server", &replica)]);
    let report = format!("first:\n{}\nsecond:\n{}", first.text, second.text);
    assert!(bytes(&first) > 0.0, "{report}");
    assert!(
        bytes(&second) > bytes(&first),
        "lag bytes did not grow:\n{report}"
    );
    assert!(
        secs(&second) > secs(&first) + 1.0,
        "lag seconds did not grow:\n{report}"
    );
    // Far behind (default max_lag 1s): no reads for it.
    assert_eq!(
        second.value("pgsplit_server_usable", &[("server", &replica)]),
        0.0,
        "{report}"
    );
    resumed.expect("resume replay");

    // Replay resumed: the lag falls back to nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(proxy.admin).await;
        if bytes(&m) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag never went back to 0 after replay resumed:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_primary_and_healthz_stays_up() {
    let cl = own_cluster().await;
    let proxy = Proxy::start(&cl, "[routing]\nhealth_interval = \"100ms\"\n").await;
    let admin = proxy.admin;
    assert_eq!(http_get(admin, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(admin, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(admin, "/nope").await.unwrap().0, 404);

    // /healthz is polled all along and must never fail.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(admin, "/healthz").await {
                    Ok((200, _)) => {}
                    other => bad.push(format!("{other:?}")),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, bad)
        })
    };

    let wait_status = |want: u16, secs: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = http_get(admin, "/readyz").await.expect("GET /readyz");
            if r.0 == want {
                return r.1;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {want}; last: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    blocking(&cl, |c| c.stop(Node::Primary, true))
        .await
        .expect("stop the primary");
    let body = wait_status(503, 15).await;
    assert!(
        body.starts_with("not ready:") && body.trim().lines().count() == 1,
        "503 body should be one line with a reason: {body:?}"
    );
    let primary = server_label(&cl, Node::Primary);
    let down = scrape(admin).await;
    assert_eq!(
        down.value("pgsplit_server_up", &[("server", &primary)]),
        0.0,
        "{}",
        down.text
    );
    blocking(&cl, |c| c.start_node(Node::Primary))
        .await
        .expect("start the primary");
    wait_status(200, 30).await;
    let back = scrape(admin).await;
    assert_eq!(
        back.value("pgsplit_server_up", &[("server", &primary)]),
        1.0,
        "{}",
        back.text
    );
    assert_eq!(
        back.value(
            "pgsplit_server_role",
            &[("server", &primary), ("role", "primary")]
        ),
        1.0,
        "{}",
        back.text
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, bad) = health.await.expect("healthz poller");
    assert!(n > 0);
    assert!(bad.is_empty(), "/healthz failed: {bad:?}");
    proxy.stop().await;
}

// ----- signals against the real binary -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_lets_the_open_transaction_commit() {
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pgsplit, _) = start_binary(
        dir.path(),
        c,
        &[c.url(Node::Replica)],
        "[routing]\nhealth_interval = \"100ms\"\n[limits]\nshutdown_grace = \"10s\"\n",
        "json",
    );
    pgsplit.wait_ready().await;
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute("CREATE TABLE IF NOT EXISTS ops_drain (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let id = unique();
    let url = proxy_url(c, pgsplit.listen);
    let (client, conn) = connect_watched(&url).await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("INSERT INTO ops_drain VALUES ({id})"))
        .await
        .unwrap();

    pgsplit.signal("TERM");
    let termed = Instant::now();

    // Not ready any more (503 while the admin listener still runs).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(pgsplit.admin, "/readyz").await {
            Ok((503, body)) => {
                assert!(body.contains("draining"), "{body}");
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "/readyz still {other:?} after SIGTERM"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(pgsplit.listen).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "the client listener still accepts after SIGTERM: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
            .await
            .expect("connect attempt hung")
            .is_err(),
        "a new client got in while draining"
    );

    // The open transaction still commits, and the row is on the primary.
    client
        .simple_query("COMMIT")
        .await
        .expect("COMMIT while draining");
    let row = direct
        .query_one(
            "SELECT count(*) FROM ops_drain WHERE id = $1",
            &[&(id as i64)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(pgsplit.exited().is_none(), "exited before its client left");

    drop(client);
    let _ = conn.await;
    let status = pgsplit.wait_exit(Duration::from_secs(8)).await;
    let waited = termed.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "pgsplit did not exit after its last client left:\n{}",
            pgsplit.log_text()
        )
    });
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        pgsplit.log_text()
    );
    assert!(waited < Duration::from_secs(10), "exit took {waited:?}");

    // --log-format json: every stderr line is one JSON object with a level.
    let logs = pgsplit.logs();
    assert!(!logs.is_empty());
    for line in &logs {
        assert!(
            line.starts_with('{') && line.contains("\"level\""),
            "not a JSON log line: {line}"
        );
        let v: serde_norway::Value =
            serde_norway::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
    }
    assert!(
        logs.iter().any(|l| l.contains("draining")),
        "no drain log line:\n{}",
        logs.join("\n")
    );
    pgsplit.assert_no_password(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_stuck_session_with_57p01_after_the_grace() {
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pgsplit, _) = start_binary(
        dir.path(),
        c,
        &[c.url(Node::Replica)],
        "[limits]\nshutdown_grace = \"2s\"\n",
        "text",
    );
    pgsplit.wait_ready().await;
    let (client, conn) = connect_watched(&proxy_url(c, pgsplit.listen)).await;
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();

    pgsplit.signal("TERM");
    let termed = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle-in-transaction session was never ended")
        .expect("connection task");
    let after = termed.elapsed();
    let err = ended.expect_err("the session must end with an error");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57P01"),
        "expected FATAL 57P01, got {err:?}"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "session ended after {after:?}, before the 2s grace"
    );
    let status = pgsplit
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("pgsplit did not exit:\n{}", pgsplit.log_text()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        pgsplit.log_text()
    );
    assert!(termed.elapsed() < Duration::from_secs(8));
    drop(client);
    pgsplit.assert_no_password(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_replica_and_rejects_an_invalid_config() {
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[routing]\nhealth_interval = \"100ms\"\n";
    let (mut pgsplit, file) = start_binary(dir.path(), c, &[], extra, "text");
    pgsplit.wait_ready().await;
    let url = proxy_url(c, pgsplit.listen);
    let client = connect(&url).await;
    for _ in 0..3 {
        assert_eq!(server_port(&client).await, c.port(Node::Primary));
    }

    // Add the replica and reload.
    let with_replica = binary_config(
        c,
        pgsplit.listen,
        pgsplit.admin,
        &[c.url(Node::Replica)],
        extra,
    );
    write_file(&file, &with_replica);
    pgsplit.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if server_port(&client).await == c.port(Node::Replica) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never reached the added replica:\n{}",
            pgsplit.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = connect(&url).await;
    assert_eq!(server_port(&fresh).await, c.port(Node::Replica));
    let removed = server_label(c, Node::Replica);
    let m = scrape(pgsplit.admin).await;
    assert_eq!(m.value("pgsplit_server_up", &[("server", &removed)]), 1.0);
    assert_eq!(
        m.value("pgsplit_server_usable", &[("server", &removed)]),
        1.0
    );
    assert!(
        pgsplit
            .wait_log("configuration reloaded", Duration::from_secs(5))
            .await
            .is_some(),
        "no reload log line:\n{}",
        pgsplit.log_text()
    );

    // An invalid config is rejected with an error line; the old one stays.
    write_file(
        &file,
        &binary_config(
            c,
            pgsplit.listen,
            pgsplit.admin,
            &[],
            "[routing]\nhealth_interval = \"100ms\"\nmax_lag = \"soon\"\n",
        ),
    );
    pgsplit.signal("HUP");
    let line = pgsplit
        .wait_log("reload rejected", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no rejection logged:\n{}", pgsplit.log_text()));
    assert!(line.contains("ERROR"), "not an error line: {line}");
    assert!(
        line.contains("max_lag"),
        "the line should name the key: {line}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pgsplit.exited().is_none(), "pgsplit died on a bad reload");
    assert_eq!(http_get(pgsplit.admin, "/readyz").await.unwrap().0, 200);
    for _ in 0..3 {
        assert_eq!(server_port(&client).await, c.port(Node::Replica));
    }
    let again = connect(&url).await;
    assert_eq!(server_port(&again).await, c.port(Node::Replica));

    // Remove the replica again: reads return to the primary, and the removed
    // server's gauges no longer claim it is up and usable.
    write_file(
        &file,
        &binary_config(c, pgsplit.listen, pgsplit.admin, &[], extra),
    );
    pgsplit.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if server_port(&client).await == c.port(Node::Primary) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads still reach the removed replica:\n{}",
            pgsplit.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = scrape(pgsplit.admin).await;
    for name in ["pgsplit_server_up", "pgsplit_server_usable"] {
        let v = m.get(name, &[("server", &removed)]).unwrap_or(0.0);
        assert_eq!(
            v, 0.0,
            "{name} still reports the removed server:\n{}",
            m.text
        );
    }

    drop((client, fresh, again));
    pgsplit.signal("TERM");
    let status = pgsplit
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("pgsplit did not exit:\n{}", pgsplit.log_text()));
    assert!(status.success(), "exit status {status}");
    pgsplit.assert_no_password(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_without_grace() {
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut pgsplit, _) = start_binary(
        dir.path(),
        c,
        &[c.url(Node::Replica)],
        "[limits]\nshutdown_grace = \"30s\"\n",
        "text",
    );
    pgsplit.wait_ready().await;
    let (client, conn) = connect_watched(&proxy_url(c, pgsplit.listen)).await;
    client.simple_query("BEGIN").await.unwrap();

    pgsplit.signal("INT");
    let signalled = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the session was never ended")
        .expect("connection task");
    let err = ended.expect_err("the session must end with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err:?}");
    let status = pgsplit
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("pgsplit did not exit:\n{}", pgsplit.log_text()));
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "SIGINT waited {:?}: it should not wait for the 30s grace",
        signalled.elapsed()
    );
    drop(client);
    pgsplit.assert_no_password(c);
}
