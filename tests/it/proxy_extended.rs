//! tokio-postgres through pgsplit against the shared primary + replica: the
//! extended protocol (named, unnamed and pipelined statements), transactions,
//! session settings, pins, hints, COPY, cancel, NOTICE/NOTIFY and errors.
//!
//! Every test starts its own pgsplit and uses tables named after itself, so the
//! tests can run in parallel on the one database `app`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::common::{cluster, connect, server_port, start};
use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt, future};
use pgsplit_cluster::{Cluster, Node};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Error, NoTls, Row, SimpleQueryMessage};

/// How long a read may keep landing on the primary (lag, probes) before a test
/// decides that pgsplit does not send it to the replica.
const REPLICA_PATIENCE: Duration = Duration::from_secs(15);

fn primary(c: &Cluster) -> u16 {
    c.port(Node::Primary)
}

fn replica(c: &Cluster) -> u16 {
    c.port(Node::Replica)
}

fn sqlstate(e: &Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// The port in the last column of `row` (an `inet_server_port()`).
fn port_of(row: &Row) -> u16 {
    let port: i32 = row.get(row.len() - 1);
    u16::try_from(port).unwrap_or(0)
}

/// Waits (off the runtime's threads) until the replica has replayed everything
/// the primary has written so far.
async fn caught_up(c: &'static Cluster) {
    tokio::task::spawn_blocking(move || c.wait_caught_up())
        .await
        .expect("wait_caught_up panicked")
        .unwrap_or_else(|e| panic!("replica did not catch up: {e}"));
}

/// Runs SQL directly on the primary (not through pgsplit), then waits until the
/// replica has it too.
async fn setup(c: &'static Cluster, sql: &str) {
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("setup `{sql}`: {e}"));
    caught_up(c).await;
}

/// A direct connection to one node, bypassing pgsplit.
async fn direct(c: &Cluster, node: Node) -> Client {
    connect(&c.url(node)).await
}

/// Runs `run` until its row (whose last column is `inet_server_port()`) comes
/// from the replica, and returns that row. A healthy, idle replica should take
/// the first attempt; retries only absorb a lag spike from parallel tests.
async fn on_replica<F, Fut>(c: &Cluster, what: &str, mut run: F) -> Row
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Row, Error>>,
{
    let deadline = Instant::now() + REPLICA_PATIENCE;
    loop {
        let row = run()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e} (code {:?})", sqlstate(&e)));
        let port = port_of(&row);
        if port == replica(c) {
            return row;
        }
        assert_eq!(port, primary(c), "{what}: answered by an unknown server");
        assert!(
            Instant::now() < deadline,
            "{what}: still answered by the primary (port {port}) after {REPLICA_PATIENCE:?}; \
             the replica (port {}) never took it",
            replica(c)
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// `sql` (ending in a column `inet_server_port()`) until the replica answers.
async fn read_on_replica(c: &Cluster, client: &Client, sql: &str) -> Row {
    on_replica(c, sql, || client.query_one(sql, &[])).await
}

/// The values of every data row of a simple-query reply, as text.
fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_owned))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .collect()
}

/// Connects and forwards the connection's asynchronous messages (notices and
/// notifications) to the returned channel.
async fn connect_watching(url: &str) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match msg {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// The next notification on `rx`, skipping notices, within `wait`.
async fn next_notification(
    rx: &mut mpsc::UnboundedReceiver<AsyncMessage>,
    wait: Duration,
) -> Option<tokio_postgres::Notification> {
    let deadline = Instant::now() + wait;
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(AsyncMessage::Notification(n))) => return Some(n),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

async fn count_on_primary(c: &Cluster, sql: &str) -> i64 {
    let client = direct(c, Node::Primary).await;
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

// ----- named prepared statements -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_run_reads_on_replica_writes_on_primary() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_prepared; CREATE TABLE ext_prepared (id int PRIMARY KEY, v text)",
    )
    .await;
    let proxy = start(c, "").await;
    let mut client = connect(&proxy.url(c)).await;

    let read = client
        .prepare("SELECT $1::int + 1, inet_server_port()")
        .await
        .expect("prepare read");
    let write = client
        .prepare("INSERT INTO ext_prepared VALUES ($1, $2) RETURNING inet_server_port()")
        .await
        .expect("prepare write");

    // The first execution may wait out a lag spike; after that every execution
    // of the read must stay on the replica.
    let first = on_replica(c, "prepared read", || client.query_one(&read, &[&0i32])).await;
    assert_eq!(first.get::<_, i32>(0), 1);
    for i in 1..20i32 {
        let row = client.query_one(&read, &[&i]).await.expect("prepared read");
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(port_of(&row), replica(c), "execution {i} of the read");
    }

    for i in 0..20i32 {
        let row = client
            .query_one(&write, &[&i, &format!("v{i}")])
            .await
            .expect("prepared write");
        assert_eq!(port_of(&row), primary(c), "execution {i} of the write");
    }
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_prepared").await,
        20
    );

    // The read was prepared on the replica only; inside a transaction (on the
    // primary) pgsplit must prepare it there without the client noticing.
    let txn = client.transaction().await.expect("BEGIN");
    for i in 0..3i32 {
        let row = txn.query_one(&read, &[&i]).await.expect("read in txn");
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(
            port_of(&row),
            primary(c),
            "a transaction runs on the primary"
        );
    }
    let row = txn
        .query_one(&write, &[&100i32, &"in txn"])
        .await
        .expect("write in txn");
    assert_eq!(port_of(&row), primary(c));
    txn.commit().await.expect("COMMIT");

    // Back outside the transaction, the read returns to the replica.
    let row = on_replica(c, "prepared read after the transaction", || {
        client.query_one(&read, &[&41i32])
    })
    .await;
    assert_eq!(row.get::<_, i32>(0), 42);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_used_first_in_a_transaction_then_outside() {
    let c = cluster();
    // Transactions on the primary from their BEGIN, as this test is about.
    let proxy = start(c, "[routing]\noptimistic_transactions = false\n").await;
    let mut client = connect(&proxy.url(c)).await;
    // Prepared outside a transaction (on the replica), executed first inside one
    // (primary), then outside again (replica): each server gets it when needed.
    let stmt = client
        .prepare("SELECT $1::text || '-ok', inet_server_port()")
        .await
        .expect("prepare");
    {
        let txn = client.transaction().await.expect("BEGIN");
        let row = txn.query_one(&stmt, &[&"a"]).await.expect("in txn");
        assert_eq!(row.get::<_, String>(0), "a-ok");
        assert_eq!(port_of(&row), primary(c));
        txn.rollback().await.expect("ROLLBACK");
    }
    let row = on_replica(c, "after rollback", || client.query_one(&stmt, &[&"b"])).await;
    assert_eq!(row.get::<_, String>(0), "b-ok");
    {
        let txn = client.transaction().await.expect("BEGIN");
        let row = txn.query_one(&stmt, &[&"c"]).await.expect("in second txn");
        assert_eq!(row.get::<_, String>(0), "c-ok");
        assert_eq!(port_of(&row), primary(c));
        txn.commit().await.expect("COMMIT");
    }
    proxy.stop().await;
}

// ----- unnamed statements and simple queries -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_and_typed_statements_are_routed() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_unnamed; CREATE TABLE ext_unnamed (id int PRIMARY KEY)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    let row = on_replica(c, "query with a parameter", || {
        client.query_one("SELECT $1::text || '!', inet_server_port()", &[&"hi"])
    })
    .await;
    assert_eq!(row.get::<_, String>(0), "hi!");

    let row = on_replica(c, "query_typed read", || async {
        client
            .query_typed_one(
                "SELECT $1 + 1, inet_server_port()",
                &[(&41i32 as &(dyn ToSql + Sync), Type::INT4)],
            )
            .await
    })
    .await;
    assert_eq!(row.get::<_, i32>(0), 42);

    let row = client
        .query_typed_one(
            "INSERT INTO ext_unnamed VALUES ($1) RETURNING inet_server_port()",
            &[(&7i32 as &(dyn ToSql + Sync), Type::INT4)],
        )
        .await
        .expect("query_typed write");
    assert_eq!(port_of(&row), primary(c));
    let n = client
        .execute("INSERT INTO ext_unnamed VALUES ($1)", &[&8i32])
        .await
        .expect("execute write");
    assert_eq!(n, 1);
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_unnamed").await,
        2
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_strings_route_as_a_whole() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_simple; CREATE TABLE ext_simple (id int PRIMARY KEY)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    // All reads: the replica.
    let deadline = Instant::now() + REPLICA_PATIENCE;
    loop {
        let msgs = client
            .simple_query("SELECT 1; SELECT 2 + 2, inet_server_port()")
            .await
            .expect("two reads");
        let rows = simple_rows(&msgs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0].as_deref(), Some("1"));
        assert_eq!(rows[1][0].as_deref(), Some("4"));
        let port = rows[1][1].clone().unwrap_or_default();
        if port == replica(c).to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two reads in one string never ran on the replica"
        );
        sleep(Duration::from_millis(100)).await;
    }

    // A write first, a read after: the primary.
    let msgs = client
        .simple_query("INSERT INTO ext_simple VALUES (1); SELECT inet_server_port()")
        .await
        .expect("write then read");
    assert_eq!(simple_rows(&msgs), vec![vec![Some(primary(c).to_string())]]);

    // A read first, a write after: still the primary (a replica would refuse
    // the INSERT with 25006).
    let msgs = client
        .simple_query("SELECT inet_server_port(); INSERT INTO ext_simple VALUES (2)")
        .await
        .expect("read then write");
    assert_eq!(simple_rows(&msgs), vec![vec![Some(primary(c).to_string())]]);

    // A data-modifying CTE is a write even though it starts with WITH/SELECT.
    let msgs = client
        .simple_query(
            "WITH ins AS (INSERT INTO ext_simple VALUES (3) RETURNING id) \
             SELECT id, inet_server_port() FROM ins",
        )
        .await
        .expect("data-modifying CTE");
    assert_eq!(
        simple_rows(&msgs),
        vec![vec![Some("3".into()), Some(primary(c).to_string())]]
    );
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_simple").await,
        3
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_reads_and_volatile_functions_go_to_the_primary() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_locking; CREATE TABLE ext_locking (id int PRIMARY KEY); \
         INSERT INTO ext_locking VALUES (1); \
         DROP SEQUENCE IF EXISTS ext_locking_seq; CREATE SEQUENCE ext_locking_seq",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    // Prove the replica takes plain reads of this table first.
    read_on_replica(c, &client, "SELECT id, inet_server_port() FROM ext_locking").await;
    for sql in [
        "SELECT id, inet_server_port() FROM ext_locking FOR UPDATE",
        "SELECT id, inet_server_port() FROM ext_locking FOR SHARE",
        "SELECT random() >= 0, inet_server_port()",
        "SELECT nextval('ext_locking_seq') > 0, inet_server_port()",
        "SELECT * FROM (SELECT id FROM ext_locking FOR NO KEY UPDATE) s, \
         LATERAL (SELECT inet_server_port()) p",
    ] {
        // On the replica each of these fails (25006) or runs where it must not.
        let row = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(port_of(&row), primary(c), "{sql}");
    }
    proxy.stop().await;
}

// ----- pipelining -----

type Answer<'a> = Pin<Box<dyn Future<Output = Result<(i32, i64, u16), Error>> + Send + 'a>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_and_writes_all_answer_correctly() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_pipeline; CREATE TABLE ext_pipeline (id int PRIMARY KEY)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    // Unprepared statements: each is a Parse/Describe/Sync then Bind/Execute/Sync,
    // all in flight at once on one connection.
    let mut calls: Vec<Answer<'_>> = Vec::new();
    for i in 0..40i32 {
        let client = &client;
        if i % 2 == 0 {
            calls.push(Box::pin(async move {
                let row = client
                    .query_one("SELECT $1::int8 * 2, inet_server_port()", &[&i64::from(i)])
                    .await?;
                Ok((i, row.get::<_, i64>(0), port_of(&row)))
            }));
        } else {
            calls.push(Box::pin(async move {
                let row = client
                    .query_one(
                        "INSERT INTO ext_pipeline VALUES ($1) RETURNING id::int8, inet_server_port()",
                        &[&i],
                    )
                    .await?;
                Ok((i, row.get::<_, i64>(0), port_of(&row)))
            }));
        }
    }
    let answers = future::try_join_all(calls).await.expect("pipelined calls");
    for (i, value, port) in answers {
        if i % 2 == 0 {
            assert_eq!(value, i64::from(i) * 2, "read {i}");
            assert!(port == replica(c) || port == primary(c));
        } else {
            assert_eq!(value, i64::from(i), "write {i}");
            assert_eq!(port, primary(c), "write {i}");
        }
    }

    // Prepared statements executed concurrently: Bind/Execute/Sync only.
    let read = client
        .prepare("SELECT $1::int8 + 1000, inet_server_port()")
        .await
        .expect("prepare read");
    let write = client
        .prepare("INSERT INTO ext_pipeline VALUES ($1) RETURNING id::int8, inet_server_port()")
        .await
        .expect("prepare write");
    let mut calls: Vec<Answer<'_>> = Vec::new();
    for i in 100..140i32 {
        let (client, read, write) = (&client, &read, &write);
        calls.push(Box::pin(async move {
            let row = if i % 2 == 0 {
                client.query_one(read, &[&i64::from(i)]).await?
            } else {
                client.query_one(write, &[&i]).await?
            };
            Ok((i, row.get::<_, i64>(0), port_of(&row)))
        }));
    }
    let answers = future::try_join_all(calls)
        .await
        .expect("pipelined prepared");
    for (i, value, port) in answers {
        if i % 2 == 0 {
            assert_eq!(value, i64::from(i) + 1000, "prepared read {i}");
        } else {
            assert_eq!(value, i64::from(i), "prepared write {i}");
            assert_eq!(port, primary(c), "prepared write {i}");
        }
    }

    // query_typed sends Parse/Bind/Describe/Execute/Sync in one go.
    let typed = (0..20i32).map(|i| {
        let client = &client;
        async move {
            let row = client
                .query_typed_one(
                    "SELECT $1 * 3, inet_server_port()",
                    &[(&i as &(dyn ToSql + Sync), Type::INT4)],
                )
                .await?;
            Ok::<_, Error>((i, row.get::<_, i32>(0)))
        }
    });
    for (i, v) in future::try_join_all(typed).await.expect("typed pipeline") {
        assert_eq!(v, i * 3);
    }

    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_pipeline").await,
        40
    );
    proxy.stop().await;
}

// ----- transactions -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_sees_its_own_writes_and_rollback_discards_them() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_txn; CREATE TABLE ext_txn (id int PRIMARY KEY, v text)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .execute("INSERT INTO ext_txn VALUES (1, 'uncommitted')", &[])
        .await
        .expect("INSERT");
    let row = client
        .query_one(
            "SELECT count(*), inet_server_port() FROM ext_txn WHERE id = 1",
            &[],
        )
        .await
        .expect("SELECT in txn");
    assert_eq!(row.get::<_, i64>(0), 1, "the transaction sees its own row");
    assert_eq!(port_of(&row), primary(c));
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");

    assert_eq!(count_on_primary(c, "SELECT count(*) FROM ext_txn").await, 0);
    let row = client
        .query_one("SELECT count(*), inet_server_port() FROM ext_txn", &[])
        .await
        .expect("SELECT after rollback");
    assert_eq!(row.get::<_, i64>(0), 0);

    // A plain BEGIN holding only reads runs on the replica, whole
    // (optimistic transactions; `tests/it/optimistic.rs`).
    client.batch_execute("BEGIN").await.expect("BEGIN");
    for _ in 0..3 {
        assert_eq!(server_port(&client).await, replica(c));
    }
    client.batch_execute("COMMIT").await.expect("COMMIT");

    // START TRANSACTION, committed this time.
    client
        .batch_execute("START TRANSACTION; INSERT INTO ext_txn VALUES (2, 'committed'); COMMIT")
        .await
        .expect("committed transaction");
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_txn WHERE id = 2").await,
        1
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transaction_runs_on_the_replica() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let deadline = Instant::now() + REPLICA_PATIENCE;
    loop {
        client
            .batch_execute("BEGIN READ ONLY")
            .await
            .expect("BEGIN READ ONLY");
        let first = server_port(&client).await;
        // The whole transaction stays on one server.
        for _ in 0..3 {
            assert_eq!(server_port(&client).await, first, "a transaction moved");
        }
        let ro: String = client
            .query_one("SELECT current_setting('transaction_read_only')", &[])
            .await
            .expect("transaction_read_only")
            .get(0);
        assert_eq!(ro, "on");
        client.batch_execute("COMMIT").await.expect("COMMIT");
        if first == replica(c) {
            break;
        }
        assert_eq!(first, primary(c));
        assert!(
            Instant::now() < deadline,
            "BEGIN READ ONLY never ran on the replica"
        );
        sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_read_only_transaction_runs_on_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    for begin in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
        "BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE DEFERRABLE",
    ] {
        client
            .batch_execute(begin)
            .await
            .unwrap_or_else(|e| panic!("{begin}: {e}"));
        let row = client
            .query_one(
                "SELECT current_setting('transaction_isolation'), inet_server_port()",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("inside {begin}: {e}"));
        assert_eq!(row.get::<_, String>(0), "serializable", "{begin}");
        assert_eq!(port_of(&row), primary(c), "{begin}");
        client.batch_execute("COMMIT").await.expect("COMMIT");
    }
    proxy.stop().await;
}

// ----- session settings -----

const SETTINGS_SQL: &str = "SELECT current_setting('search_path'), \
     current_setting('application_name'), current_setting('TimeZone'), inet_server_port()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_are_replayed_on_the_replica() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    // A replica connection exists before the SETs, so replay must reach an
    // already attached connection too.
    read_on_replica(c, &client, SETTINGS_SQL).await;

    client
        .batch_execute("SET search_path = ext_schema_a, public")
        .await
        .expect("SET search_path");
    client
        .batch_execute("SET application_name = 'pgsplit_ext_test'")
        .await
        .expect("SET application_name");
    client
        .batch_execute("SET TIME ZONE 'Asia/Tokyo'")
        .await
        .expect("SET TIME ZONE");

    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(row.get::<_, String>(0), "ext_schema_a, public");
    assert_eq!(row.get::<_, String>(1), "pgsplit_ext_test");
    assert_eq!(row.get::<_, String>(2), "Asia/Tokyo");

    // The same through the extended protocol's SET (Parse/Bind/Execute).
    client
        .execute("SET statement_timeout = '54321ms'", &[])
        .await
        .expect("extended SET");
    let row = read_on_replica(
        c,
        &client,
        "SELECT current_setting('statement_timeout'), inet_server_port()",
    )
    .await;
    assert_eq!(row.get::<_, String>(0), "54321ms");

    // SHOW goes to the primary and agrees.
    let shown = client.simple_query("SHOW search_path").await.expect("SHOW");
    assert_eq!(
        simple_rows(&shown),
        vec![vec![Some("ext_schema_a, public".into())]]
    );

    // A fresh client of the same pgsplit does not inherit them.
    let other = connect(&proxy.url(c)).await;
    let row = read_on_replica(c, &other, SETTINGS_SQL).await;
    assert_ne!(row.get::<_, String>(0), "ext_schema_a, public");
    assert_ne!(row.get::<_, String>(1), "pgsplit_ext_test");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_does_not_leak_out_of_its_transaction() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let before = read_on_replica(c, &client, SETTINGS_SQL).await;
    let default_path: String = before.get(0);

    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .batch_execute("SET LOCAL search_path = ext_local_only")
        .await
        .expect("SET LOCAL");
    let inside: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .expect("inside")
        .get(0);
    assert_eq!(inside, "ext_local_only");
    client.batch_execute("COMMIT").await.expect("COMMIT");

    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(row.get::<_, String>(0), default_path, "replica");
    let shown = client.simple_query("SHOW search_path").await.expect("SHOW");
    assert_eq!(simple_rows(&shown), vec![vec![Some(default_path.clone())]]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_in_a_rolled_back_transaction_does_not_leak() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let before = read_on_replica(c, &client, SETTINGS_SQL).await;
    let app_name: String = before.get(1);

    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .batch_execute("SET application_name = 'ext_rolled_back'")
        .await
        .expect("SET in txn");
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");

    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(row.get::<_, String>(1), app_name, "replica");
    let shown = client
        .simple_query("SHOW application_name")
        .await
        .expect("SHOW");
    assert_eq!(simple_rows(&shown), vec![vec![Some(app_name.clone())]]);

    // One that is committed does reach the replica.
    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .batch_execute("SET application_name = 'ext_committed'")
        .await
        .expect("SET in txn");
    client.batch_execute("COMMIT").await.expect("COMMIT");
    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(row.get::<_, String>(1), "ext_committed");

    // Sent as one string, pgsplit may keep the session on the primary instead
    // of replaying; wherever the next read runs, it must see the new value.
    client
        .batch_execute("BEGIN; SET application_name = 'ext_in_one_string'; COMMIT")
        .await
        .expect("SET in a one-string transaction");
    let row = client
        .query_one(SETTINGS_SQL, &[])
        .await
        .expect("read after the one-string transaction");
    assert_eq!(row.get::<_, String>(1), "ext_in_one_string");
    client
        .batch_execute("BEGIN; SET application_name = 'ext_gone_again'; ROLLBACK")
        .await
        .expect("SET in a one-string rolled-back transaction");
    let row = client
        .query_one(SETTINGS_SQL, &[])
        .await
        .expect("read after the one-string rollback");
    assert_eq!(row.get::<_, String>(1), "ext_in_one_string");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_takes_effect_on_the_replica() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let sql = "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
               inet_server_port()";
    let before = read_on_replica(c, &client, sql).await;
    let (path0, timeout0): (String, String) = (before.get(0), before.get(1));

    client
        .batch_execute("SET search_path = ext_reset_schema")
        .await
        .expect("SET");
    client
        .batch_execute("SET statement_timeout = '98765ms'")
        .await
        .expect("SET");
    let row = read_on_replica(c, &client, sql).await;
    assert_eq!(row.get::<_, String>(0), "ext_reset_schema");
    assert_eq!(row.get::<_, String>(1), "98765ms");

    client.batch_execute("RESET ALL").await.expect("RESET ALL");
    let row = read_on_replica(c, &client, sql).await;
    assert_eq!(row.get::<_, String>(0), path0);
    assert_eq!(row.get::<_, String>(1), timeout0);

    // RESET of a single setting, too.
    client
        .batch_execute("SET statement_timeout = '11111ms'")
        .await
        .expect("SET");
    client
        .batch_execute("RESET statement_timeout")
        .await
        .expect("RESET");
    let row = read_on_replica(c, &client, sql).await;
    assert_eq!(row.get::<_, String>(1), timeout0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_restores_startup_parameters_like_postgres_does() {
    // Against PostgreSQL itself, RESET ALL returns a setting given in the
    // startup packet to that value, not to the server default.
    let c = cluster();
    let proxy = start(c, "").await;
    let url = format!("{}?application_name=ext_startup_app", proxy.url(c));
    let client = connect(&url).await;
    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(
        row.get::<_, String>(1),
        "ext_startup_app",
        "startup value on the replica"
    );

    client
        .batch_execute("SET application_name = 'ext_changed'")
        .await
        .expect("SET");
    client.batch_execute("RESET ALL").await.expect("RESET ALL");
    let shown = client
        .simple_query("SHOW application_name")
        .await
        .expect("SHOW");
    assert_eq!(
        simple_rows(&shown),
        vec![vec![Some("ext_startup_app".into())]],
        "primary after RESET ALL"
    );
    let row = read_on_replica(c, &client, SETTINGS_SQL).await;
    assert_eq!(
        row.get::<_, String>(1),
        "ext_startup_app",
        "replica after RESET ALL"
    );
    proxy.stop().await;
}

// ----- pins -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_the_session_to_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;

    client
        .batch_execute("CREATE TEMP TABLE ext_tmp (i int); INSERT INTO ext_tmp VALUES (1), (2)")
        .await
        .expect("temp table");
    for _ in 0..5 {
        let row = client
            .query_one("SELECT sum(i)::int, inet_server_port() FROM ext_tmp", &[])
            .await
            .expect("reading the temp table");
        assert_eq!(row.get::<_, i32>(0), 3);
        assert_eq!(port_of(&row), primary(c));
        assert_eq!(
            server_port(&client).await,
            primary(c),
            "pinned after CREATE TEMP"
        );
    }

    // Another client of the same pgsplit is not pinned.
    let other = connect(&proxy.url(c)).await;
    read_on_replica(c, &other, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_session_to_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client
        .batch_execute("LISTEN ext_pin_chan")
        .await
        .expect("LISTEN");
    for _ in 0..5 {
        assert_eq!(
            server_port(&client).await,
            primary(c),
            "pinned after LISTEN"
        );
    }
    let other = connect(&proxy.url(c)).await;
    read_on_replica(c, &other, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_lock_pins_the_session_to_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    let row = client
        .query_one("SELECT pg_advisory_lock(7654321), inet_server_port()", &[])
        .await
        .expect("pg_advisory_lock");
    assert_eq!(port_of(&row), primary(c));
    for _ in 0..5 {
        assert_eq!(
            server_port(&client).await,
            primary(c),
            "pinned after the lock"
        );
    }
    let unlocked: bool = client
        .query_one("SELECT pg_advisory_unlock(7654321)", &[])
        .await
        .expect("unlock")
        .get(0);
    assert!(unlocked, "the unlock ran where the lock is held");
    let other = connect(&proxy.url(c)).await;
    read_on_replica(c, &other, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cursor_pins_the_session_to_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client
        .batch_execute(
            "DECLARE ext_hold CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g",
        )
        .await
        .expect("DECLARE WITH HOLD");
    let rows = client
        .simple_query("FETCH 2 FROM ext_hold")
        .await
        .expect("FETCH");
    assert_eq!(
        simple_rows(&rows),
        vec![vec![Some("1".into())], vec![Some("2".into())]]
    );
    assert_eq!(server_port(&client).await, primary(c));
    let rows = client
        .simple_query("FETCH ALL FROM ext_hold")
        .await
        .expect("FETCH ALL");
    assert_eq!(simple_rows(&rows).len(), 3);
    client.batch_execute("CLOSE ext_hold").await.expect("CLOSE");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_default_pins_the_session_to_the_primary() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client
        .batch_execute("SET default_transaction_isolation = serializable")
        .await
        .expect("SET default_transaction_isolation");
    for _ in 0..3 {
        // On the hot standby this would fail: serializable is not allowed there.
        let row = client
            .query_one(
                "SELECT current_setting('transaction_isolation'), inet_server_port()",
                &[],
            )
            .await
            .expect("read under serializable default");
        assert_eq!(row.get::<_, String>(0), "serializable");
        assert_eq!(port_of(&row), primary(c));
    }
    proxy.stop().await;
}

// ----- hints -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_hints_choose_the_server_for_one_statement() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_hint; CREATE TABLE ext_hint (id int PRIMARY KEY)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;

    for _ in 0..3 {
        let row = client
            .query_one("/* pgsplit:primary */ SELECT inet_server_port()", &[])
            .await
            .expect("primary hint");
        assert_eq!(port_of(&row), primary(c), "extended");
        let msgs = client
            .simple_query("/* pgsplit:primary */ SELECT inet_server_port()")
            .await
            .expect("primary hint, simple");
        assert_eq!(simple_rows(&msgs), vec![vec![Some(primary(c).to_string())]]);
    }
    // The hint held for that statement only.
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    read_on_replica(
        c,
        &client,
        "/* pgsplit:replica */ SELECT inet_server_port()",
    )
    .await;

    // A replica hint never sends a write to the replica.
    let row = client
        .query_one(
            "/* pgsplit:replica */ INSERT INTO ext_hint VALUES (1) RETURNING inet_server_port()",
            &[],
        )
        .await
        .expect("write with a replica hint");
    assert_eq!(port_of(&row), primary(c));
    client
        .batch_execute("/* pgsplit:replica */ INSERT INTO ext_hint VALUES (2)")
        .await
        .expect("simple write with a replica hint");
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_hint").await,
        2
    );
    proxy.stop().await;
}

/// `SET pgsplit.route = <value>` through `client`, then `check`s where reads go,
/// then back to auto.
async fn route_round_trip(c: &Cluster, client: &Client, primary_value: &str) {
    read_on_replica(c, client, "SELECT inet_server_port()").await;
    let set = format!("SET pgsplit.route = {primary_value}");
    client
        .batch_execute(&set)
        .await
        .unwrap_or_else(|e| panic!("`{set}`: {e}"));
    for _ in 0..5 {
        assert_eq!(server_port(client).await, primary(c), "after `{set}`");
        let msgs = client
            .simple_query("SELECT inet_server_port()")
            .await
            .expect("simple read");
        assert_eq!(
            simple_rows(&msgs),
            vec![vec![Some(primary(c).to_string())]],
            "after `{set}`"
        );
    }
    client
        .batch_execute("SET pgsplit.route = auto")
        .await
        .expect("SET pgsplit.route = auto");
    read_on_replica(c, client, "SELECT inet_server_port()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsplit_route_primary_then_auto() {
    // DESIGN.md spells it `SET pgsplit.route = primary`; PRIMARY is a reserved
    // word to PostgreSQL, so pgsplit must take this statement itself.
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    route_round_trip(c, &client, "primary").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsplit_route_quoted_and_reset() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    route_round_trip(c, &client, "'primary'").await;
    client
        .batch_execute("SET pgsplit.route TO 'primary'")
        .await
        .expect("SET ... TO 'primary'");
    assert_eq!(server_port(&client).await, primary(c));
    client
        .batch_execute("RESET pgsplit.route")
        .await
        .expect("RESET pgsplit.route");
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsplit_route_in_a_rolled_back_transaction_does_not_stick() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .batch_execute("SET pgsplit.route = 'primary'")
        .await
        .expect("SET in txn");
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    // PostgreSQL undoes a SET when its transaction rolls back.
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_option_route_primary_pins_the_connection() {
    let c = cluster();
    let proxy = start(c, "").await;
    let url = format!("{}?options=-c%20pgsplit.route%3Dprimary", proxy.url(c));
    let client = connect(&url).await;
    for _ in 0..5 {
        assert_eq!(server_port(&client).await, primary(c));
        let msgs = client
            .simple_query("SELECT inet_server_port()")
            .await
            .expect("simple read");
        assert_eq!(simple_rows(&msgs), vec![vec![Some(primary(c).to_string())]]);
    }
    // Other settings in `options` still apply, and a plain client is unaffected.
    let url = format!(
        "{}?options=-c%20pgsplit.route%3Dprimary%20-c%20search_path%3Dext_opt_schema",
        proxy.url(c)
    );
    let client = connect(&url).await;
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), inet_server_port()",
            &[],
        )
        .await
        .expect("read");
    assert_eq!(row.get::<_, String>(0), "ext_opt_schema");
    assert_eq!(port_of(&row), primary(c));
    let plain = connect(&proxy.url(c)).await;
    read_on_replica(c, &plain, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

// ----- COPY -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_then_copy_out_round_trips() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_copy; CREATE TABLE ext_copy (id int PRIMARY KEY, v text)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    const ROWS: i32 = 5000;
    let expected: Vec<String> = (0..ROWS).map(|i| format!("{i}\tvalue ü {i}")).collect();
    let sink = client
        .copy_in("COPY ext_copy (id, v) FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    let mut sink = Box::pin(sink);
    for chunk in expected.chunks(700) {
        let mut data = chunk.join("\n");
        data.push('\n');
        sink.send(Bytes::from(data)).await.expect("CopyData");
    }
    let copied = sink.as_mut().finish().await.expect("CopyDone");
    assert_eq!(copied, u64::try_from(ROWS).unwrap_or(0));
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_copy").await,
        i64::from(ROWS)
    );

    // Read back through pgsplit (a replica may serve it once it has the rows).
    let stream = client
        .copy_out("COPY ext_copy TO STDOUT")
        .await
        .expect("COPY TO STDOUT");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("copy out data");
    let text = String::from_utf8(chunks.concat()).expect("utf-8");
    let mut got: Vec<&str> = text.lines().collect();
    got.sort_by_key(|l| l.split('\t').next().and_then(|n| n.parse::<i32>().ok()));
    assert_eq!(got.len(), expected.len(), "rows copied out");
    assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>());

    // The session carries on.
    assert!(
        [primary(c), replica(c)].contains(&server_port(&client).await),
        "session after COPY"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_query_to_stdout() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    for _ in 0..3 {
        let stream = client
            .copy_out("COPY (SELECT g, g * g FROM generate_series(1, 2000) g) TO STDOUT")
            .await
            .expect("COPY (query) TO STDOUT");
        let chunks: Vec<Bytes> = stream.try_collect().await.expect("copy data");
        let text = String::from_utf8(chunks.concat()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        assert_eq!(lines[0], "1\t1");
        assert_eq!(lines[1999], "2000\t4000000");
    }
    // With options, CSV format.
    let stream = client
        .copy_out("COPY (SELECT 'x' || g FROM generate_series(1, 3) g) TO STDOUT WITH (FORMAT csv)")
        .await
        .expect("csv copy");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("copy data");
    assert_eq!(chunks.concat(), b"x1\nx2\nx3\n");
    assert!([primary(c), replica(c)].contains(&server_port(&client).await));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_with_bad_data_fails_and_the_session_continues() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_copy_bad; CREATE TABLE ext_copy_bad (id int)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;

    // The client ends the COPY with CopyDone after the server has already
    // reported the bad row: PostgreSQL ignores the late CopyDone and answers
    // at the Sync. The pause makes the error arrive first every time.
    let sink = client
        .copy_in("COPY ext_copy_bad FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    let mut sink = Box::pin(sink);
    let sent = sink.send(Bytes::from_static(b"1\nnot a number\n3\n")).await;
    sleep(Duration::from_millis(500)).await;
    let err = match sent {
        Err(e) => e,
        Ok(()) => sink
            .as_mut()
            .finish()
            .await
            .expect_err("bad COPY data must fail"),
    };
    assert_eq!(sqlstate(&err), Some("22P02"), "{err}");
    assert!(
        [primary(c), replica(c)].contains(&server_port(&client).await),
        "session after a late CopyDone"
    );

    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_copy_bad").await,
        0
    );
    let n = client
        .execute("INSERT INTO ext_copy_bad VALUES (9)", &[])
        .await
        .expect("write after a failed COPY");
    assert_eq!(n, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_aborted_by_copy_fail_after_an_error_and_the_session_continues() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_copy_fail; CREATE TABLE ext_copy_fail (id int)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    // tokio-postgres sends CopyFail (then Sync) when the sink is dropped
    // unfinished; here the server has already rejected the data by then.
    let sink = client
        .copy_in("COPY ext_copy_fail FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    let mut sink = Box::pin(sink);
    let _ = sink.send(Bytes::from_static(b"x\n")).await;
    sleep(Duration::from_millis(500)).await;
    drop(sink);
    assert!(
        [primary(c), replica(c)].contains(&server_port(&client).await),
        "session after a late CopyFail"
    );
    // And CopyFail while the COPY is still healthy: the server aborts it.
    let sink = client
        .copy_in("COPY ext_copy_fail FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(b"1\n2\n"))
        .await
        .expect("good rows");
    drop(sink);
    assert!(
        [primary(c), replica(c)].contains(&server_port(&client).await),
        "session after CopyFail"
    );
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_copy_fail").await,
        0
    );
    proxy.stop().await;
}

// ----- cancel -----

/// Where a statement whose text contains `marker` is running, if anywhere.
async fn running_on(c: &Cluster, marker: &str) -> Option<Node> {
    for node in [Node::Replica, Node::Primary] {
        let client = direct(c, node).await;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                &[&marker],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n > 0 {
            return Some(node);
        }
    }
    None
}

async fn wait_running(c: &Cluster, marker: &str) -> Node {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(node) = running_on(c, marker).await {
            return node;
        }
        assert!(Instant::now() < deadline, "`{marker}` never started");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_read_on_the_replica() {
    let c = cluster();
    // pg_sleep is volatile, so a statement calling it is a write unless the
    // configuration declares it safe for replicas.
    let proxy = start(c, "[routing]\nreplica_safe_functions = [\"pg_sleep\"]\n").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        client
            .query("SELECT pg_sleep(30) AS ext_cancel_replica_marker", &[])
            .await
            .map(|_| ())
    });
    let node = wait_running(c, "ext_cancel_replica_marker").await;
    assert_eq!(node, Node::Replica, "the read should run on the replica");
    token.cancel_query(NoTls).await.expect("cancel request");
    let result = timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancelled read did not return within 10 s")
        .expect("task");
    let err = result.expect_err("a cancelled statement fails");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_statement_in_a_primary_transaction() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = std::sync::Arc::new(connect(&proxy.url(c)).await);
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let token = client.cancel_token();
    let sleeper = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query("SELECT pg_sleep(30) AS ext_cancel_primary_marker", &[])
                .await
                .map(|_| ())
        })
    };
    let node = wait_running(c, "ext_cancel_primary_marker").await;
    assert_eq!(node, Node::Primary, "inside a transaction: the primary");
    token.cancel_query(NoTls).await.expect("cancel request");
    let result = timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancelled statement did not return within 10 s")
        .expect("task");
    let err = result.expect_err("a cancelled statement fails");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // The transaction is aborted; ROLLBACK ends it and the session goes on.
    let err = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("an aborted transaction refuses statements");
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert!([primary(c), replica(c)].contains(&server_port(&client).await));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_nothing_running_is_harmless() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    sleep(Duration::from_millis(300)).await;
    let row = client
        .query_one("SELECT 5", &[])
        .await
        .expect("after cancel");
    assert_eq!(row.get::<_, i32>(0), 5);
    proxy.stop().await;
}

// ----- NOTICE and NOTIFY -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_pass_through() {
    let c = cluster();
    let proxy = start(c, "").await;
    let (client, mut rx) = connect_watching(&proxy.url(c)).await;
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hi from ext'; END $$")
        .await
        .expect("DO");
    client
        .execute("DO $$ BEGIN RAISE WARNING 'careful, ext'; END $$", &[])
        .await
        .expect("DO, extended");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => {
                seen.push((n.severity().to_owned(), n.message().to_owned()))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            ("NOTICE".to_owned(), "hi from ext".to_owned()),
            ("WARNING".to_owned(), "careful, ext".to_owned())
        ]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_reaches_an_idle_listener() {
    // PostgreSQL sends NotificationResponse to an idle listener right away;
    // listeners (e.g. asyncpg's add_listener) sit idle waiting for them.
    let c = cluster();
    let proxy = start(c, "").await;
    let (listener, mut rx) = connect_watching(&proxy.url(c)).await;
    listener
        .batch_execute("LISTEN ext_idle_chan")
        .await
        .expect("LISTEN");
    let notifier = connect(&proxy.url(c)).await;
    notifier
        .batch_execute("NOTIFY ext_idle_chan, 'idle payload'")
        .await
        .expect("NOTIFY");
    let n = next_notification(&mut rx, Duration::from_secs(5))
        .await
        .expect("no notification reached the idle listener within 5 s");
    assert_eq!(n.channel(), "ext_idle_chan");
    assert_eq!(n.payload(), "idle payload");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_is_delivered_by_the_next_statement() {
    let c = cluster();
    let proxy = start(c, "").await;
    let (listener, mut rx) = connect_watching(&proxy.url(c)).await;
    listener
        .batch_execute("LISTEN ext_busy_chan")
        .await
        .expect("LISTEN");
    let notifier = connect(&proxy.url(c)).await;
    notifier
        .query_one("SELECT pg_notify('ext_busy_chan', 'via pg_notify')", &[])
        .await
        .expect("pg_notify");
    // Give the server time to queue it, then make the listener talk.
    sleep(Duration::from_millis(300)).await;
    listener.batch_execute("SELECT 1").await.expect("SELECT");
    let n = next_notification(&mut rx, Duration::from_secs(5))
        .await
        .expect("no notification after the listener's next statement");
    assert_eq!(n.channel(), "ext_busy_chan");
    assert_eq!(n.payload(), "via pg_notify");
    proxy.stop().await;
}

// ----- errors -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_are_42601_and_the_session_continues() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    for sql in ["SELEC 1", "SELECT FROM WHERE", "SELECT (1"] {
        let err = client
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("`{sql}` must fail"));
        assert_eq!(sqlstate(&err), Some("42601"), "simple `{sql}`: {err}");
        let err = client
            .query(sql, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("`{sql}` must fail"));
        assert_eq!(sqlstate(&err), Some("42601"), "extended `{sql}`: {err}");
        let row = client.query_one("SELECT 7", &[]).await.expect("after");
        assert_eq!(row.get::<_, i32>(0), 7);
    }
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_inside_a_transaction_then_rollback() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let err = client
        .query("SELECT 1 / 0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err), Some("22012"), "{err}");
    let err = client
        .query("SELECT 1", &[])
        .await
        .expect_err("aborted transaction");
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    let row = client
        .query_one("SELECT 1", &[])
        .await
        .expect("after ROLLBACK");
    assert_eq!(row.get::<_, i32>(0), 1);

    // The same with the simple protocol, and a COMMIT of the failed transaction
    // (PostgreSQL answers ROLLBACK).
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let err = client
        .batch_execute("SELECT * FROM ext_no_such_table_in_txn")
        .await
        .expect_err("missing table");
    assert_eq!(sqlstate(&err), Some("42P01"), "{err}");
    client
        .batch_execute("COMMIT")
        .await
        .expect("COMMIT of a failed transaction");
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_is_42p01() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    for _ in 0..2 {
        let err = client
            .query("SELECT * FROM ext_table_that_does_not_exist", &[])
            .await
            .expect_err("missing table");
        assert_eq!(sqlstate(&err), Some("42P01"), "{err}");
        let err = client
            .batch_execute("INSERT INTO ext_table_that_does_not_exist VALUES (1)")
            .await
            .expect_err("missing table");
        assert_eq!(sqlstate(&err), Some("42P01"), "{err}");
    }
    assert!([primary(c), replica(c)].contains(&server_port(&client).await));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_data_round_trips() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_unicode; CREATE TABLE ext_unicode (id int PRIMARY KEY, v text)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let samples = [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🎉🐘",
        "Ελληνικά и кириллица",
        "quote ' and backslash \\",
    ];
    for (i, s) in samples.iter().enumerate() {
        let id = i32::try_from(i).unwrap_or(0);
        client
            .execute("INSERT INTO ext_unicode VALUES ($1, $2)", &[&id, s])
            .await
            .expect("insert with a parameter");
    }
    client
        .batch_execute("INSERT INTO ext_unicode VALUES (100, 'literal: ñandú ☃')")
        .await
        .expect("insert with a literal");
    caught_up(c).await;
    for (i, s) in samples.iter().enumerate() {
        let id = i32::try_from(i).unwrap_or(0);
        let row = on_replica(c, "unicode read", || async {
            client
                .query_one(
                    "SELECT v, inet_server_port() FROM ext_unicode WHERE id = $1",
                    &[&id],
                )
                .await
        })
        .await;
        assert_eq!(row.get::<_, String>(0), *s);
    }
    let row = read_on_replica(
        c,
        &client,
        "SELECT v, inet_server_port() FROM ext_unicode WHERE id = 100",
    )
    .await;
    assert_eq!(row.get::<_, String>(0), "literal: ñandú ☃");
    // Non-ASCII in the statement text itself, both protocols.
    let row = read_on_replica(
        c,
        &client,
        "SELECT 'ünïcödé ✓' AS \"列\", inet_server_port()",
    )
    .await;
    assert_eq!(row.get::<_, String>(0), "ünïcödé ✓");
    let msgs = client
        .simple_query("SELECT 'ünïcödé ✓' AS \"列\"")
        .await
        .expect("simple");
    assert_eq!(simple_rows(&msgs), vec![vec![Some("ünïcödé ✓".into())]]);
    proxy.stop().await;
}

// ----- read-your-writes (DESIGN.md §3, default scope `pod`) -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_write_see_it_on_any_client_of_the_same_pgsplit() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_ryw; CREATE TABLE ext_ryw (id int PRIMARY KEY, v int)",
    )
    .await;
    let proxy = start(c, "").await;
    let writer = connect(&proxy.url(c)).await;
    let reader = connect(&proxy.url(c)).await;
    read_on_replica(c, &reader, "SELECT inet_server_port()").await;
    for i in 0..30i32 {
        writer
            .execute("INSERT INTO ext_ryw VALUES ($1, $1)", &[&i])
            .await
            .expect("insert");
        let own: i64 = writer
            .query_one("SELECT count(*) FROM ext_ryw WHERE id = $1", &[&i])
            .await
            .expect("read on the writer")
            .get(0);
        assert_eq!(own, 1, "the writer did not see its own row {i}");
        let other: i64 = reader
            .query_one("SELECT count(*) FROM ext_ryw WHERE id = $1", &[&i])
            .await
            .expect("read on another client")
            .get(0);
        assert_eq!(
            other, 1,
            "another client of this pgsplit did not see row {i}"
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_write_nothing_do_not_keep_reads_off_the_replica() {
    // After a WAL segment switch an idle primary's insert position sits just
    // past a page header, a position no replica reports as replayed until the
    // primary writes again. SHOW, or the Close tokio-postgres sends after each
    // unprepared query, writes nothing and must not leave such a floor.
    let c = cluster();
    let proxy = start(c, "").await;
    tokio::task::spawn_blocking(move || c.psql(Node::Primary, "app", "SELECT pg_switch_wal()"))
        .await
        .expect("spawn_blocking")
        .expect("pg_switch_wal");
    caught_up(c).await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    client.simple_query("SHOW search_path").await.expect("SHOW");
    for i in 0..10 {
        assert_eq!(server_port(&client).await, replica(c), "read {i}");
    }
    // A second client of the same pgsplit is not held back either.
    let other = connect(&proxy.url(c)).await;
    for i in 0..5 {
        assert_eq!(
            server_port(&other).await,
            replica(c),
            "other client, read {i}"
        );
    }
    proxy.stop().await;
}

// ----- more of the routing contract -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_look_like_reads_but_write_go_to_the_primary() {
    let c = cluster();
    setup(
        c,
        "DROP TABLE IF EXISTS ext_select_into; DROP TABLE IF EXISTS ext_explain; \
         CREATE TABLE ext_explain (id int)",
    )
    .await;
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    read_on_replica(c, &client, "SELECT inet_server_port()").await;
    // Each of these fails with 25006 on a hot standby.
    client
        .batch_execute("SELECT 1 AS x INTO ext_select_into")
        .await
        .expect("SELECT INTO");
    client
        .batch_execute("EXPLAIN ANALYZE INSERT INTO ext_explain VALUES (1)")
        .await
        .expect("EXPLAIN ANALYZE of an INSERT");
    client
        .batch_execute("PREPARE ext_sql_prep AS SELECT inet_server_port()")
        .await
        .expect("SQL PREPARE");
    let msgs = client
        .simple_query("EXECUTE ext_sql_prep")
        .await
        .expect("SQL EXECUTE");
    assert_eq!(simple_rows(&msgs), vec![vec![Some(primary(c).to_string())]]);
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_select_into").await,
        1
    );
    assert_eq!(
        count_on_primary(c, "SELECT count(*) FROM ext_explain").await,
        1
    );
    // EXPLAIN without ANALYZE of a read is a read, and works wherever it runs.
    let msgs = client
        .simple_query("EXPLAIN SELECT * FROM ext_explain")
        .await
        .expect("EXPLAIN");
    assert!(!simple_rows(&msgs).is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_drops_prepared_statements_on_every_server() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let stmt = client
        .prepare("SELECT 'before', inet_server_port()")
        .await
        .expect("prepare");
    on_replica(c, "prepared read", || client.query_one(&stmt, &[])).await;
    client
        .batch_execute("DISCARD ALL")
        .await
        .expect("DISCARD ALL");
    // As on a single PostgreSQL: the statement is gone.
    let err = client
        .query_one(&stmt, &[])
        .await
        .expect_err("a discarded statement cannot run");
    assert_eq!(sqlstate(&err), Some("26000"), "{err}");
    // Preparing again works, on the replica too.
    let again = client
        .prepare("SELECT 'after', inet_server_port()")
        .await
        .expect("prepare again");
    let row = on_replica(c, "re-prepared read", || client.query_one(&again, &[])).await;
    assert_eq!(row.get::<_, String>(0), "after");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_large_statements_pass_through() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    // About 20 MB of rows.
    let rows = client
        .query(
            "SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .expect("large result");
    assert_eq!(rows.len(), 20_000);
    assert!(rows.iter().all(|r| r.get::<_, String>(1).len() == 1000));
    assert_eq!(rows[19_999].get::<_, i32>(0), 20_000);
    let msgs = client
        .simple_query("SELECT repeat('y', 5000000)")
        .await
        .expect("one 5 MB value");
    assert_eq!(
        simple_rows(&msgs)[0][0].as_ref().map(String::len),
        Some(5_000_000)
    );

    // A 3 MB parameter: the unit is larger than pgsplit buffers before its Sync.
    let big = "z".repeat(3 << 20);
    let row = client
        .query_typed_one(
            "SELECT length($1), inet_server_port()",
            &[(&big as &(dyn ToSql + Sync), Type::TEXT)],
        )
        .await
        .expect("large parameter");
    assert_eq!(row.get::<_, i32>(0), 3 << 20);
    // A 2 MB statement text, simple protocol.
    let sql = format!("SELECT length('{}')", "w".repeat(2 << 20));
    let msgs = client.simple_query(&sql).await.expect("large statement");
    assert_eq!(simple_rows(&msgs), vec![vec![Some((2 << 20).to_string())]]);
    assert!(server_port(&client).await > 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_comment_only_queries() {
    let c = cluster();
    let proxy = start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    for sql in ["", ";", "  ", "-- nothing here", "/* nor here */"] {
        let msgs = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert!(simple_rows(&msgs).is_empty(), "{sql:?}");
    }
    let row = client.query_one("SELECT 3", &[]).await.expect("after");
    assert_eq!(row.get::<_, i32>(0), 3);
    proxy.stop().await;
}
