//! libpq 18 connection options through pgsplit with `[tls] mode = "require"`
//! against PostgreSQL with `ssl = on`, and SCRAM-SHA-256-PLUS across a relay
//! that terminates TLS (the man in the middle channel binding stops).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Tls, client_tls, proxy_verified, tls_cluster, tls_section};
use crate::common::libpq::{attempt_all, compare, option_rows};
use crate::common::tls::{Usage, ssl_request_packet};
use pgsplit_cluster::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_options_behave_as_against_postgres_under_tls_require() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "require")).await;
    let ca = t.ca_file.display().to_string();
    let mut rows: Vec<(&str, String)> = option_rows()
        .into_iter()
        .map(|(n, o)| {
            let o = if o.is_empty() {
                "sslmode=require".to_owned()
            } else {
                format!("sslmode=require&{o}")
            };
            (n, o)
        })
        .collect();
    rows.push(("sslmode=prefer", "sslmode=prefer".to_owned()));
    rows.push((
        "sslmode=verify-ca",
        format!("sslmode=verify-ca&sslrootcert={ca}"),
    ));
    rows.push((
        "sslmode=verify-full",
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    rows.push((
        "verify-full + channel_binding=require",
        format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
    ));
    rows.push((
        "sslrootcert=system",
        "sslmode=verify-full&sslrootcert=system".to_owned(),
    ));
    let through = compare(
        "TLS required",
        &c.url(Node::Primary),
        &proxy.url(c),
        "",
        &rows,
    )
    .await;
    let by_name = |name: &str| {
        rows.iter()
            .position(|(n, _)| *n == name)
            .map(|i| &through[i])
            .unwrap_or_else(|| panic!("row {name}"))
    };
    // pgsplit terminates the protocol: a client asking for 3.2 gets 3.2.
    assert_eq!(by_name("protocol 3.2").protocol, 30_002);
    assert_eq!(by_name("protocol latest").protocol, 30_002);
    assert_eq!(by_name("defaults").protocol, 30_000);
    assert!(by_name("channel_binding=require").connected());

    // What PostgreSQL 15 cannot do and pgsplit can: direct TLS (PostgreSQL
    // 17) and a floor of protocol 3.2 (PostgreSQL 18).
    let newer = [
        (
            "sslnegotiation=direct",
            "sslmode=require&sslnegotiation=direct",
        ),
        (
            "min_protocol_version=3.2",
            "sslmode=require&min_protocol_version=3.2",
        ),
    ];
    let mut cases = Vec::new();
    for (name, o) in newer {
        cases.push((
            format!("direct {name}"),
            format!("{}?{o}", c.url(Node::Primary)),
        ));
        cases.push((format!("pgsplit {name}"), format!("{}?{o}", proxy.url(c))));
    }
    let (_, got) = attempt_all(&cases).await;
    for (i, (name, _)) in newer.iter().enumerate() {
        println!(
            "  {name:40} direct (PostgreSQL 15): {:28} pgsplit: {}",
            got[2 * i].kind(),
            got[2 * i + 1].kind()
        );
        assert!(
            !got[2 * i].connected(),
            "{name}: PostgreSQL 15 accepted it?"
        );
        assert!(
            got[2 * i + 1].connected(),
            "{name}: {}",
            got[2 * i + 1].message
        );
    }
    proxy.stop().await;
}

/// A relay that terminates the client's TLS with a certificate of its own
/// (here even one the client trusts) and opens its own TLS to pgsplit. Without
/// channel binding it can pass the SCRAM exchange through; with
/// `channel_binding=require` the client binds to the relay's certificate,
/// pgsplit to its own, and the proof fails.
async fn tls_relay(t: &'static Tls, target: SocketAddr) -> SocketAddr {
    let leaf =
        t.ca.leaf("relay", &["127.0.0.1", "localhost"], Usage::Server);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("{e}"))
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], leaf.key())
    .unwrap_or_else(|e| panic!("{e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let upstream_tls = client_tls(t);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream_tls = upstream_tls.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if tcp.read_exact(&mut request).await.is_err() || request != ssl_request_packet() {
                    return;
                }
                if tcp.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut server) = upstream_tls.ssl_request(target, "localhost").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    // The relay speaks to clients on a port of its own.
    let _ = TcpStream::connect(addr).await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_through_a_tls_terminating_relay_fails() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "require")).await;
    let relay = tls_relay(t, proxy.addr).await;
    let ca = t.ca_file.display();
    let through_relay = proxy
        .url(c)
        .replacen(&proxy.addr.to_string(), &relay.to_string(), 1);
    let verify = format!("sslmode=verify-full&sslrootcert={ca}");
    let cases = vec![
        (
            "direct, channel_binding=require".to_owned(),
            format!("{}?{verify}&channel_binding=require", proxy.url(c)),
        ),
        (
            "relay, channel_binding=disable".to_owned(),
            format!("{through_relay}?{verify}&channel_binding=disable"),
        ),
        (
            "relay, channel_binding=require".to_owned(),
            format!("{through_relay}?{verify}&channel_binding=require"),
        ),
    ];
    let (_, got) = attempt_all(&cases).await;
    for ((name, _), a) in cases.iter().zip(&got) {
        println!("  {name:36} {} {}", a.kind(), a.message);
    }
    assert!(got[0].connected(), "direct SCRAM-PLUS: {}", got[0].message);
    assert!(
        got[1].connected(),
        "the relay itself works without binding: {}",
        got[1].message
    );
    assert!(
        !got[2].connected(),
        "SCRAM-PLUS succeeded through a TLS relay"
    );
    assert_eq!(
        got[2].outcome, "server",
        "refused by pgsplit: {}",
        got[2].message
    );
    assert!(
        got[2]
            .message
            .contains("channel binding data does not match"),
        "refused as a binding mismatch: {}",
        got[2].message
    );
    proxy.stop().await;
}

/// pgsplit's own logins to the servers: `channel_binding=require` in a server
/// URL logs in with SCRAM-SHA-256-PLUS over TLS, and is refused (never
/// downgraded) where the channel is not TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_toward_the_servers() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let bound = format!("{}&channel_binding=require", super::verify_full(t));
    let text = super::config_text(
        &super::server_url(c, Node::Primary, "127.0.0.1", &bound),
        &super::server_url(c, Node::Replica, "127.0.0.1", &bound),
        "",
    );
    let proxy = crate::common::Proxy::start_with(&text, None, true).await;
    let client = crate::common::connect(&proxy.url(c)).await;
    let port: i32 = client
        .query_one("/* pgsplit:primary */ SELECT inet_server_port()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(port, i32::from(c.port(Node::Primary)));
    proxy.stop().await;

    let plain = "sslmode=disable&channel_binding=require";
    let text = super::config_text(
        &super::server_url(c, Node::Primary, "127.0.0.1", plain),
        &super::server_url(c, Node::Replica, "127.0.0.1", plain),
        super::SHORT_PRIMARY_WAIT,
    );
    let proxy = crate::common::Proxy::start_with(&text, None, false).await;
    super::expect_servers_refused(&proxy, c).await;
    proxy.stop().await;
}
