//! Shared helpers for the integration tests.
//!
//! The test process has one primary + replica cluster, started on first use by [`cluster`]
//! and shared by the tests of every module (cargo runs them as threads of one process).
//! The servers outlive the tests only until the cluster's watchdog notices that the
//! process has exited. Tests that pause WAL replay take turns on a cluster of their own
//! ([`replay::replay_cluster`]); tests that stop, promote or otherwise damage a node start
//! a `Cluster` of their own ([`own::own_cluster`]).
//!
//! `Cluster` methods block. In a `#[tokio::test]` (a current-thread runtime) call them only
//! while no query of that test is in flight, or through `tokio::task::spawn_blocking`.

pub mod libpq;
pub mod own;
pub mod prometheus;
pub mod replay;
pub mod tls;

use std::sync::{Mutex, Once, OnceLock};

use pgsplit_cluster::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls};

/// The process-wide cluster; panics with the reason if it cannot be started. A failed
/// start is remembered, so every test reports it instead of retrying it.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER
        .get_or_init(|| Cluster::start(ClusterOptions::default()).map_err(|e| e.to_string()))
    {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start the test PostgreSQL cluster: {e}"),
    }
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a spawned task.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!("could not connect to {}: {e}", redact(url)),
    };
    tokio::spawn(async move {
        // The error, if any, also surfaces on the client's next call.
        let _ = connection.await;
    });
    client
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    match pgsplit_cluster::free_loopback_port() {
        Ok(port) => port,
        Err(e) => panic!("{e}"),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if scheme_end < at => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `IT_POOL_MODE=transaction` (or `session`) runs every in-process pgsplit
/// of the suite in that pool mode, as the `--pool-mode` flag would: the same
/// tests check both modes. (Not `PGSPLIT_*`: the binary refuses unknown
/// variables of its own prefix.)
/// A test whose config names a `[pool] mode` keeps it: it checks something
/// of that mode.
fn pool_mode_override(text: &str) -> Option<pgsplit::config::PoolMode> {
    if names_pool_mode(text) {
        return None;
    }
    match std::env::var("IT_POOL_MODE").ok()?.as_str() {
        "transaction" => Some(pgsplit::config::PoolMode::Transaction),
        "session" => Some(pgsplit::config::PoolMode::Session),
        other => panic!("IT_POOL_MODE={other:?}: expected transaction or session"),
    }
}

/// Whether TOML `text` sets `mode` in its `[pool]` table.
fn names_pool_mode(text: &str) -> bool {
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').trim();
        } else if section == "pool" && line.split('=').next().map(str::trim) == Some("mode") {
            return true;
        }
    }
    false
}

/// A pgsplit running in this test process in front of a cluster.
pub struct Proxy {
    pub ctx: std::sync::Arc<pgsplit::client::services::SessionDeps>,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub control: tokio::sync::mpsc::Sender<pgsplit::app::Control>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts pgsplit for `cluster` with `extra` TOML appended to the config, and
    /// waits until the replica takes reads (health probes passed) and the
    /// function catalog is loaded.
    pub async fn start(cluster: &Cluster, extra: &str) -> Proxy {
        let text = Self::config_text(cluster, extra);
        Self::start_with(&text, None, true).await
    }

    /// The config `start` uses: loopback listeners on free ports, the cluster's
    /// primary and replica, then `extra`.
    pub fn config_text(cluster: &Cluster, extra: &str) -> String {
        use pgsplit_cluster::Node;
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nprimary = \"{}\"\nreplicas = [\"{}\"]\n{extra}",
            cluster.url(Node::Primary),
            cluster.url(Node::Replica)
        )
    }

    /// Starts pgsplit from a whole config text. With `reload_file`, a
    /// `Control::Reload` re-reads that file (write the same text there first).
    /// With `wait_replica`, returns once the replica takes reads.
    pub async fn start_with(
        text: &str,
        reload_file: Option<std::path::PathBuf>,
        wait_replica: bool,
    ) -> Proxy {
        let overrides = pgsplit::config::Overrides {
            pool_mode: pool_mode_override(text),
            ..pgsplit::config::Overrides::default()
        };
        let config = pgsplit::config::Config::from_toml_str(text, std::iter::empty(), &overrides)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let mut app = pgsplit::app::App::bind(config)
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        if let Some(file) = reload_file {
            app = app.reload_from(file, overrides);
        }
        let ctx = app.session_deps();
        let addr = app.local_addr();
        let admin = app.admin_addr();
        let (control, stream) = pgsplit::app::control_channel();
        let task = tokio::spawn(app.run(stream));
        let proxy = Proxy {
            ctx,
            addr,
            admin,
            control,
            task: Some(task),
        };
        if wait_replica {
            proxy.wait_replica_usable().await;
        }
        proxy
    }

    pub async fn wait_replica_usable(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let snap = self.ctx.health.get();
            let replica_ok = snap.servers.iter().any(|s| s.usable);
            if replica_ok && self.ctx.classifier.catalog().len() > 1000 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica never became usable: {:?}",
                snap.servers
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A libpq URL pointing at this pgsplit with the cluster's credentials.
    pub fn url(&self, cluster: &Cluster) -> String {
        let user = percent(cluster.user());
        let pw = percent(cluster.password());
        format!(
            "postgres://{user}:{pw}@{}/{}",
            self.addr,
            pgsplit_cluster::DATABASE
        )
    }

    /// The admin console's URL (database `pgsplit`) as the cluster's user.
    pub fn console_url(&self, cluster: &Cluster) -> String {
        format!(
            "postgres://{}:{}@{}/pgsplit",
            percent(cluster.user()),
            percent(cluster.password()),
            self.addr
        )
    }

    pub async fn stop(mut self) {
        let _ = self.control.send(pgsplit::app::Control::Stop).await;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Percent-encodes `s` for a URL's user or password.
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `SELECT inet_server_port()` through `client`: which server answered.
pub async fn server_port(client: &Client) -> u16 {
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap_or_else(|e| panic!("inet_server_port: {e}: {:?}", e.as_db_error()));
    let port: i32 = row.get(0);
    u16::try_from(port).unwrap_or(0)
}

/// What pgsplit logged at INFO and above in this process, for [`log_text`].
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// [`LOG`] keeps at most this much: the tests look for lines logged a moment ago.
const LOG_LIMIT: usize = 8 << 20;

/// Appends to [`LOG`], dropping its older half when it outgrows [`LOG_LIMIT`].
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
        log.extend_from_slice(buf);
        if log.len() > LOG_LIMIT {
            let cut = log.len() - LOG_LIMIT / 2;
            let cut = log[cut..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(cut, |i| cut + i + 1);
            log.drain(..cut);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's `tracing` subscriber (once; every test calls it, and
/// a subscriber is global): pgsplit's output goes to the test's captured output,
/// filtered by `RUST_LOG` (e.g. `RUST_LOG=pgsplit=debug cargo test ... --
/// --nocapture`), and its INFO and above, what an operator reads, to the
/// in-memory log of [`log_text`].
pub fn logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, Layer, fmt};
        let _ = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .with_test_writer()
                    .with_filter(EnvFilter::from_default_env()),
            )
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| LogWriter)
                    .with_filter(EnvFilter::new("pgsplit=info")),
            )
            .try_init();
    });
}

/// Everything pgsplit logged at INFO and above since the first [`logs`] call,
/// from every test of the process (the most recent 4 MiB at least).
pub fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Starts pgsplit in front of `c` with `extra` config, with logs on.
pub async fn start(c: &Cluster, extra: &str) -> Proxy {
    logs();
    Proxy::start(c, extra).await
}

/// A plain HTTP/1.0 GET; the whole response (status line, headers, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: pgsplit\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no answer within 5s")))
}
