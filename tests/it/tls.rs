//! TLS on both sides against real servers (issue 3): clients to pgsplit under
//! `[tls] mode = "require" | "allow"`, direct TLS, client certificates, certificate
//! reload; pgsplit to the servers under libpq `sslmode` semantics.
//!
//! The tests of this module share one primary + replica started with `ssl = on` and a
//! server certificate from a test CA made here. That certificate names `127.0.0.1`
//! (IP SAN) and `db.example`, not `localhost`: a server URL with host `localhost`
//! fails `verify-full` while `127.0.0.1` passes.

mod copy_soak;
mod libpq_compat;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::tls::{ClientTls, Leaf, TestCa, TlsDir, Usage, read_message, startup_packet};
use crate::common::{Proxy, server_port};
use pgsplit::backend::health::{PrimaryState, Role};
use pgsplit_cluster::{Cluster, ClusterOptions, Node};
use tokio::io::AsyncWriteExt;

/// The TLS-enabled cluster and the certificates around it.
struct Tls {
    cluster: Cluster,
    ca: TestCa,
    dir: TlsDir,
    /// The test CA, as PEM file.
    ca_file: PathBuf,
    /// pgsplit's client-facing certificate: `localhost` and `127.0.0.1`.
    proxy_cert: PathBuf,
    proxy_key: PathBuf,
    /// A client certificate pgsplit presents to the servers (`sslcert`/`sslkey`).
    server_client_cert: PathBuf,
    server_client_key: PathBuf,
}

/// The shared TLS cluster; its failure to start is remembered and reported by
/// every test.
fn tls_blocking() -> &'static Tls {
    static TLS: OnceLock<Result<Tls, String>> = OnceLock::new();
    match TLS.get_or_init(start_tls_cluster) {
        Ok(t) => t,
        Err(e) => panic!("could not start the TLS test cluster: {e}"),
    }
}

fn start_tls_cluster() -> Result<Tls, String> {
    let ca = TestCa::new("pgsplit test CA");
    let dir = TlsDir::new();
    let ca_file = dir.write_cert("ca.crt", &ca.cert_pem);
    let server = ca.leaf("postgres", &["127.0.0.1", "db.example"], Usage::Server);
    let server_cert = dir.write_cert("server.crt", &server.cert_pem);
    let server_key = dir.write_server_key("server.key", &server.key_pem);
    let proxy = ca.leaf("pgsplit", &["localhost", "127.0.0.1"], Usage::Server);
    let proxy_cert = dir.write_cert("pgsplit.crt", &proxy.cert_pem);
    let proxy_key = dir.write_key("pgsplit.key", &proxy.key_pem);
    let client = ca.leaf("pgsplit-to-server", &[], Usage::Client);
    let server_client_cert = dir.write_cert("pgsplit-client.crt", &client.cert_pem);
    let server_client_key = dir.write_key("pgsplit-client.key", &client.key_pem);
    let opts = ClusterOptions {
        extra_conf: vec![
            "ssl = on".to_owned(),
            format!("ssl_cert_file = '{}'", server_cert.display()),
            format!("ssl_key_file = '{}'", server_key.display()),
            // Makes the servers ask for (not require) a client certificate, so the
            // one pgsplit sends shows in pg_stat_ssl.client_dn.
            format!("ssl_ca_file = '{}'", ca_file.display()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(opts).map_err(|e| e.to_string())?;
    Ok(Tls {
        cluster,
        ca,
        dir,
        ca_file,
        proxy_cert,
        proxy_key,
        server_client_cert,
        server_client_key,
    })
}

/// Starts (or gets) the shared cluster without blocking the runtime.
async fn tls_cluster() -> &'static Tls {
    tokio::task::spawn_blocking(tls_blocking)
        .await
        .unwrap_or_else(|e| panic!("TLS cluster start panicked: {e}"))
}

/// The cluster's URL for `node` with `host` instead of 127.0.0.1 and `params`
/// as query string.
fn server_url(c: &Cluster, node: Node, host: &str, params: &str) -> String {
    let url = c.url(node).replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    if params.is_empty() {
        url
    } else {
        format!("{url}?{params}")
    }
}

fn verify_full(t: &Tls) -> String {
    format!("sslmode=verify-full&sslrootcert={}", t.ca_file.display())
}

/// A whole pgsplit config: the given server URLs and `tail` (a `[tls]` section...).
fn config_text(primary: &str, replica: &str, tail: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nprimary = \"{primary}\"\nreplicas = [\"{replica}\"]\n{tail}"
    )
}

/// The `[tls]` section with pgsplit's certificate and `mode`.
fn tls_section(t: &Tls, mode: &str) -> String {
    format!(
        "[tls]\nmode = \"{mode}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        t.proxy_cert.display(),
        t.proxy_key.display()
    )
}

/// pgsplit in front of the TLS cluster, verifying both servers (`verify-full`),
/// with the given `[tls]` section; returns once the replica takes reads.
async fn proxy_verified(t: &Tls, tls_tail: &str) -> Proxy {
    let c = &t.cluster;
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &verify_full(t)),
        &server_url(c, Node::Replica, "127.0.0.1", &verify_full(t)),
        tls_tail,
    );
    Proxy::start_with(&text, None, true).await
}

/// A libpq URL to pgsplit through `host` (which must resolve to 127.0.0.1).
fn proxy_url(proxy: &Proxy, c: &Cluster, host: &str, sslmode: &str) -> String {
    proxy
        .url(c)
        .replacen("@127.0.0.1:", &format!("@{host}:"), 1)
        + &format!("?sslmode={sslmode}")
}

fn client_tls(t: &Tls) -> ClientTls {
    ClientTls::new(&t.ca.der, None, false)
}

/// Waits until `cond` holds on the health snapshot, or panics with `what`.
async fn wait_health(
    proxy: &Proxy,
    what: &str,
    cond: impl Fn(&pgsplit::backend::health::HealthSnapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snap = proxy.ctx.health.get();
        if cond(&snap) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client verifying pgsplit's certificate like `sslmode=verify-full` (CA and host
/// name, by DNS name and by IP address) logs in with SCRAM, and pgsplit logs in to
/// both servers with SCRAM over verified TLS: reads reach the replica, writes the
/// primary, and each hop is encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_client_logs_in_over_tls_on_both_sides() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "require")).await;
    let tls = client_tls(t);
    for host in ["localhost", "127.0.0.1"] {
        let client = tls
            .connect(&proxy_url(&proxy, c, host, "require"))
            .await
            .unwrap_or_else(|e| panic!("TLS login through {host}: {e}"));
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        // The first pass writes; with read_your_writes = "pod" the second pass
        // reads on the replica once pgsplit has seen it replay that write.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server_port(&client).await != c.port(Node::Replica) {
            assert!(
                Instant::now() < deadline,
                "reads never reached the replica through {host}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The server connection that answered is itself encrypted.
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "pgsplit -> replica connection is not TLS");
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tls_rw (id int PRIMARY KEY, v text);
                 INSERT INTO tls_rw VALUES (1, 'over tls') ON CONFLICT (id) DO NOTHING",
            )
            .await
            .unwrap();
        // A write runs on the primary, over an encrypted connection too.
        let row = client
            .query_one(
                "WITH w AS (INSERT INTO tls_rw VALUES (2, 'w') \
                   ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING 1) \
                 SELECT inet_server_port(), \
                   (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) FROM w",
                &[],
            )
            .await
            .unwrap();
        let port: i32 = row.get(0);
        let ssl: bool = row.get(1);
        assert_eq!(port, i32::from(c.port(Node::Primary)));
        assert!(ssl, "pgsplit -> primary connection is not TLS");
    }
    // The client saw pgsplit's certificate (twice), not a server's.
    assert_eq!(tls.seen.count(), 2);
    let primary = tokio::task::spawn_blocking(|| {
        tls_blocking()
            .cluster
            .psql(Node::Primary, "app", "SELECT v FROM tls_rw WHERE id = 1")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(primary, "over tls");
    proxy.stop().await;
}

/// Under `require` a plaintext client is refused with 28000 before authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_is_refused_under_require() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "require")).await;
    let err = tokio_postgres::connect(
        &proxy_url(&proxy, c, "127.0.0.1", "disable"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a plaintext client must be refused under require");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("TLS is required"),
        "unclear message: {err:?}"
    );
    // A wrong password changes nothing: the refusal comes before authentication.
    let url = format!(
        "postgres://{}:wrong@{}/app?sslmode=disable",
        c.user(),
        proxy.addr
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    proxy.stop().await;
}

/// Under `allow`, TLS and plaintext clients both log in; a `prefer` client gets TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_takes_tls_and_plaintext_clients() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "allow")).await;
    let tls = client_tls(t);
    let secure = tls
        .connect(&proxy_url(&proxy, c, "localhost", "require"))
        .await
        .expect("TLS client under allow");
    assert_eq!(tls.seen.count(), 1, "no TLS handshake happened");
    let plain = common::connect(&proxy_url(&proxy, c, "127.0.0.1", "disable")).await;
    for client in [&secure, &plain] {
        let v: String = client
            .query_one("SELECT 'ok'::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "ok");
    }
    let preferring = tls
        .connect(&proxy_url(&proxy, c, "localhost", "prefer"))
        .await
        .expect("prefer client under allow");
    assert_eq!(tls.seen.count(), 2, "a prefer client was not upgraded");
    preferring.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

/// pgsplit's server connections (pool and health monitor) are encrypted on both
/// servers, and carry the client certificate given by `sslcert`/`sslkey`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_encrypted_in_pg_stat_ssl() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let app = "pgsplit_tls_encrypted";
    let params = format!(
        "{}&sslcert={}&sslkey={}&application_name={app}",
        verify_full(t),
        t.server_client_cert.display(),
        t.server_client_key.display()
    );
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &params),
        &server_url(c, Node::Replica, "127.0.0.1", &params),
        "",
    );
    let proxy = Proxy::start_with(&text, None, true).await;
    let client = common::connect(&proxy.url(c)).await;
    // A read (replica) and a transaction (primary) open pooled connections.
    assert_eq!(server_port(&client).await, c.port(Node::Replica));
    client
        .batch_execute("BEGIN; SELECT txid_current(); COMMIT")
        .await
        .unwrap();
    let sql = format!(
        "SELECT a.application_name, s.ssl, coalesce(s.client_dn, '') \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = '{app}'"
    );
    for node in [Node::Primary, Node::Replica] {
        let sql = sql.clone();
        let rows = tokio::task::spawn_blocking(move || {
            tls_blocking().cluster.psql(node, "postgres", &sql)
        })
        .await
        .unwrap()
        .unwrap();
        let rows: Vec<&str> = rows.lines().collect();
        assert!(!rows.is_empty(), "no pgsplit connection on the {node}");
        for row in &rows {
            let fields: Vec<&str> = row.split('|').collect();
            assert_eq!(
                fields.get(1),
                Some(&"t"),
                "unencrypted on the {node}: {row}"
            );
            assert!(
                fields
                    .get(2)
                    .is_some_and(|dn| dn.contains("pgsplit-to-server")),
                "no client certificate on the {node}: {row}"
            );
        }
    }
    proxy.stop().await;
}

/// A replica whose certificate does not name the host pgsplit connects to is never
/// used under `verify-full`: reads fall back to the primary, writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_with_a_certificate_for_another_name_is_not_used() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &verify_full(t)),
        // The certificate names 127.0.0.1 and db.example, not localhost.
        &server_url(c, Node::Replica, "localhost", &verify_full(t)),
        "",
    );
    let proxy = Proxy::start_with(&text, None, false).await;
    let primary_name = format!("127.0.0.1:{}", c.port(Node::Primary));
    let replica_name = format!("localhost:{}", c.port(Node::Replica));
    wait_health(&proxy, "the primary to be known", |s| {
        let primary = s.servers.iter().find(|h| h.name == primary_name);
        matches!(s.primary, PrimaryState::Known(id) if primary.is_some_and(|p| p.id == id))
    })
    .await;
    let client = common::connect(&proxy.url(c)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let snap = proxy.ctx.health.get();
        let replica = snap
            .servers
            .iter()
            .find(|h| h.name == replica_name)
            .expect("replica in the health snapshot");
        assert!(!replica.usable, "replica became usable: {replica:?}");
        assert_ne!(replica.role, Role::Replica, "{replica:?}");
        assert_eq!(server_port(&client).await, c.port(Node::Primary));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tls_fallback (id int); INSERT INTO tls_fallback VALUES (1)",
        )
        .await
        .expect("writes work");
    proxy.stop().await;
}

/// `verify-ca` checks the chain only: the same replica under a host name its
/// certificate does not carry is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_ignores_the_host_name() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let ca = format!("sslmode=verify-ca&sslrootcert={}", t.ca_file.display());
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &verify_full(t)),
        &server_url(c, Node::Replica, "localhost", &ca),
        "",
    );
    let proxy = Proxy::start_with(&text, None, true).await;
    let client = common::connect(&proxy.url(c)).await;
    assert_eq!(server_port(&client).await, c.port(Node::Replica));
    proxy.stop().await;
}

/// `verify-ca` against a root that did not sign the server certificate: the server
/// is not used (here the primary: queries fail with a clear error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_with_a_foreign_root_is_refused() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let other = TestCa::new("some other CA");
    let other_file = t.dir.write_cert("other-ca.crt", &other.cert_pem);
    let params = format!("sslmode=verify-ca&sslrootcert={}", other_file.display());
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &params),
        &server_url(c, Node::Replica, "127.0.0.1", &params),
        SHORT_PRIMARY_WAIT,
    );
    let proxy = Proxy::start_with(&text, None, false).await;
    expect_servers_refused(&proxy, c).await;
    proxy.stop().await;
}

/// Logins wait for a primary this long (not the default 5 s) in the refusal tests.
const SHORT_PRIMARY_WAIT: &str = "[routing]\nprimary_wait = \"300ms\"\n";

/// No server passes the TLS checks: a client gets a clear error (at login, which
/// waits for a primary, or at its first query) and the health monitor uses no server.
async fn expect_servers_refused(proxy: &Proxy, c: &Cluster) {
    // Give the health monitor a few rounds.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let err = match tokio_postgres::connect(&proxy.url(c), tokio_postgres::NoTls).await {
        Err(e) => e,
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
                .simple_query("SELECT 1")
                .await
                .expect_err("a query must fail when no server passes the TLS checks")
        }
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err:?}"));
    assert!(
        db.code().code().starts_with("57") || db.code().code().starts_with("08"),
        "{db:?}"
    );
    assert!(db.message().contains("primary"), "unclear message: {db:?}");
    let snap = proxy.ctx.health.get();
    assert!(
        snap.servers
            .iter()
            .all(|s| !s.usable && s.role == Role::Down),
        "{snap:?}"
    );
    assert!(!matches!(snap.primary, PrimaryState::Known(_)), "{snap:?}");
}

/// `sslmode=require` to servers running without TLS: refused, never downgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused() {
    let c = tokio::task::spawn_blocking(common::cluster).await.unwrap();
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", "sslmode=require"),
        &server_url(c, Node::Replica, "127.0.0.1", "sslmode=require"),
        SHORT_PRIMARY_WAIT,
    );
    let proxy = Proxy::start_with(&text, None, false).await;
    expect_servers_refused(&proxy, c).await;
    proxy.stop().await;
}

/// `sslmode=prefer` (the default) to servers without TLS falls back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_against_a_server_without_tls_falls_back() {
    let c = tokio::task::spawn_blocking(common::cluster).await.unwrap();
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", "sslmode=prefer"),
        &server_url(c, Node::Replica, "127.0.0.1", "sslmode=prefer"),
        "",
    );
    let proxy = Proxy::start_with(&text, None, true).await;
    let client = common::connect(&proxy.url(c)).await;
    assert_eq!(server_port(&client).await, c.port(Node::Replica));
    proxy.stop().await;
}

/// Writes `leaf` as `cert_name`/`key_name` in the test's directory.
fn install(dir: &TlsDir, leaf: &Leaf, cert_name: &str, key_name: &str) -> (PathBuf, PathBuf) {
    (
        dir.write_cert(cert_name, &leaf.cert_pem),
        dir.write_key(key_name, &leaf.key_pem),
    )
}

/// The certificate a new SSLRequest handshake to pgsplit is shown.
async fn presented_cert(
    proxy: &Proxy,
    tls: &ClientTls,
) -> rustls::pki_types::CertificateDer<'static> {
    let stream = tls
        .ssl_request(proxy.addr, "localhost")
        .await
        .expect("TLS handshake with pgsplit");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// A reload swaps the client-facing certificate for new handshakes; connections
/// opened before keep working; a broken new file keeps the previous certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_the_client_facing_certificate() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let dir = TlsDir::new();
    let first =
        t.ca.leaf("pgsplit-first", &["localhost", "127.0.0.1"], Usage::Server);
    let (cert, key) = install(&dir, &first, "cert.pem", "key.pem");
    let config_file = dir.path().join("pgsplit.toml");
    let text_for = |cert: &std::path::Path| {
        config_text(
            &server_url(c, Node::Primary, "127.0.0.1", &verify_full(t)),
            &server_url(c, Node::Replica, "127.0.0.1", &verify_full(t)),
            &format!(
                "[tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
    };
    let text = text_for(&cert);
    std::fs::write(&config_file, &text).unwrap();
    let proxy = Proxy::start_with(&text, Some(config_file.clone()), true).await;
    let tls = client_tls(t);
    let before = tls
        .connect(&proxy_url(&proxy, c, "localhost", "require"))
        .await
        .expect("TLS login with the first certificate");
    assert_eq!(tls.seen.last().as_ref(), Some(&first.der));

    // Rotate in place: same paths, new certificate and key.
    let second =
        t.ca.leaf("pgsplit-second", &["localhost", "127.0.0.1"], Usage::Server);
    install(&dir, &second, "cert.pem", "key.pem");
    proxy
        .control
        .send(pgsplit::app::Control::Reload)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if presented_cert(&proxy, &tls).await == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still see the first certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = tls
        .connect(&proxy_url(&proxy, c, "localhost", "require"))
        .await
        .expect("TLS login with the second certificate");
    assert_eq!(tls.seen.last().as_ref(), Some(&second.der));
    after.simple_query("SELECT 1").await.unwrap();
    // SCRAM-SHA-256-PLUS binds to the certificate now presented: libpq
    // hashes the second certificate, and so does pgsplit.
    let bound = format!(
        "{}?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        proxy.url(c),
        t.ca_file.display()
    );
    let (_, got) = common::libpq::attempt_all(&[("after reload".to_owned(), bound)]).await;
    assert!(
        got[0].connected(),
        "SCRAM-PLUS after a reload: {}",
        got[0].message
    );
    // The connection opened before the reload is still up.
    let v: i32 = before.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);

    // A broken certificate file: the reload keeps the second certificate.
    let broken = dir.write_cert("broken.pem", "-----BEGIN CERTIFICATE-----\ngarbage\n");
    std::fs::write(&config_file, text_for(&broken)).unwrap();
    let config_before = proxy.ctx.config();
    proxy
        .control
        .send(pgsplit::app::Control::Reload)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Every processed reload installs a new config (keeping the running TLS
    // section when the new files are broken).
    while std::sync::Arc::ptr_eq(&proxy.ctx.config(), &config_before) {
        assert!(Instant::now() < deadline, "the reload was not processed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(presented_cert(&proxy, &tls).await, second.der);
    let still = tls
        .connect(&proxy_url(&proxy, c, "localhost", "require"))
        .await
        .expect("TLS login after a broken reload");
    still.simple_query("SELECT 1").await.unwrap();
    before.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

/// PostgreSQL 17 direct TLS: a ClientHello first, with ALPN `postgresql`, then the
/// StartupMessage inside TLS. Without ALPN pgsplit hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let proxy = proxy_verified(t, &tls_section(t, "require")).await;

    let with_alpn = ClientTls::new(&t.ca.der, None, true);
    let mut stream = with_alpn
        .direct(proxy.addr, "localhost")
        .await
        .expect("direct TLS handshake with ALPN");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(common::tls::ALPN_POSTGRESQL)
    );
    stream
        .write_all(&startup_packet(c.user(), "app"))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let (tag, body) = read_message(&mut stream)
        .await
        .unwrap()
        .expect("an authentication request");
    assert_eq!(tag, b'R', "body {body:?}");
    assert_eq!(&body[..4], &10i32.to_be_bytes(), "not AuthenticationSASL");
    assert!(
        body.windows(13).any(|w| w == b"SCRAM-SHA-256"),
        "mechanisms: {body:?}"
    );

    let without_alpn = ClientTls::new(&t.ca.der, None, false);
    match without_alpn.direct(proxy.addr, "localhost").await {
        Err(_) => {}
        Ok(mut stream) => {
            // TLS 1.3: the client finishes first; pgsplit then checks ALPN and hangs up.
            let _ = stream.write_all(&startup_packet(c.user(), "app")).await;
            let _ = stream.flush().await;
            let answer = tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream))
                .await
                .expect("pgsplit neither answered nor closed");
            assert!(
                matches!(answer, Ok(None) | Err(_)),
                "direct TLS without ALPN was served: {answer:?}"
            );
        }
    }
    proxy.stop().await;
}

/// With `client_ca`, a client must present a certificate that CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_requires_a_client_certificate() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let tail = format!(
        "{}client_ca = \"{}\"\n",
        tls_section(t, "require"),
        t.ca_file.display()
    );
    let proxy = proxy_verified(t, &tail).await;
    let url = proxy_url(&proxy, c, "localhost", "require");

    let anonymous = client_tls(t);
    let err = anonymous
        .connect(&url)
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "not refused for its missing certificate: {err:?}"
    );

    let stranger_ca = TestCa::new("untrusted client CA");
    let stranger = stranger_ca.leaf("stranger", &[], Usage::Client);
    let err = ClientTls::new(&t.ca.der, Some(&stranger), false)
        .connect(&url)
        .await
        .expect_err("a client certificate from another CA must be refused");
    assert!(
        format!("{err:?}").contains("UnknownCA"),
        "not refused for its unknown issuer: {err:?}"
    );

    let member = t.ca.leaf("app-client", &[], Usage::Client);
    let client = ClientTls::new(&t.ca.der, Some(&member), false)
        .connect(&url)
        .await
        .expect("a client certificate signed by client_ca");
    let v: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, c.user());
    proxy.stop().await;
}

/// Log lines written on this thread (a current-thread runtime keeps pgsplit's
/// tasks on it), at INFO and above: what an operator sees by default.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 3: a server failing verification "is not used, and the reason is logged".
/// The health monitor logs each new probe failure once, with its cause.
#[tokio::test]
async fn tls_verification_failure_is_logged_with_its_reason() {
    let t = tls_cluster().await;
    let c = &t.cluster;
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let text = config_text(
        &server_url(c, Node::Primary, "127.0.0.1", &verify_full(t)),
        &server_url(c, Node::Replica, "localhost", &verify_full(t)),
        "",
    );
    let proxy = Proxy::start_with(&text, None, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.stop().await;
    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let replica = format!("localhost:{}", c.port(Node::Replica));
    assert!(
        text.lines()
            .any(|l| l.contains(&replica) && l.to_lowercase().contains("certificate")),
        "no log line says why {replica} is not used:\n{text}"
    );
}
