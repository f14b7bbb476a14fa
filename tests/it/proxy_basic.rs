//! The core data path through pgsplit with real clients against a real primary
//! and streaming replica: routing, transactions, extended protocol, auth.

use crate::common::{Proxy, cluster, connect, server_port};
use pgsplit_cluster::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    assert_eq!(server_port(&client).await, c.port(Node::Replica));
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS basic_rw (id int primary key, v text)")
        .await
        .unwrap();
    let n = client
        .execute(
            "INSERT INTO basic_rw VALUES (1, 'one') ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    assert!(n <= 1);
    // Writes reached the primary: the primary has the row.
    assert_eq!(
        c.psql(Node::Primary, "app", "SELECT v FROM basic_rw WHERE id = 1")
            .unwrap(),
        "one"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_28p01() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let url = format!("postgres://{}:wrong@{}/app", c.user(), proxy.addr);
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("login with a wrong password must fail");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    proxy.stop().await;
}

/// `[net]` settings reach the sockets pgsplit opens to the servers: read
/// back from a pooled connection's socket with getsockopt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_settings_are_set_on_server_sockets() {
    let c = cluster();
    let proxy = Proxy::start(
        c,
        "[net]\ntcp_keepalive_idle = \"7s\"\ntcp_keepalive_interval = \"3s\"\n\
         tcp_keepalive_count = 4\ntcp_user_timeout = \"12s\"\n",
    )
    .await;
    let target = proxy
        .ctx
        .server(proxy.ctx.configured_primary())
        .unwrap_or_else(|| panic!("primary target"));
    let login = pgsplit::backend::Login {
        user: c.user().to_owned(),
        database: pgsplit_cluster::DATABASE.to_owned(),
    };
    let conn = proxy
        .ctx
        .pools
        .checkout(&target, &login)
        .await
        .unwrap_or_else(|e| panic!("checkout: {e}"));
    let got = conn
        .tcp_settings()
        .unwrap_or_else(|| panic!("a TCP connection"))
        .unwrap_or_else(|e| panic!("getsockopt: {e}"));
    assert!(got.keepalive);
    assert_eq!(got.keepalive_idle, std::time::Duration::from_secs(7));
    assert_eq!(got.keepalive_interval, std::time::Duration::from_secs(3));
    assert_eq!(got.keepalive_count, 4);
    assert_eq!(got.user_timeout, Some(std::time::Duration::from_secs(12)));
    drop(conn);
    proxy.stop().await;
}
