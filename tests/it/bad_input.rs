//! Raw TCP clients sending pgsplit malformed, oversized, stalled or surplus
//! input: each gets an ErrorResponse with a SQLSTATE and/or a closed
//! connection, promptly, and pgsplit keeps serving everybody else.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{Proxy, cluster, connect, start};
use pgsplit_cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Longer than any answer should take; a test that waits this long has found
/// a hang.
const PATIENCE: Duration = Duration::from_secs(10);
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const PROTOCOL_3_0: i32 = 196_608;
const TRUST: &str = "[auth]\nmethod = \"trust\"\n";

// ----- building messages -----

/// An untagged startup-phase packet: Int32 length (counting itself), then `body`.
fn untagged(body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    untagged(&body)
}

fn request(code: i32) -> Vec<u8> {
    untagged(&code.to_be_bytes())
}

/// A tagged message: type byte, Int32 length, body.
fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&untagged(body));
    v
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    tagged(b'Q', &body)
}

// ----- reading replies -----

/// What the peer did next.
#[derive(Debug)]
enum Next {
    Message(u8, Vec<u8>),
    /// EOF or reset: the connection is gone.
    Closed,
}

/// Reads one tagged message, or notices the close; panics if nothing
/// happens within [`PATIENCE`].
async fn next(s: &mut TcpStream) -> Next {
    let read = async {
        let mut header = [0u8; 5];
        if s.read_exact(&mut header).await.is_err() {
            return Next::Closed;
        }
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let body_len = usize::try_from(len).unwrap_or(0).saturating_sub(4);
        assert!(body_len < 1 << 20, "pgsplit sent a {len}-byte message");
        let mut body = vec![0u8; body_len];
        if s.read_exact(&mut body).await.is_err() {
            return Next::Closed;
        }
        Next::Message(header[0], body)
    };
    timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("pgsplit neither answered nor closed within {PATIENCE:?}"))
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if field == b'C' {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Reads until the connection closes; returns the SQLSTATEs of the
/// ErrorResponses seen on the way.
async fn errors_until_closed(s: &mut TcpStream) -> Vec<String> {
    let mut codes = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the connection was never closed");
        match next(s).await {
            Next::Closed => return codes,
            Next::Message(b'E', body) => {
                codes.push(sqlstate(&body).unwrap_or_else(|| "(no code)".into()))
            }
            Next::Message(_, _) => {}
        }
    }
}

/// Either an ErrorResponse with `code` followed by a close, or just a close.
async fn refused_with(s: &mut TcpStream, code: &str) {
    let codes = errors_until_closed(s).await;
    assert!(
        codes.is_empty() || codes == [code],
        "expected SQLSTATE {code} (or a silent close), got {codes:?}"
    );
}

async fn raw(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to pgsplit")
}

/// Logs in with a StartupMessage only (pgsplit configured with trust auth)
/// and reads up to ReadyForQuery.
async fn trusted_login(c: &Cluster, addr: SocketAddr) -> TcpStream {
    let mut s = raw(addr).await;
    s.write_all(&startup(&[("user", c.user()), ("database", "app")]))
        .await
        .expect("send startup");
    let mut authenticated = false;
    loop {
        match next(&mut s).await {
            Next::Message(b'R', body) => {
                assert_eq!(body, [0, 0, 0, 0], "trust must answer AuthenticationOk");
                authenticated = true;
            }
            Next::Message(b'Z', _) => break,
            Next::Message(b'E', body) => panic!("login refused: {:?}", sqlstate(&body)),
            Next::Message(_, _) => {}
            Next::Closed => panic!("closed during login"),
        }
    }
    assert!(authenticated);
    s
}

/// Runs `sql` on a logged-in raw connection and returns the text of the
/// first column of the first row.
async fn raw_query(s: &mut TcpStream, sql: &str) -> Option<String> {
    s.write_all(&query(sql)).await.expect("send query");
    let mut value = None;
    loop {
        match next(s).await {
            Next::Message(b'D', body) if value.is_none() => {
                // Int16 column count, then Int32 length and bytes.
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                let len = usize::try_from(len).unwrap_or(0);
                value = Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            Next::Message(b'E', body) => panic!("`{sql}` failed: {:?}", sqlstate(&body)),
            Next::Message(b'Z', _) => return value,
            Next::Message(_, _) => {}
            Next::Closed => panic!("closed during `{sql}`"),
        }
    }
}

/// pgsplit still serves a normal client.
async fn still_serves(c: &Cluster, proxy: &Proxy) {
    let client = connect(&proxy.url(c)).await;
    let n: i32 = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("a normal client after bad input")
        .get(0);
    assert_eq!(n, 42);
}

// ----- before login -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_startup_packet() {
    let c = cluster();
    let proxy = start(c, "").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: pgsplit\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &[0xff; 64][..],
    ] {
        let mut s = raw(proxy.addr).await;
        s.write_all(garbage).await.expect("send garbage");
        refused_with(&mut s, "08P01").await;
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_or_impossible_startup_lengths() {
    let c = cluster();
    let proxy = start(c, "").await;
    for header in [
        [0x7f, 0xff, 0xff, 0xff],
        [0x00, 0x01, 0x00, 0x00],
        [0x00, 0x00, 0x00, 0x04],
        [0x00, 0x00, 0x00, 0x00],
        [0x80, 0x00, 0x00, 0x00],
    ] {
        let mut s = raw(proxy.addr).await;
        let mut packet = header.to_vec();
        packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        s.write_all(&packet).await.expect("send header");
        refused_with(&mut s, "08P01").await;
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_then_eof() {
    let c = cluster();
    let proxy = start(c, "").await;
    let packet = startup(&[("user", c.user()), ("database", "app")]);
    for cut in [1, 3, 4, 6, packet.len() - 1] {
        let mut s = raw(proxy.addr).await;
        s.write_all(&packet[..cut]).await.expect("send part");
        s.shutdown().await.expect("half-close");
        errors_until_closed(&mut s).await;
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_contents_are_refused_with_their_sqlstate() {
    let c = cluster();
    let proxy = start(c, "").await;
    // Protocol 2.0: feature not supported.
    let mut s = raw(proxy.addr).await;
    s.write_all(&untagged(&0x0002_0000i32.to_be_bytes()))
        .await
        .expect("send");
    let codes = errors_until_closed(&mut s).await;
    assert_eq!(codes, ["0A000"], "protocol 2.0");

    // No user name.
    let mut s = raw(proxy.addr).await;
    s.write_all(&startup(&[("database", "app")]))
        .await
        .expect("send");
    let codes = errors_until_closed(&mut s).await;
    assert_eq!(codes, ["28000"], "no user");

    // A parameter without its value's terminator, then the end of the packet.
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0unterminated");
    let mut s = raw(proxy.addr).await;
    s.write_all(&untagged(&body)).await.expect("send");
    refused_with(&mut s, "08P01").await;

    // Invalid UTF-8 in a parameter.
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0\xff\xfe\0\0");
    let mut s = raw(proxy.addr).await;
    s.write_all(&untagged(&body)).await.expect("send");
    let codes = errors_until_closed(&mut s).await;
    assert_eq!(codes.len(), 1, "invalid UTF-8: {codes:?}");

    // An SSLRequest with bytes glued after it (CVE-2021-23222 shape).
    let mut s = raw(proxy.addr).await;
    let mut packet = request(SSL_REQUEST_CODE);
    packet.extend_from_slice(&startup(&[("user", c.user())]));
    s.write_all(&packet).await.expect("send");
    let mut first = [0u8; 1];
    match timeout(PATIENCE, s.read(&mut first)).await {
        Ok(Ok(1)) => assert_ne!(
            first[0], b'N',
            "pgsplit answered an SSLRequest that had bytes after it"
        ),
        Ok(_) => {}
        Err(_) => panic!("no answer and no close"),
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_and_startup_continues() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    for code in [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE] {
        let mut s = raw(proxy.addr).await;
        s.write_all(&request(code)).await.expect("send request");
        let mut answer = [0u8; 1];
        timeout(PATIENCE, s.read_exact(&mut answer))
            .await
            .expect("no answer to the request")
            .expect("closed instead of answering");
        assert_eq!(answer[0], b'N', "request {code}");
        // The same connection goes on in plain text.
        s.write_all(&startup(&[("user", c.user()), ("database", "app")]))
            .await
            .expect("send startup");
        loop {
            match next(&mut s).await {
                Next::Message(b'Z', _) => break,
                Next::Message(b'E', body) => panic!("refused: {:?}", sqlstate(&body)),
                Next::Message(_, _) => {}
                Next::Closed => panic!("closed after the declined request {code}"),
            }
        }
        assert_eq!(
            raw_query(&mut s, "SELECT 'plain'").await.as_deref(),
            Some("plain")
        );
    }
    // GSSENCRequest then SSLRequest on one connection, as libpq does with
    // gssencmode=prefer sslmode=prefer.
    let mut s = raw(proxy.addr).await;
    for code in [GSSENC_REQUEST_CODE, SSL_REQUEST_CODE] {
        s.write_all(&request(code)).await.expect("send request");
        let mut answer = [0u8; 1];
        timeout(PATIENCE, s.read_exact(&mut answer))
            .await
            .expect("no answer")
            .expect("closed");
        assert_eq!(answer[0], b'N');
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_with_an_unknown_key_just_closes() {
    let c = cluster();
    let proxy = start(c, "").await;
    let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    body.extend_from_slice(&12345i32.to_be_bytes());
    body.extend_from_slice(&67890i32.to_be_bytes());
    let mut s = raw(proxy.addr).await;
    s.write_all(&untagged(&body)).await.expect("send cancel");
    let codes = errors_until_closed(&mut s).await;
    assert!(codes.is_empty(), "a cancel gets no reply: {codes:?}");
    // A cancel request of the wrong size.
    let mut s = raw(proxy.addr).await;
    s.write_all(&untagged(&CANCEL_REQUEST_CODE.to_be_bytes()))
        .await
        .expect("send short cancel");
    errors_until_closed(&mut s).await;
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_while_others_are_served() {
    let c = cluster();
    // md5 rather than SCRAM: the well-behaved clients below must finish their
    // own handshake well within the 1 s limit even in a loaded debug build
    // (SCRAM's key derivation is slow there); the stalled one still stops at an
    // authentication request.
    let proxy = start(
        c,
        "[auth]\nmethod = \"md5\"\n[limits]\nhandshake_timeout = \"1s\"\n",
    )
    .await;
    let packet = startup(&[("user", c.user()), ("database", "app")]);

    // Connected, sent nothing.
    let mut silent = raw(proxy.addr).await;
    // Sent half a startup packet.
    let mut half = raw(proxy.addr).await;
    half.write_all(&packet[..packet.len() / 2])
        .await
        .expect("send half");
    // Sent a startup packet, got the password request, went quiet.
    let mut mid_auth = raw(proxy.addr).await;
    mid_auth.write_all(&packet).await.expect("send startup");
    match next(&mut mid_auth).await {
        Next::Message(b'R', body) => {
            assert_eq!(&body[..4], &[0, 0, 0, 5], "AuthenticationMD5Password")
        }
        other => panic!("expected an authentication request, got {other:?}"),
    }

    // Meanwhile a normal client logs in and works, more than once.
    for _ in 0..3 {
        still_serves(c, &proxy).await;
    }

    let started = Instant::now();
    for (what, s) in [
        ("silent", &mut silent),
        ("half a startup packet", &mut half),
        ("stalled in authentication", &mut mid_auth),
    ] {
        let closed = timeout(PATIENCE, errors_until_closed(s)).await;
        assert!(closed.is_ok(), "{what}: not closed");
    }
    assert!(
        started.elapsed() < PATIENCE,
        "stalled clients were closed, but only after {:?}",
        started.elapsed()
    );
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

// ----- after login -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_raw_login_works() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    let mut s = trusted_login(c, proxy.addr).await;
    assert_eq!(
        raw_query(&mut s, "SELECT 1 + 1").await.as_deref(),
        Some("2")
    );
    s.write_all(&tagged(b'X', &[])).await.expect("Terminate");
    assert!(errors_until_closed(&mut s).await.is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_message_length_after_login() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    for header in [
        [b'Q', 0x7f, 0xff, 0xff, 0xff],
        [b'P', 0x7f, 0xff, 0xff, 0xff],
        [b'd', 0x7f, 0xff, 0xff, 0xff],
        [b'Q', 0x00, 0x00, 0x00, 0x02],
        [b'Q', 0xff, 0xff, 0xff, 0xfe],
    ] {
        let mut s = trusted_login(c, proxy.addr).await;
        s.write_all(&header).await.expect("send header");
        let codes = errors_until_closed(&mut s).await;
        assert_eq!(codes, ["08P01"], "header {header:02x?}");
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_configured_limit_after_login() {
    let c = cluster();
    let proxy = start(
        c,
        &format!("{TRUST}[limits]\nmax_message_size = \"64KiB\"\n"),
    )
    .await;
    let mut s = trusted_login(c, proxy.addr).await;
    let big = format!("SELECT '{}'", "x".repeat(200 * 1024));
    // pgsplit may close before reading it all; a failed write is fine.
    let _ = s.write_all(&query(&big)).await;
    let codes = errors_until_closed(&mut s).await;
    assert_eq!(codes, ["08P01"]);
    // Under the limit is fine.
    let mut s = trusted_login(c, proxy.addr).await;
    let small = format!("SELECT length('{}')", "y".repeat(1000));
    assert_eq!(raw_query(&mut s, &small).await.as_deref(), Some("1000"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_after_login() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    for tag in [b'@', b'z', 0u8, b'R'] {
        let mut s = trusted_login(c, proxy.addr).await;
        s.write_all(&tagged(tag, b"abc")).await.expect("send");
        let codes = errors_until_closed(&mut s).await;
        assert_eq!(codes, ["08P01"], "message type {tag:#04x}");
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_bodies_after_login() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    let cases: [(&str, Vec<u8>); 6] = [
        ("Query without terminator", tagged(b'Q', b"SELECT 1")),
        ("Parse without terminators", tagged(b'P', b"stmt")),
        ("Bind cut short", {
            // A valid unnamed statement first, so only the Bind is wrong.
            let mut v = tagged(b'P', b"\0SELECT 1\0\0\0");
            v.extend_from_slice(&tagged(b'B', b"\0\0\0"));
            v
        }),
        ("Execute without portal terminator", tagged(b'E', b"portal")),
        ("Describe of unknown kind", tagged(b'D', b"Xname\0")),
        ("Close with an empty body", tagged(b'C', b"")),
    ];
    for (what, bytes) in cases {
        let mut s = trusted_login(c, proxy.addr).await;
        s.write_all(&bytes).await.expect("send");
        // Extended-protocol messages are answered at Sync.
        let _ = s.write_all(&tagged(b'S', b"")).await;
        let mut codes = Vec::new();
        let mut alive = false;
        loop {
            match next(&mut s).await {
                Next::Message(b'E', body) => codes.push(sqlstate(&body).unwrap_or_default()),
                Next::Message(b'Z', _) => {
                    alive = true;
                    break;
                }
                Next::Message(_, _) => {}
                Next::Closed => break,
            }
        }
        assert!(
            codes.first().is_some_and(|c| c == "08P01"),
            "{what}: expected a protocol violation error, got {codes:?}"
        );
        if alive {
            // A server that recovered at Sync must really be usable.
            assert_eq!(
                raw_query(&mut s, "SELECT 'ok'").await.as_deref(),
                Some("ok")
            );
        }
    }
    still_serves(c, &proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_limit_refuses_with_53300() {
    let c = cluster();
    let proxy = start(c, "[limits]\nmax_client_connections = 2\n").await;
    let first = connect(&proxy.url(c)).await;
    let second = connect(&proxy.url(c)).await;
    for client in [&first, &second] {
        client
            .simple_query("SELECT 1")
            .await
            .expect("within the limit");
    }
    for _ in 0..3 {
        let Err(err) = tokio_postgres::connect(&proxy.url(c), tokio_postgres::NoTls).await else {
            panic!("a third client must be refused");
        };
        assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    }
    // Those in keep working.
    first
        .simple_query("SELECT 1")
        .await
        .expect("first still works");

    // When one leaves, its place frees up.
    drop(second);
    let deadline = Instant::now() + PATIENCE;
    let third = loop {
        match tokio_postgres::connect(&proxy.url(c), tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                break client;
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
                assert!(Instant::now() < deadline, "the freed place never opened");
                sleep(Duration::from_millis(100)).await;
            }
        }
    };
    third.simple_query("SELECT 1").await.expect("third client");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_raw_connections_count_against_the_limit_only_until_timeout() {
    // A place taken by a client that never speaks is given back once the
    // handshake timeout closes it.
    let c = cluster();
    let proxy = start(
        c,
        "[limits]\nmax_client_connections = 1\nhandshake_timeout = \"1s\"\n",
    )
    .await;
    let mut squatter = raw(proxy.addr).await;
    errors_until_closed(&mut squatter).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio_postgres::connect(&proxy.url(c), tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.expect("query");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never admitted: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_to_an_unnamed_statement_the_client_never_parsed_fails_with_26000() {
    // With a pool of one, the second client gets the first client's primary
    // connection, handed on without DISCARD ALL (it only read), which still
    // holds the first client's unnamed statement on the server.
    let c = cluster();
    let proxy = start(c, &format!("{TRUST}[pool]\nmax_size = 1\n")).await;
    let first = connect(&proxy.url(c)).await;
    let row = first
        .query_typed_one("/* pgsplit:primary */ SELECT 42::int4", &[])
        .await
        .expect("unnamed statement on the primary");
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(first);
    sleep(Duration::from_millis(300)).await;

    let mut s = trusted_login(c, proxy.addr).await;
    // Bind portal "" to statement "" (no formats, no parameters), Execute, Sync.
    let mut unit = tagged(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    unit.extend_from_slice(&tagged(b'E', &[0, 0, 0, 0, 0]));
    unit.extend_from_slice(&tagged(b'S', &[]));
    s.write_all(&unit).await.expect("send Bind/Execute/Sync");
    let mut codes = Vec::new();
    loop {
        match next(&mut s).await {
            Next::Message(b'E', body) => codes.push(sqlstate(&body).unwrap_or_default()),
            Next::Message(b'D', _) => panic!("ran a statement this client never prepared"),
            Next::Message(b'Z', _) => break,
            Next::Message(_, _) => {}
            Next::Closed => panic!("closed"),
        }
    }
    assert_eq!(codes, ["26000"]);
    // The session goes on normally.
    assert_eq!(raw_query(&mut s, "SELECT 7").await.as_deref(), Some("7"));
    proxy.stop().await;
}

/// A StartupMessage for protocol `3.minor` with `params`.
fn startup_v(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = startup(params);
    // Bytes 4..8 hold the version: 3 in the high half, the minor in the low.
    packet[6..8].copy_from_slice(&minor.to_be_bytes());
    packet
}

/// The messages of a login up to ReadyForQuery.
async fn login_messages(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        match next(s).await {
            Next::Message(b'Z', _) => return got,
            Next::Message(b'E', body) => panic!("login refused: {:?}", sqlstate(&body)),
            Next::Message(t, body) => got.push((t, body)),
            Next::Closed => panic!("closed during login"),
        }
    }
}

/// A negotiation case: the minor version asked for, extra startup
/// parameters, the NegotiateProtocolVersion expected (version code and the
/// options listed), and the cancel key length.
type Negotiation<'a> = (
    u16,
    &'a [(&'a str, &'a str)],
    Option<(i32, Vec<&'a str>)>,
    usize,
);

/// Protocol negotiation as PostgreSQL 18 does it: 3.2 is granted as asked
/// (with a 32-byte cancel key that cancels), a newer minor version or an
/// unknown `_pq_.` option gets NegotiateProtocolVersion with the full version
/// code granted and the options ignored, and 3.0 gets 4-byte keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_are_negotiated_as_postgresql_does() {
    let c = cluster();
    let proxy = start(c, TRUST).await;
    let user = c.user();
    let cases: [Negotiation; 4] = [
        (0, &[], None, 4),
        (2, &[], None, 32),
        (9, &[], Some((196_610, vec![])), 32),
        (
            0,
            &[("_pq_.compression", "on"), ("_pq_.other", "x")],
            Some((196_608, vec!["_pq_.compression", "_pq_.other"])),
            4,
        ),
    ];
    for (minor, extra, want_v, key_len) in cases {
        let mut params = vec![("user", user), ("database", "app")];
        params.extend_from_slice(extra);
        let mut s = raw(proxy.addr).await;
        s.write_all(&startup_v(minor, &params))
            .await
            .expect("send startup");
        let got = login_messages(&mut s).await;
        let v: Vec<&Vec<u8>> = got.iter().filter(|m| m.0 == b'v').map(|m| &m.1).collect();
        match &want_v {
            None => assert!(
                v.is_empty(),
                "3.{minor}: unexpected NegotiateProtocolVersion"
            ),
            Some((version, options)) => {
                let [body] = v.as_slice() else {
                    panic!(
                        "3.{minor}: want one NegotiateProtocolVersion, got {}",
                        v.len()
                    )
                };
                assert_eq!(
                    i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    *version
                );
                assert_eq!(
                    i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    i32::try_from(options.len()).unwrap_or(-1)
                );
                let names: Vec<&str> = body[8..]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| std::str::from_utf8(n).unwrap_or("?"))
                    .collect();
                assert_eq!(&names, options);
            }
        }
        // NegotiateProtocolVersion comes before authentication, as in PostgreSQL.
        let first_auth = got.iter().position(|m| m.0 == b'R');
        if let Some(vpos) = got.iter().position(|m| m.0 == b'v') {
            assert!(
                first_auth.is_some_and(|r| vpos < r),
                "order: {:?}",
                got.iter().map(|m| m.0 as char).collect::<String>()
            );
        }
        let keys: Vec<&Vec<u8>> = got.iter().filter(|m| m.0 == b'K').map(|m| &m.1).collect();
        let [key] = keys.as_slice() else {
            panic!("one BackendKeyData")
        };
        assert_eq!(key.len(), 4 + key_len, "3.{minor}: cancel key length");

        // The key cancels a running statement of this session.
        s.write_all(&query("SELECT pg_sleep(5)"))
            .await
            .expect("send query");
        sleep(Duration::from_millis(300)).await;
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&key[..]);
        let mut cs = raw(proxy.addr).await;
        cs.write_all(&untagged(&cancel)).await.expect("send cancel");
        let mut codes = Vec::new();
        loop {
            match next(&mut s).await {
                Next::Message(b'E', body) => codes.push(sqlstate(&body).unwrap_or_default()),
                Next::Message(b'Z', _) => break,
                Next::Message(_, _) => {}
                Next::Closed => panic!("closed"),
            }
        }
        assert_eq!(codes, ["57014"], "3.{minor}: the statement was cancelled");
    }
    proxy.stop().await;
}
