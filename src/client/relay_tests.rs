//! The relay over in-memory streams, with the peers splitting, pausing and
//! holding bytes as real sockets and TLS layers do (issue: COPY FROM STDIN
//! hanging with client bytes held inside pgsplit), or dying mid-reply.
//!
//! The server side here is a few lines of script that answer exactly what the
//! relay needs for one COPY; everything on pgsplit's side (framing, staging,
//! the relay loop, the TLS layer toward the server or the client) is the
//! product's own code. Each test is bounded: a hang fails it in seconds.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

use super::ClientIo;
use super::relay::{self, Expect, Outcome, RelayMode};
use super::state::SessionState;
use crate::backend::{ServerConn, ServerId, ServerTarget};
use crate::config::ServerUrl;
use crate::net::Stream;
use crate::protocol::{Frame, TxStatus, build, decode_frame, tag};
use crate::route::class::RouteMode;

/// Longest any one test may run before it counts as hung.
const BOUND: Duration = Duration::from_secs(10);

/// A socket buffer far smaller than the messages, so writes fill it and TLS
/// keeps ciphertext in its own buffer.
const PIPE: usize = 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server config for "localhost" and a client config that trusts it.
fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let Ok(ck) = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]) else {
        panic!("test certificate");
    };
    let der: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![der.clone()], key)
        })
        .unwrap_or_else(|e| panic!("server config: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap_or_else(|e| panic!("root store: {e}"));
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| panic!("client config: {e}"));
    (Arc::new(server), Arc::new(client))
}

/// A TLS pipe: (pgsplit's end as TLS client, the peer's end as TLS server),
/// or the other way round with `pgsplit_is_server`.
async fn tls_pipe(pgsplit_is_server: bool) -> (Stream, Box<dyn crate::net::Duplex>) {
    let (server_cfg, client_cfg) = tls_pair();
    let (a, b) = duplex(PIPE);
    let name = ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
    let connect = tokio_rustls::TlsConnector::from(client_cfg).connect(name, a);
    let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(b);
    let (c, s) = tokio::join!(connect, accept);
    let c = c.unwrap_or_else(|e| panic!("tls connect: {e}"));
    let s = s.unwrap_or_else(|e| panic!("tls accept: {e}"));
    if pgsplit_is_server {
        (Stream::Memory(Box::new(s)), Box::new(c))
    } else {
        (Stream::Memory(Box::new(c)), Box::new(s))
    }
}

fn plain_pipe() -> (Stream, DuplexStream) {
    plain_pipe_of(PIPE)
}

fn plain_pipe_of(size: usize) -> (Stream, DuplexStream) {
    let (a, b) = duplex(size);
    (Stream::Memory(Box::new(a)), b)
}

fn server_conn(stream: Stream) -> ServerConn {
    let url = ServerUrl::parse("postgres://u@127.0.0.1:5432/db?sslmode=disable")
        .unwrap_or_else(|e| panic!("{e}"));
    ServerConn::over(
        stream,
        ServerTarget::new(ServerId(0), url, crate::config::NetConfig::default()),
    )
}

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(tag::QUERY, &body)
}

/// CopyInResponse / CopyOutResponse for one text column.
fn copy_response(t: u8) -> Vec<u8> {
    msg(t, &[0, 0, 1, 0, 0])
}

/// Reads one whole message from a peer's stream.
async fn read_msg<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Frame {
    loop {
        match decode_frame(buf, 1 << 30) {
            Ok(Some(f)) => return f,
            Ok(None) => {}
            Err(e) => panic!("peer got a malformed message: {e}"),
        }
        match s.read_buf(buf).await {
            Ok(0) => panic!("stream closed with {} bytes of a message", buf.len()),
            Ok(_) => {}
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

/// A NoticeResponse as a trigger's `RAISE NOTICE` would send.
fn notice(i: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for (code, text) in [
        (b'S', "NOTICE".to_owned()),
        (b'C', "00000".to_owned()),
        (b'M', format!("row {i} arrived {}", "-".repeat(150))),
    ] {
        body.push(code);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(tag::backend::NOTICE_RESPONSE, &body)
}

/// The PostgreSQL side of `COPY t FROM STDIN`: counts the CopyData payload,
/// answers CommandComplete and ReadyForQuery after CopyDone. With `notices`,
/// it answers every CopyData with a NOTICE and reads nothing more until that
/// NOTICE is written, as a backend blocked on a full socket does.
async fn copy_in_server_noting<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    notices: bool,
) -> usize {
    let mut buf = BytesMut::new();
    let q = read_msg(&mut s, &mut buf).await;
    assert_eq!(q.tag, tag::QUERY);
    s.write_all(&copy_response(b'G'))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let mut payload = 0;
    loop {
        let f = read_msg(&mut s, &mut buf).await;
        match f.tag {
            tag::COPY_DATA => {
                payload += f.body().len();
                if notices {
                    s.write_all(&notice(payload))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    s.flush().await.unwrap_or_else(|e| panic!("{e}"));
                }
            }
            tag::COPY_DONE => break,
            other => panic!("unexpected message {} during COPY IN", char::from(other)),
        }
    }
    let mut reply = build::command_complete(&format!("COPY {payload}")).to_vec();
    reply.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
    s.write_all(&reply).await.unwrap_or_else(|e| panic!("{e}"));
    s.flush().await.unwrap_or_else(|e| panic!("{e}"));
    payload
}

/// What `Session::forward` does for a unit of one Query: reads it from the
/// client, stages it and relays it with the replies.
async fn one_query_unit(
    io: &mut ClientIo,
    conn: &mut ServerConn,
) -> Result<Outcome, relay::RelayError> {
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    let mut exp = Expect::default();
    let mut out = BytesMut::new();
    let Ok(Some(frame)) = io.read_frame().await else {
        panic!("no Query from the client")
    };
    relay::stage(&frame, &mut st, conn, &mut out, &mut exp).unwrap_or_else(|e| panic!("{e}"));
    relay::relay(io, conn, &mut st, &mut exp, RelayMode::default(), out).await
}

/// pgsplit's client and server ends over plain in-memory pipes, with the
/// application's and the server's ends.
fn plain_ends() -> (ClientIo, DuplexStream, ServerConn, DuplexStream) {
    let (client_stream, app) = plain_pipe();
    let (pg_stream, pg) = plain_pipe();
    let io = ClientIo::new(client_stream, BytesMut::new(), 64 << 20);
    (io, app, server_conn(pg_stream), pg)
}

/// Closes pgsplit's client end and checks that nothing was sent on it.
async fn assert_client_got_nothing(io: ClientIo, mut app: DuplexStream) {
    drop(io);
    let mut rest = Vec::new();
    let _ = app.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "the client got {rest:?}");
}

/// Relays the client's `unit` (already staged) in `mode`, bounded.
async fn relay_unit(
    io: &mut ClientIo,
    conn: &mut ServerConn,
    mode: RelayMode,
    unit: &[u8],
) -> Result<Outcome, relay::RelayError> {
    bounded("relay", relay_unit_unbounded(io, conn, mode, unit)).await
}

/// How the test client cuts the byte stream it sends after CopyInResponse.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Whole messages, one write each.
    Messages,
    /// Every message header split in two writes (2 + 3 bytes), with a pause.
    SplitHeaders,
    /// The last CopyData and CopyDone in one write.
    LastTwoTogether,
    /// CopyDone alone, after a pause.
    DoneAfterPause,
    /// Fixed-size chunks, ignoring message boundaries.
    Chunks(usize),
}

/// Runs one relayed `COPY FROM STDIN` of `rows` CopyData messages of `row`
/// bytes each, with the client's bytes cut as `cut`; returns the payload the
/// server counted and what the client read back.
async fn copy_in(
    server_tls: bool,
    rows: usize,
    row: usize,
    cut: Cut,
) -> (usize, Vec<Frame>, Outcome) {
    copy_in_noting(server_tls, rows, row, cut, false).await
}

async fn copy_in_noting(
    server_tls: bool,
    rows: usize,
    row: usize,
    cut: Cut,
    notices: bool,
) -> (usize, Vec<Frame>, Outcome) {
    let (pg_stream, pg_end): (Stream, Box<dyn crate::net::Duplex>) = if server_tls {
        tls_pipe(false).await
    } else {
        let (s, e) = plain_pipe();
        (s, Box::new(e))
    };
    // A client socket with room for everything it sends (kernel buffers are
    // large) unless the point is the client's cuts.
    let (client_stream, mut app) = if notices {
        plain_pipe_of(4 << 20)
    } else {
        plain_pipe()
    };
    let server = tokio::spawn(copy_in_server_noting(pg_end, notices));

    let mut io = ClientIo::new(client_stream, BytesMut::new(), 64 << 20);
    let mut conn = server_conn(pg_stream);
    let proxy = tokio::spawn(async move {
        match one_query_unit(&mut io, &mut conn).await {
            Ok(o) => o,
            Err(_) => panic!("relay failed"),
        }
    });

    app.write_all(&query("COPY t FROM STDIN"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = BytesMut::new();
    let first = read_msg(&mut app, &mut buf).await;
    assert_eq!(first.tag, b'G', "CopyInResponse reaches the client");

    let (mut app_r, mut app) = tokio::io::split(app);
    let reader = async move {
        let mut replies = Vec::new();
        loop {
            let f = read_msg(&mut app_r, &mut buf).await;
            let end = f.tag == tag::backend::READY_FOR_QUERY;
            replies.push(f);
            if end {
                return replies;
            }
        }
    };
    let data: Vec<Vec<u8>> = (0..rows)
        .map(|i| msg(tag::COPY_DATA, &vec![b'a' + (i % 26) as u8; row]))
        .collect();
    let done = msg(tag::COPY_DONE, &[]);
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    let writer = async move {
        match cut {
            Cut::Messages => {
                for d in data.iter().chain(std::iter::once(&done)) {
                    app.write_all(d).await.unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Cut::SplitHeaders => {
                for d in data.iter().chain(std::iter::once(&done)) {
                    app.write_all(&d[..2])
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    pause().await;
                    app.write_all(&d[2..])
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Cut::LastTwoTogether => {
                let (last, rest) = data.split_last().unwrap_or_else(|| panic!("rows > 0"));
                for d in rest {
                    app.write_all(d).await.unwrap_or_else(|e| panic!("{e}"));
                }
                let mut tail = last.clone();
                tail.extend_from_slice(&done);
                app.write_all(&tail).await.unwrap_or_else(|e| panic!("{e}"));
            }
            Cut::DoneAfterPause => {
                for d in &data {
                    app.write_all(d).await.unwrap_or_else(|e| panic!("{e}"));
                }
                pause().await;
                app.write_all(&done).await.unwrap_or_else(|e| panic!("{e}"));
            }
            Cut::Chunks(n) => {
                let mut all: Vec<u8> = data.concat();
                all.extend_from_slice(&done);
                for c in all.chunks(n) {
                    app.write_all(c).await.unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
        app
    };
    let (mut replies, _app) = tokio::join!(reader, writer);
    // NOTICEs are relayed as they come; the unit's own replies follow.
    replies.retain(|f| f.tag != tag::backend::NOTICE_RESPONSE);
    let payload = server.await.unwrap_or_else(|e| panic!("server task: {e}"));
    let outcome = proxy.await.unwrap_or_else(|e| panic!("proxy task: {e}"));
    (payload, replies, outcome)
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {BOUND:?} (hung)"),
    }
}

fn assert_copied(what: &str, (payload, replies, outcome): (usize, Vec<Frame>, Outcome), n: usize) {
    assert_eq!(payload, n, "{what}: bytes the server received");
    let tags: Vec<char> = replies.iter().map(|f| char::from(f.tag)).collect();
    assert_eq!(tags, ['C', 'Z'], "{what}: replies");
    assert_eq!(
        replies[0].body(),
        format!("COPY {n}\0").as_bytes(),
        "{what}: command tag"
    );
    assert!(outcome.error.is_none(), "{what}: {outcome:?}");
}

#[tokio::test]
async fn copy_in_reaches_a_tls_server_whole() {
    for (rows, row) in [(1, 200_000), (40, 8_000), (3, 70_000)] {
        let what = format!("TLS server, {rows} x {row} B");
        let got = bounded(&what, copy_in(true, rows, row, Cut::Messages)).await;
        assert_copied(&what, got, rows * row);
    }
}

#[tokio::test]
async fn copy_in_survives_every_client_cut() {
    let cuts = [
        Cut::Messages,
        Cut::SplitHeaders,
        Cut::LastTwoTogether,
        Cut::DoneAfterPause,
        Cut::Chunks(1),
        Cut::Chunks(7),
        Cut::Chunks(4096),
        Cut::Chunks(65_537),
    ];
    for server_tls in [false, true] {
        for cut in cuts {
            let (rows, row) = match cut {
                Cut::Chunks(1) | Cut::SplitHeaders => (5, 300),
                _ => (20, 5_000),
            };
            let what = format!("{cut:?}, server TLS {server_tls}");
            let got = bounded(&what, copy_in(server_tls, rows, row, cut)).await;
            assert_copied(&what, got, rows * row);
        }
    }
}

/// `COPY ... TO STDOUT` toward a TLS client: every byte the server sent,
/// and the ReadyForQuery, reach the client without it sending anything more.
#[tokio::test]
async fn copy_out_reaches_a_tls_client_whole() {
    let rows = 50;
    let row = 4_000;
    let (client_stream, mut app) = tls_pipe(true).await;
    let (pg_stream, mut pg) = plain_pipe();
    let mut io = ClientIo::new(client_stream, BytesMut::new(), 64 << 20);
    let mut conn = server_conn(pg_stream);
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let q = read_msg(&mut pg, &mut buf).await;
        assert_eq!(q.tag, tag::QUERY);
        let mut out = copy_response(b'H');
        for _ in 0..rows {
            out.extend(msg(tag::COPY_DATA, &vec![b'x'; row]));
        }
        out.extend(msg(tag::COPY_DONE, &[]));
        out.extend_from_slice(&build::command_complete(&format!("COPY {rows}")));
        out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        pg.write_all(&out).await.unwrap_or_else(|e| panic!("{e}"));
        pg
    });
    let proxy = tokio::spawn(async move {
        let r = one_query_unit(&mut io, &mut conn).await;
        assert!(r.is_ok(), "relay failed");
        // Keep the client's stream open: only what was sent counts.
        tokio::time::sleep(BOUND * 2).await;
    });
    app.write_all(&query("COPY t TO STDOUT"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let got = bounded("COPY TO a TLS client", async {
        let mut buf = BytesMut::new();
        let mut payload = 0;
        loop {
            let f = read_msg(&mut app, &mut buf).await;
            match f.tag {
                tag::COPY_DATA => payload += f.body().len(),
                tag::backend::READY_FOR_QUERY => return payload,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(got, rows * row);
    proxy.abort();
    let _ = server.await;
}

/// A server that stops reading while its answers are not read (a COPY FROM
/// with a NOTICE per row) and a client sending faster than the server reads:
/// pgsplit must read the server while it writes to it, or both block.
#[tokio::test]
async fn copy_in_with_a_notice_per_row_does_not_deadlock() {
    for server_tls in [false, true] {
        let what = format!("NOTICE per row, server TLS {server_tls}");
        let got = bounded(
            &what,
            copy_in_noting(server_tls, 300, 2_000, Cut::Messages, true),
        )
        .await;
        assert_copied(&what, got, 300 * 2_000);
    }
}

/// A replica that dies after BindComplete but before any row: the client has
/// seen nothing, so the read can still run elsewhere.
#[tokio::test]
async fn a_server_dying_after_bind_complete_leaves_the_read_retryable() {
    let (mut io, app, mut conn, mut pg) = plain_ends();
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let q = read_msg(&mut pg, &mut buf).await;
        assert_eq!(q.tag, tag::BIND);
        pg.write_all(&msg(tag::backend::BIND_COMPLETE, &[]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Closing `pg` is the server dying.
    });
    let mut unit = msg(tag::BIND, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    unit.extend(msg(tag::EXECUTE, &[0, 0, 0, 0, 0]));
    unit.extend(msg(tag::SYNC, &[]));
    let mode = RelayMode {
        extended: true,
        retry_conflict: true,
        ..RelayMode::default()
    };
    let result = relay_unit(&mut io, &mut conn, mode, &unit).await;
    let _ = server.await;
    match result {
        Err(relay::RelayError::Server { sent_to_client, .. }) => {
            assert!(!sent_to_client, "BindComplete counted as an answer");
        }
        Ok(o) => panic!("relay succeeded against a dead server: {o:?}"),
        Err(relay::RelayError::Client(e)) => panic!("client error: {e}"),
    }
    // And the client really got nothing.
    assert_client_got_nothing(io, app).await;
}

/// The floor query pipelined behind a write: its replies never reach the
/// client and its answer comes back in the outcome.
#[tokio::test]
async fn the_pipelined_floor_query_is_read_and_swallowed() {
    let (mut io, app, mut conn, mut pg) = plain_ends();
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let unit = read_msg(&mut pg, &mut buf).await;
        let probe = read_msg(&mut pg, &mut buf).await;
        assert_eq!(unit.tag, tag::QUERY);
        assert_eq!(
            probe.tag,
            tag::QUERY,
            "the probe follows in the same flight"
        );
        assert!(
            probe.body().starts_with(super::floor_probe::SQL),
            "{:?}",
            probe.body()
        );
        let mut out = build::command_complete("INSERT 0 1").to_vec();
        out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        out.extend(msg(
            b'T',
            b"\0\x01pg_current_wal_insert_lsn\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ));
        out.extend(msg(tag::backend::DATA_ROW, b"\0\x01\0\0\0\x0b16/B374D848"));
        out.extend_from_slice(&build::command_complete("SELECT 1"));
        out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
        pg.write_all(&out).await.unwrap_or_else(|e| panic!("{e}"));
        pg
    });
    let mut unit = query("INSERT INTO t VALUES (1)");
    unit.extend_from_slice(&build::query(super::floor_probe::SQL));
    let mode = RelayMode {
        hold_ready: true,
        floor_probe: true,
        ..RelayMode::default()
    };
    let outcome = relay_unit(&mut io, &mut conn, mode, &unit).await;
    let _pg = server.await;
    let outcome = outcome.unwrap_or_else(|_| panic!("relay failed"));
    assert!(outcome.probe.is_some());
    assert_eq!(outcome.probe, crate::server::Lsn::parse("16/B374D848"));
    assert_eq!(outcome.status, TxStatus::Idle);
    assert!(outcome.wrote && outcome.error.is_none(), "{outcome:?}");
    assert!(
        conn.buffered(0..1).is_empty(),
        "nothing of the probe left unread"
    );
    // The INSERT's CommandComplete waits for the session to send it with the
    // ReadyForQuery, once the floor is recorded; nothing of the probe does.
    assert_eq!(
        &outcome.tail[..],
        &build::command_complete("INSERT 0 1")[..]
    );
    assert_client_got_nothing(io, app).await;
}

/// A server that stops answering mid-reply: what it sent before it froze
/// reaches the client at once (pgsplit holds no reply bytes back waiting
/// for more), and the unit stays pending rather than ending in an invented
/// result.
#[tokio::test]
async fn a_stalled_server_holds_back_nothing_it_sent() {
    let (mut io, mut app, mut conn, mut pg) = plain_ends();
    let (frozen_tx, frozen_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let q = read_msg(&mut pg, &mut buf).await;
        assert_eq!(q.tag, tag::QUERY);
        let mut reply = msg(tag::backend::ROW_DESCRIPTION, &[0, 0]);
        reply.extend(msg(tag::backend::DATA_ROW, &[0, 1, 0, 0, 0, 1, b'7']));
        pg.write_all(&reply).await.unwrap_or_else(|e| panic!("{e}"));
        // Frozen: the socket stays open, nothing more comes.
        let _ = frozen_rx.await;
        drop(pg);
    });
    let unit = query("SELECT 7");
    let mut relayed = std::pin::pin!(relay_unit_unbounded(
        &mut io,
        &mut conn,
        RelayMode::default(),
        &unit
    ));
    let mut got = BytesMut::new();
    let row = async {
        loop {
            while let Ok(Some(f)) = decode_frame(&mut got, 1 << 20) {
                if f.tag == tag::backend::DATA_ROW {
                    return f;
                }
            }
            let n = app
                .read_buf(&mut got)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "pgsplit closed the client");
        }
    };
    tokio::select! {
        r = &mut relayed => panic!("the relay ended while the server was frozen: {:?}", r.map(|o| o.status).map_err(|_| ())),
        f = bounded("the row sent before the freeze", row) => assert_eq!(&f.bytes[5..], &[0, 1, 0, 0, 0, 1, b'7']),
    }
    // Still waiting for the server, as a direct client would.
    let still = tokio::time::timeout(Duration::from_millis(100), &mut relayed).await;
    assert!(
        still.is_err(),
        "the relay gave up on a frozen server by itself"
    );
    // The server going away ends it with a connection-loss error.
    let _ = frozen_tx.send(());
    let _ = server.await;
    match bounded("relay after the server closed", relayed).await {
        Err(relay::RelayError::Server { sent_to_client, .. }) => assert!(sent_to_client),
        Ok(o) => panic!("relay succeeded against a dead server: {o:?}"),
        Err(relay::RelayError::Client(e)) => panic!("client error: {e}"),
    }
}

/// A server that sends bytes that are no PostgreSQL message: its
/// connection is broken, the client gets none of it.
#[tokio::test]
async fn a_server_sending_garbage_is_cut_off() {
    for garbage in [
        // A length below the 4 bytes of the length itself.
        vec![b'D', 0, 0, 0, 1],
        // A message far beyond any server message pgsplit accepts.
        vec![b'D', 0x7f, 0xff, 0xff, 0xff],
        // A ReadyForQuery with an unknown status.
        msg(tag::backend::READY_FOR_QUERY, b"X"),
    ] {
        let (mut io, app, mut conn, mut pg) = plain_ends();
        let sent = garbage.clone();
        let server = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = read_msg(&mut pg, &mut buf).await;
            pg.write_all(&sent).await.unwrap_or_else(|e| panic!("{e}"));
            // Stay open: the relay must not wait for more.
            tokio::time::sleep(BOUND).await;
        });
        let result = relay_unit(&mut io, &mut conn, RelayMode::default(), &query("SELECT 1")).await;
        server.abort();
        match result {
            Err(relay::RelayError::Server { sent_to_client, .. }) => {
                assert!(!sent_to_client, "{garbage:?}");
            }
            Ok(o) => panic!("relay accepted {garbage:?}: {o:?}"),
            Err(relay::RelayError::Client(e)) => panic!("client error: {e}"),
        }
        assert!(
            conn.is_broken(),
            "a connection that sent {garbage:?} would be reused"
        );
        assert_client_got_nothing(io, app).await;
    }
}

/// [`relay_unit`] without the bound, for tests that watch it pend.
async fn relay_unit_unbounded(
    io: &mut ClientIo,
    conn: &mut ServerConn,
    mode: RelayMode,
    unit: &[u8],
) -> Result<Outcome, relay::RelayError> {
    let mut st = SessionState::new(RouteMode::Auto, &[]);
    let mut exp = Expect::default();
    relay::relay(io, conn, &mut st, &mut exp, mode, BytesMut::from(unit)).await
}

/// A named Parse that never completed is forgotten by the connection; the
/// session forgets it only when the unit does not run again (a read retried
/// on the primary sends its Parse again and needs it afterwards: with
/// transaction pooling the next Bind may land on yet another connection).
#[test]
fn an_unfinished_parse_stays_in_the_session_when_the_unit_runs_again() {
    let classifier = crate::route::classify::Classifier::new(
        crate::route::catalog::FunctionCatalog::builtin(),
        64,
    );
    for (final_run, kept) in [(false, true), (true, false)] {
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        let parse = Frame {
            tag: tag::PARSE,
            bytes: msg(tag::PARSE, b"s1\0SELECT 1\0\0\0").into(),
        };
        let mut unit = super::unit::Unit::default();
        unit.push(parse.clone(), &mut st, &classifier)
            .unwrap_or_else(|e| panic!("{e}"));
        let (stream, _server) = plain_pipe();
        let mut conn = server_conn(stream);
        let mut exp = Expect::default();
        let mut out = BytesMut::new();
        relay::stage(&parse, &mut st, &mut conn, &mut out, &mut exp)
            .unwrap_or_else(|e| panic!("{e}"));
        relay::settle(&mut exp, &mut st, &mut conn, final_run);
        assert_eq!(
            st.statement(b"s1").is_some(),
            kept,
            "final_run = {final_run}"
        );
        assert!(
            !conn.statements().has_name(b"s1"),
            "the connection never got it"
        );
    }
}

/// A row far larger than any buffer goes to the client as it arrives: the
/// client has the row's first bytes while the server still holds the rest,
/// and the whole answer arrives intact, for a plain and a retryable read.
#[tokio::test]
async fn a_huge_row_is_streamed_not_buffered() {
    for mode in [
        RelayMode::default(),
        RelayMode {
            retry_conflict: true,
            ..RelayMode::default()
        },
    ] {
        let (mut io, mut app, mut conn, mut pg) = plain_ends();
        let (more_tx, more_rx) = tokio::sync::oneshot::channel::<()>();
        // One 4 MiB column.
        let value = vec![b'x'; 4 << 20];
        let mut row_body = vec![0, 1];
        row_body.extend_from_slice(&i32::try_from(value.len()).unwrap_or(0).to_be_bytes());
        row_body.extend_from_slice(&value);
        let row = msg(tag::backend::DATA_ROW, &row_body);
        let first_part = 300 * 1024;
        let mut answer = msg(tag::backend::ROW_DESCRIPTION, &[0, 0]);
        answer.extend_from_slice(&row);
        answer.extend(msg(tag::backend::COMMAND_COMPLETE, b"SELECT 1\0"));
        answer.extend(msg(tag::backend::READY_FOR_QUERY, b"I"));
        let split = msg(tag::backend::ROW_DESCRIPTION, &[0, 0]).len() + first_part;
        let sent = answer.clone();
        let server = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = read_msg(&mut pg, &mut buf).await;
            pg.write_all(&sent[..split])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // The rest only once the client has seen the row begin.
            let _ = more_rx.await;
            pg.write_all(&sent[split..])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            pg
        });
        let unit = query("SELECT huge");
        let client = async move {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while got.len() < split {
                let n = app.read(&mut chunk).await.unwrap_or_else(|e| panic!("{e}"));
                assert!(n > 0, "pgsplit closed the client");
                got.extend_from_slice(&chunk[..n]);
            }
            // The server has sent no more than `split` bytes so far.
            let _ = more_tx.send(());
            while got.len() < answer.len() {
                let n = app.read(&mut chunk).await.unwrap_or_else(|e| panic!("{e}"));
                assert!(n > 0, "pgsplit closed the client");
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got == answer, "the answer arrived altered");
        };
        let (relayed, ()) = tokio::join!(relay_unit(&mut io, &mut conn, mode, &unit), client);
        let Ok(outcome) = relayed else {
            panic!("relay failed");
        };
        assert_eq!(outcome.status, TxStatus::Idle);
        assert!(outcome.sent_to_client);
        let _ = bounded("server", server).await;
    }
}
