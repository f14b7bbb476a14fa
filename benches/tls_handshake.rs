//! What TLS costs a new client connection (issue 3): connections per second for
//! sequential connect + `SELECT 1` + close with tokio-postgres, to pgsplit with and
//! without TLS, and straight to PostgreSQL with and without TLS for reference.
//!
//! Starts its own primary + replica with `ssl = on` and certificates from a test CA,
//! and pgsplit in-process with `[tls] mode = "allow"` (so one pgsplit serves both
//! kinds of client) and `verify-full` to the servers. Every client login is SCRAM and
//! every TLS handshake is a full one (no session resumption, as with libpq).
//!
//! `cargo bench --bench tls_handshake`; `PGSPLIT_BENCH_CONNECTIONS` sets the number
//! of connections per case (default 300).

// A bench that meets something unexpected stops there.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

// The integration tests' helpers (a test CA, an in-process pgsplit); this
// bench uses a few of them.
#[path = "../tests/it/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::Proxy;
use common::tls::{ClientTls, TestCa, TlsDir, Usage};
use pgsplit_cluster::{Cluster, ClusterOptions, Node};
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;

const WARMUP: usize = 20;

/// Connects, runs `SELECT 1` and closes, `n` times in a row; returns the time taken.
async fn run<T>(url: &str, tls: T, n: usize) -> Duration
where
    T: MakeTlsConnect<Socket> + Clone,
    T::Stream: Send + 'static,
{
    let start = Instant::now();
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(url, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("connect: {e:?}"));
        let driver = tokio::spawn(connection);
        client
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("SELECT 1: {e:?}"));
        // Dropping the client sends Terminate; the driver ends when the socket closes.
        drop(client);
        let _ = driver.await;
    }
    start.elapsed()
}

struct Row {
    target: &'static str,
    transport: &'static str,
    elapsed: Duration,
}

impl Row {
    fn per_second(&self, n: usize) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() {
    let n: usize = std::env::var("PGSPLIT_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);

    let ca = TestCa::new("pgsplit bench CA");
    let dir = TlsDir::new();
    let ca_file = dir.write_cert("ca.crt", &ca.cert_pem);
    let server = ca.leaf("postgres", &["127.0.0.1"], Usage::Server);
    let server_cert = dir.write_cert("server.crt", &server.cert_pem);
    let server_key = dir.write_server_key("server.key", &server.key_pem);
    let proxy_leaf = ca.leaf("pgsplit", &["localhost", "127.0.0.1"], Usage::Server);
    let proxy_cert = dir.write_cert("pgsplit.crt", &proxy_leaf.cert_pem);
    let proxy_key = dir.write_key("pgsplit.key", &proxy_leaf.key_pem);
    let cluster = Cluster::start(ClusterOptions {
        extra_conf: vec![
            "ssl = on".to_owned(),
            format!("ssl_cert_file = '{}'", server_cert.display()),
            format!("ssl_key_file = '{}'", server_key.display()),
        ],
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("cluster: {e}"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(async {
        let verify = format!("?sslmode=verify-full&sslrootcert={}", ca_file.display());
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             primary = \"{}{verify}\"\nreplicas = [\"{}{verify}\"]\n\
             [tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cluster.url(Node::Primary),
            cluster.url(Node::Replica),
            proxy_cert.display(),
            proxy_key.display()
        );
        let proxy = Proxy::start_with(&text, None, true).await;
        let tls = ClientTls::new(&ca.der, None, false).connector();
        let via_proxy = proxy.url(&cluster);
        let direct = cluster.url(Node::Primary);
        let mut rows = Vec::new();
        for (target, base) in [("pgsplit", &via_proxy), ("postgres", &direct)] {
            let plain = format!("{base}?sslmode=disable");
            let secure = format!("{base}?sslmode=require");
            run(&plain, tokio_postgres::NoTls, WARMUP).await;
            run(&secure, tls.clone(), WARMUP).await;
            rows.push(Row {
                target,
                transport: "plain",
                elapsed: run(&plain, tokio_postgres::NoTls, n).await,
            });
            rows.push(Row {
                target,
                transport: "TLS",
                elapsed: run(&secure, tls.clone(), n).await,
            });
        }
        proxy.stop().await;
        rows
    });

    println!();
    println!(
        "{n} sequential connect + SELECT 1 + close, SCRAM-SHA-256, tokio-postgres, rustls/ring"
    );
    println!(
        "{:<10} {:<6} {:>10} {:>12} {:>14}",
        "target", "client", "conn/s", "ms/conn", "TLS/plain"
    );
    for pair in rows.chunks(2) {
        let plain = pair[0].per_second(n);
        for row in pair {
            let rate = row.per_second(n);
            let ratio = if row.transport == "TLS" {
                format!("{:.2}", rate / plain)
            } else {
                String::new()
            };
            println!(
                "{:<10} {:<6} {:>10.1} {:>12.2} {:>14}",
                row.target,
                row.transport,
                rate,
                1000.0 / rate,
                ratio
            );
        }
    }
}
