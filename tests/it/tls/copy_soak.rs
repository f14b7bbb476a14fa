//! COPY soak against the real servers (issue: COPY FROM STDIN sometimes hung
//! forever with client bytes held in pgsplit). Each iteration, on a fresh
//! connection: `COPY (...) TO STDOUT` of 1 KB to 8 MB (a read, so the replica
//! serves it), a temp table, `COPY ... FROM STDIN` of the same bytes written
//! in chunks of 1 B to 1 MB that ignore message boundaries, then a check of
//! what arrived. Iterations rotate over client TLS on/off and server TLS
//! on/off. The client is a raw protocol client so that the chunking is ours,
//! and it reads while it writes, as libpq does.
//!
//! Every iteration is bounded: a hang fails the test in a minute, never the
//! whole suite.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Tls, client_tls, config_text, server_url, tls_cluster, tls_section, verify_full};
use crate::common::Proxy;
use crate::common::tls::{read_message, startup_packet};
use pgsplit_cluster::Node;

const ITERATIONS: u64 = 200;
const MIN_SIZE: f64 = 1024.0;
const MAX_SIZE: f64 = 8.0 * 1024.0 * 1024.0;
/// The column width of the generated rows (plus id, tab and newline).
const WIDTH: usize = 100;
const BOUND: Duration = Duration::from_secs(60);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A small deterministic generator, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Log-uniform in [lo, hi].
    fn log_uniform(&mut self, lo: f64, hi: f64) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        (lo * (hi / lo).powf(u)) as usize
    }
}

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

async fn next<S: AsyncRead + Unpin>(s: &mut S, what: &str) -> (u8, Vec<u8>) {
    match read_message(s).await {
        Ok(Some(m)) => {
            assert_ne!(
                m.0,
                b'E',
                "{what}: server error {}",
                String::from_utf8_lossy(&m.1)
            );
            m
        }
        Ok(None) => panic!("{what}: connection closed"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Reads up to ReadyForQuery, returning the messages before it.
async fn until_ready<S: AsyncRead + Unpin>(s: &mut S, what: &str) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let m = next(s, what).await;
        if m.0 == b'Z' {
            return got;
        }
        got.push(m);
    }
}

async fn open(t: &Tls, proxy: &Proxy, tls: bool) -> Box<dyn Io> {
    let c = &t.cluster;
    let mut s: Box<dyn Io> = if tls {
        match client_tls(t).ssl_request(proxy.addr, "localhost").await {
            Ok(s) => Box::new(s),
            Err(e) => panic!("TLS to pgsplit: {e}"),
        }
    } else {
        let tcp = TcpStream::connect(proxy.addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = tcp.set_nodelay(true);
        Box::new(tcp)
    };
    s.write_all(&startup_packet(c.user(), pgsplit_cluster::DATABASE))
        .await
        .unwrap_or_else(|e| panic!("startup: {e}"));
    s.flush().await.unwrap_or_else(|e| panic!("startup: {e}"));
    until_ready(&mut s, "login").await;
    s
}

async fn simple<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sql: &str) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    s.flush().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    until_ready(s, sql).await
}

/// One iteration; returns the bytes copied each way.
async fn iteration(t: &Tls, proxy: &Proxy, client_tls: bool, size: usize, chunk: usize) -> usize {
    let mut s = open(t, proxy, client_tls).await;
    let rows = (size / (WIDTH + 8)).max(1);
    let sql = format!(
        "COPY (SELECT g, repeat(chr(97 + g % 26), {WIDTH}) FROM generate_series(1, {rows}) g) TO STDOUT"
    );
    let mut data = Vec::with_capacity(size + WIDTH);
    for (tag, body) in simple(&mut s, &sql).await {
        if tag == b'd' {
            data.extend_from_slice(&body);
        }
    }
    let expected_len = (1..=rows)
        .map(|g| g.to_string().len() + WIDTH + 2)
        .sum::<usize>();
    assert_eq!(data.len(), expected_len, "COPY TO: bytes received");

    // A CHECK that costs the server some work per row: it then reads slower
    // than the client writes, so pgsplit's writes to it fill the socket
    // (where a TLS layer keeps what the socket cannot take).
    simple(
        &mut s,
        "CREATE TEMP TABLE cin(id int, h text CHECK (md5(md5(md5(md5(h)))) <> ''))",
    )
    .await;
    s.write_all(&query("COPY cin FROM STDIN"))
        .await
        .unwrap_or_else(|e| panic!("COPY FROM: {e}"));
    s.flush().await.unwrap_or_else(|e| panic!("COPY FROM: {e}"));
    let (tag, _) = next(&mut s, "CopyInResponse").await;
    assert_eq!(tag, b'G', "CopyInResponse");

    // The wire bytes: CopyData messages of up to 64 KiB, then CopyDone, cut
    // into `chunk`-byte writes regardless of message boundaries.
    let mut wire = Vec::with_capacity(data.len() + data.len() / 1000 + 16);
    for piece in data.chunks(64 * 1024) {
        wire.extend_from_slice(&msg(b'd', piece));
    }
    wire.extend_from_slice(&msg(b'c', &[]));
    let (mut r, mut w) = tokio::io::split(s);
    let writer = async {
        for c in wire.chunks(chunk) {
            w.write_all(c)
                .await
                .unwrap_or_else(|e| panic!("COPY data: {e}"));
            w.flush().await.unwrap_or_else(|e| panic!("COPY data: {e}"));
        }
    };
    let (_, replies) = tokio::join!(writer, until_ready(&mut r, "COPY FROM"));
    let tags: Vec<u8> = replies.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"C", "COPY FROM replies");
    assert_eq!(replies[0].1, format!("COPY {rows}\0").into_bytes());
    let mut s = r.unsplit(w);

    let rows_back = simple(
        &mut s,
        "SELECT count(*)::text || ' ' || sum(length(h))::text FROM cin",
    )
    .await;
    let row = rows_back
        .iter()
        .find(|m| m.0 == b'D')
        .unwrap_or_else(|| panic!("no row"));
    let want = format!("{rows} {}", rows * WIDTH);
    assert!(
        row.1.ends_with(want.as_bytes()),
        "table holds {:?}, want {want}",
        String::from_utf8_lossy(&row.1)
    );
    let _ = s.write_all(&msg(b'X', &[])).await;
    data.len()
}

async fn proxy_for(t: &Tls, server_tls: bool) -> Proxy {
    let c = &t.cluster;
    let params = if server_tls {
        verify_full(t)
    } else {
        "sslmode=disable".to_owned()
    };
    let tail = format!("{}[auth]\nmethod = \"trust\"\n", tls_section(t, "allow"));
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &params),
        &server_url(c, Node::Replica, "127.0.0.1", &params),
        &tail,
    );
    Proxy::start_with(&text, None, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_soak_every_size_and_cut() {
    crate::common::logs();
    let t = tls_cluster().await;
    let proxies = [proxy_for(t, true).await, proxy_for(t, false).await];
    let seed = 0x5eed_c0de_u64;
    let mut rng = Rng(seed);
    let started = std::time::Instant::now();
    let mut total = 0;
    for i in 0..ITERATIONS {
        let size = rng.log_uniform(MIN_SIZE, MAX_SIZE);
        // 1 B to 1 MB, but no more than 20,000 writes per iteration.
        let chunk = rng
            .log_uniform(1.0, 1024.0 * 1024.0)
            .max(size / 20_000)
            .max(1);
        let server_tls = i % 2 == 0;
        let client_tls = i % 4 < 2;
        let proxy = &proxies[usize::from(!server_tls)];
        let case = format!(
            "iteration {i} (seed {seed:#x}): {size} B in {chunk} B writes, client TLS {client_tls}, server TLS {server_tls}"
        );
        match tokio::time::timeout(BOUND, iteration(t, proxy, client_tls, size, chunk)).await {
            Ok(n) => total += n,
            Err(_) => panic!("{case}: no answer within {BOUND:?} (hung)"),
        }
    }
    println!(
        "copy soak: {ITERATIONS} iterations, {:.1} MB each way, {:.1} s",
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for p in proxies {
        p.stop().await;
    }
}
