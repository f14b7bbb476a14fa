//! Server connections passing from one client to the next: a client that only
//! read hands its connections on without `DISCARD ALL`, and nothing it set is
//! visible to the next client; a client that changed its session, or prepared
//! statements, leaves connections that are reset first.
//!
//! Every proxy here has `pool.max_size = 1`, so the second client gets the very
//! server connections the first one used.

use std::time::{Duration, Instant};

use crate::common::{Proxy, cluster, connect};
use pgsplit_cluster::{Cluster, Node};

const POOL_OF_ONE: &str = "[pool]\nmax_size = 1\n";

/// Session pooling, for a test that reads what a client's own connection ran
/// last (transaction pooling resets it between units).
const SESSION_POOL_OF_ONE: &str = "[pool]\nmode = \"session\"\nmax_size = 1\n";

/// `url` with extra libpq query parameters.
fn with_params(url: &str, params: &str) -> String {
    format!("{url}?{params}")
}

/// The last query of the server backend whose application_name is `app`, as
/// the server itself sees it (a superuser query, not through pgsplit); waits
/// for pgsplit to finish releasing the connection.
fn last_query_of(c: &Cluster, node: Node, app: &str, want: &str) -> String {
    let sql = format!(
        "SELECT coalesce(string_agg(query, ' | '), '<none>') FROM pg_stat_activity \
         WHERE application_name = '{app}' AND state = 'idle'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.psql(node, "app", &sql).unwrap();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// application_name and TimeZone as the server running `hint` + the query sees
/// them; simple protocol, so that no prepared statement is left behind.
async fn settings(client: &tokio_postgres::Client, hint: &str) -> (String, String) {
    let sql =
        format!("{hint}SELECT current_setting('application_name'), current_setting('TimeZone')");
    for message in client.simple_query(&sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let get = |i| row.get(i).unwrap_or_default().to_owned();
            return (get(0), get(1));
        }
    }
    panic!("no row from {sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_hands_its_connections_on_without_leaking_its_settings() {
    let c = cluster();
    let proxy = Proxy::start(c, POOL_OF_ONE).await;
    let url = proxy.url(c);
    let defaults = {
        let probe = connect(&url).await;
        let replica = settings(&probe, "").await;
        let primary = settings(&probe, "/* pgsplit:primary */ ").await;
        (replica, primary)
    };
    assert_ne!(
        defaults.0.1, "Asia/Tokyo",
        "pick another zone for this test"
    );

    let first = connect(&with_params(
        &url,
        "application_name=reuse-first&options=-c%20TimeZone%3DAsia/Tokyo",
    ))
    .await;
    let replica_read = "SELECT count(*) FROM pg_class WHERE relname = 'reuse-replica'";
    let primary_read =
        "/* pgsplit:primary */ SELECT count(*) FROM pg_class WHERE relname = 'reuse-primary'";
    first.simple_query(replica_read).await.unwrap();
    first.simple_query(primary_read).await.unwrap();
    assert_eq!(
        settings(&first, "").await,
        ("reuse-first".to_owned(), "Asia/Tokyo".to_owned())
    );
    drop(first);

    // Released as they were: the server still shows the first client's last
    // queries on them, not a DISCARD ALL.
    let want_replica = "SELECT current_setting('application_name'), current_setting('TimeZone')";
    assert_eq!(
        last_query_of(c, Node::Replica, "reuse-first", want_replica),
        want_replica
    );
    assert_eq!(
        last_query_of(c, Node::Primary, "reuse-first", primary_read),
        primary_read
    );

    // The next client sees the defaults on both connections, and its own
    // startup setting where it has one.
    let second = connect(&url).await;
    assert_eq!(settings(&second, "").await, defaults.0);
    assert_eq!(
        settings(&second, "/* pgsplit:primary */ ").await,
        defaults.1
    );
    drop(second);
    let third = connect(&with_params(&url, "application_name=reuse-third")).await;
    assert_eq!(settings(&third, "").await.0, "reuse-third");
    assert_eq!(
        settings(&third, "/* pgsplit:primary */ ").await.0,
        "reuse-third"
    );
    drop(third);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_changed_its_session_leaves_connections_that_are_reset() {
    let c = cluster();
    let proxy = Proxy::start(c, POOL_OF_ONE).await;
    let url = proxy.url(c);
    let first = connect(&with_params(&url, "application_name=reuse-dirty")).await;
    first
        .batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE reuse_tmp (x int)")
        .await
        .unwrap();
    first.simple_query("SELECT 1").await.unwrap();
    drop(first);

    let second = connect(&url).await;
    let work_mem: String = second
        .query_one("SELECT current_setting('work_mem')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(work_mem, "7MB");
    let tmp: Option<String> = second
        .query_one(
            "/* pgsplit:primary */ SELECT to_regclass('pg_temp.reuse_tmp')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tmp, None, "the first client's temp table is still there");
    assert_eq!(
        settings(&second, "/* pgsplit:primary */ ").await.0,
        "pgsplit",
        "application_name after DISCARD ALL is the pool's own"
    );
    drop(second);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_do_not_pass_to_the_next_client() {
    let c = cluster();
    let proxy = Proxy::start(c, POOL_OF_ONE).await;
    let url = proxy.url(c);
    // tokio-postgres names its statements s0, s1...: both clients use the same
    // names for different texts.
    let first = connect(&url).await;
    let st = first.prepare("SELECT 1::int4 + $1").await.unwrap();
    let n: i32 = first.query_one(&st, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, 2);
    drop(st);
    drop(first);
    let second = connect(&url).await;
    let st = second.prepare("SELECT 'x' || $1::text").await.unwrap();
    let s: String = second.query_one(&st, &[&"y"]).await.unwrap().get(0);
    assert_eq!(s, "xy");
    proxy.stop().await;
}

/// After an autocommit write and after a COMMIT, the last thing pgsplit ran
/// on the primary connection is the floor query it sent in the same flight
/// (schema-qualified), not a query of its own in a later round trip; a
/// ROLLBACK leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_query_rides_with_the_write() {
    let c = cluster();
    let proxy = Proxy::start(c, SESSION_POOL_OF_ONE).await;
    let url = with_params(&proxy.url(c), "application_name=floor-probe");
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS floor_probe (id int)")
        .await
        .unwrap();
    let probe = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";
    let last_query = |want: &'static str| {
        tokio::task::spawn_blocking(move || last_query_of(c, Node::Primary, "floor-probe", want))
    };
    client
        .simple_query("INSERT INTO floor_probe VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        last_query(probe).await.unwrap(),
        probe,
        "after an autocommit INSERT"
    );
    // BEGIN, the write and COMMIT as separate units, the way drivers send them.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO floor_probe VALUES (2)")
        .await
        .unwrap();
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(last_query(probe).await.unwrap(), probe, "after COMMIT");
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO floor_probe VALUES (3)")
        .await
        .unwrap();
    client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(last_query("ROLLBACK").await.unwrap(), "ROLLBACK");
    proxy.stop().await;
}

/// Transaction pooling: a write that leaves nothing behind on its connection
/// (no temp table, lock, cursor, setting) hands the connection on without
/// `DISCARD ALL`, which would cost a round trip per write. Seen from the
/// server: the connection keeps the client's application_name (carried, reset
/// by the next client) and last ran the write's floor query, not DISCARD ALL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_write_hands_its_connection_on_without_discard_all() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 1\n").await;
    let url = with_params(&proxy.url(c), "application_name=txn-write");
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS txn_write (id int)")
        .await
        .unwrap();
    client
        .simple_query("INSERT INTO txn_write VALUES (1)")
        .await
        .unwrap();
    let probe = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";
    let last =
        tokio::task::spawn_blocking(move || last_query_of(c, Node::Primary, "txn-write", probe))
            .await
            .unwrap();
    assert_eq!(last, probe);
    // And a session change still resets it before it moves on.
    client.simple_query("SET work_mem = '9MB'").await.unwrap();
    let next = connect(&proxy.url(c)).await;
    let work_mem: String = next
        .query_one(
            "/* pgsplit:primary */ SELECT current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(work_mem, "9MB");
    client.batch_execute("DROP TABLE txn_write").await.unwrap();
    proxy.stop().await;
}
