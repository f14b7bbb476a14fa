//! Prepared statements under transaction pooling: each server connection
//! keeps a bounded cache of statements shared by the clients that prepare
//! the same text, under names pgsplit gives them; clients keep their own
//! names, which never reach the server.

use std::time::Duration;

use crate::common::{Proxy, cluster, connect};
use pgsplit_cluster::Node;

/// The connection's prepared statements as (name, statement text), read
/// through `client` on the primary.
async fn prepared_here(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "/* pgsplit:primary */ SELECT name, statement FROM pg_prepared_statements ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// With one server connection, a statement one client prepared is the one
/// the next client runs: prepared once, kept when the first client leaves
/// (no `DISCARD ALL`), never under a client's name; and at most
/// `prepared_statements` of them stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_statements_by_text_and_the_cache_stays_bounded() {
    let c = cluster();
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 1\nprepared_statements = 3\n",
    )
    .await;
    let url = proxy.url(c);
    let shared_text = "SELECT 41 + $1::int /* txstmt-shared */";
    {
        let a = connect(&url).await;
        a.batch_execute("SET pgsplit.route = primary")
            .await
            .unwrap();
        let s = a.prepare(shared_text).await.unwrap();
        let n: i32 = a.query_one(&s, &[&1i32]).await.unwrap().get(0);
        assert_eq!(n, 42);
    }
    let b = connect(&url).await;
    b.batch_execute("SET pgsplit.route = primary")
        .await
        .unwrap();
    let s = b.prepare(shared_text).await.unwrap();
    let n: i32 = b.query_one(&s, &[&2i32]).await.unwrap().get(0);
    assert_eq!(n, 43);
    let here = prepared_here(&b).await;
    let copies: Vec<_> = here.iter().filter(|(_, t)| t == shared_text).collect();
    assert_eq!(copies.len(), 1, "one copy for both clients: {here:?}");
    assert!(
        here.iter().all(|(name, _)| name.starts_with("pgsplit_")),
        "a client's own name reached the server: {here:?}"
    );
    // Five more texts: the connection keeps three.
    for k in 0..5i32 {
        let s = b
            .prepare(&format!("SELECT {k} + $1::int /* txstmt-more */"))
            .await
            .unwrap();
        let n: i32 = b.query_one(&s, &[&1i32]).await.unwrap().get(0);
        assert_eq!(n, k + 1);
    }
    let here = prepared_here(&b).await;
    assert!(
        !here.is_empty() && here.len() <= 3,
        "the cache holds 1 to 3 statements: {here:?}"
    );
    // The first statement was evicted; the client's handle still works.
    let n: i32 = b.query_one(&s, &[&3i32]).await.unwrap().get(0);
    assert_eq!(n, 44);
    proxy.stop().await;
}

/// Runs `tests/clients/psycopg_prepared.py` with `args`; its stdout.
async fn psycopg_script(args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/psycopg_prepared.py"
    );
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("psycopg_prepared.py did not finish within 180 s"))
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "psycopg_prepared.py {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// psycopg drops prepared statements with SQL `DEALLOCATE name` when its
/// libpq is older than 17. The statement is shared on the server under
/// another name, so pgsplit answers it; the client sees what PostgreSQL
/// shows it directly, step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_behaves_as_on_postgres() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 2\n").await;
    let direct = psycopg_script(&[&c.url(Node::Primary), "deallocate"]).await;
    let through = psycopg_script(&[&proxy.url(c), "deallocate"]).await;
    assert_eq!(
        direct, "first 42\ndeallocate DEALLOCATE\nagain 26000\nafter 1\n",
        "PostgreSQL itself"
    );
    assert_eq!(through, direct);
    proxy.stop().await;
}

/// psycopg preparing everything it runs, with a cache smaller than its
/// working set (it closes statements as it goes), many clients over three
/// connections per server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_preparing_everything_over_a_few_connections() {
    const CLIENTS: usize = 40;
    const ROUNDS: usize = 4;
    let c = cluster();
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 3\nprepared_statements = 4\ncheckout_timeout = \"30s\"\n",
    )
    .await;
    let out = psycopg_script(&[
        &proxy.url(c),
        "pool",
        &CLIENTS.to_string(),
        &ROUNDS.to_string(),
    ])
    .await;
    assert_eq!(out.trim(), format!("ok {CLIENTS} {ROUNDS}"));
    proxy.stop().await;
}
