//! Optimistic transactions (README, "Transactions that start with reads"): a
//! transaction begun without READ ONLY starts where its first statement
//! goes; reads run on the replica, and a write moves the transaction to the
//! primary by replaying them there and checking they answer the same.

use std::time::Duration;

use pgsplit_cluster::{Cluster, Node};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::own::{blocking, poll_until};
use crate::common::replay::replay_cluster;
use crate::common::{Proxy, cluster, connect, server_port};

/// The value of `pgsplit_transactions_total{outcome}`.
fn outcome(proxy: &Proxy, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    proxy
        .ctx
        .metrics
        .counters()
        .into_iter()
        .find(|(name, labels, _)| name == "pgsplit_transactions_total" && *labels == label)
        .map_or(0.0, |(_, _, v)| v)
}

/// Asserts that `pgsplit_transactions_total{outcome}` reaches `want`: a
/// transaction's end is counted once its last reply has gone out, so the
/// client may look first.
async fn expect_outcome(proxy: &Proxy, name: &str, want: f64) {
    let reached = poll_until(Duration::from_secs(5), || async {
        outcome(proxy, name) == want
    })
    .await;
    assert!(
        reached.is_some(),
        "pgsplit_transactions_total{{outcome=\"{name}\"}} is {}, not {want}",
        outcome(proxy, name)
    );
}

/// The first column of the first row of a simple query.
async fn first(client: &Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Waits until a transaction's first read goes to the replica again: the
/// client's writes through pgsplit keep reads on the primary until the
/// replica has them (read-your-writes).
async fn replica_has_our_writes(client: &Client, replica: u16) {
    let back = poll_until(Duration::from_secs(10), || async {
        client.batch_execute("BEGIN").await.unwrap();
        let port = server_port(client).await;
        client.batch_execute("ROLLBACK").await.unwrap();
        port == replica
    })
    .await;
    assert!(back.is_some(), "reads never returned to the replica");
}

async fn setup_table(c: &Cluster, table: &str) {
    let primary = connect(&c.url(Node::Primary)).await;
    primary
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int primary key, v int); \
             INSERT INTO {table} VALUES (1, 100)"
        ))
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.wait_caught_up()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_reads_runs_on_the_replica() {
    let c = cluster();
    setup_table(c, "opt_ro").await;
    let proxy = Proxy::start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let replica = c.port(Node::Replica).to_string();
    for (begin, end) in [
        ("BEGIN", "COMMIT"),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "ROLLBACK",
        ),
        ("begin isolation level read committed", "END"),
    ] {
        client.batch_execute(begin).await.unwrap();
        assert_eq!(
            first(&client, "SELECT inet_server_port()").await,
            replica,
            "{begin}"
        );
        assert_eq!(
            first(&client, "SELECT v FROM opt_ro WHERE id = 1").await,
            "100"
        );
        // Savepoints stay on the replica too.
        client.batch_execute("SAVEPOINT s").await.unwrap();
        assert_eq!(first(&client, "SELECT inet_server_port()").await, replica);
        client.batch_execute("RELEASE SAVEPOINT s").await.unwrap();
        client.batch_execute(end).await.unwrap();
    }
    expect_outcome(&proxy, "read_only_on_replica", 3.0).await;
    assert_eq!(outcome(&proxy, "replayed_match"), 0.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_then_write_transaction_commits_on_the_primary() {
    let c = cluster();
    setup_table(c, "opt_rw").await;
    let proxy = Proxy::start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    client.batch_execute("BEGIN").await.unwrap();
    let v: i32 = first(&client, "SELECT v FROM opt_rw WHERE id = 1")
        .await
        .parse()
        .unwrap();
    assert_eq!(v, 100);
    client
        .batch_execute(&format!("UPDATE opt_rw SET v = {} WHERE id = 1", v + 1))
        .await
        .unwrap();
    // After the write, the transaction is on the primary and sees it.
    assert_eq!(server_port(&client).await, primary);
    assert_eq!(
        first(&client, "SELECT v FROM opt_rw WHERE id = 1").await,
        "101"
    );
    client.batch_execute("COMMIT").await.unwrap();
    let direct = connect(&c.url(Node::Primary)).await;
    assert_eq!(
        first(&direct, "SELECT v FROM opt_rw WHERE id = 1").await,
        "101"
    );
    assert_eq!(outcome(&proxy, "replayed_match"), 1.0);

    // A transaction whose first statement writes begins on the primary.
    client
        .batch_execute("BEGIN; UPDATE opt_rw SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("COMMIT").await.unwrap();
    expect_outcome(&proxy, "started_on_primary", 0.0).await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("UPDATE opt_rw SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("COMMIT").await.unwrap();
    expect_outcome(&proxy, "started_on_primary", 1.0).await;
    assert_eq!(
        first(&direct, "SELECT v FROM opt_rw WHERE id = 1").await,
        "103"
    );

    // A read of when and where (the replica's port, its clock) is not
    // verified: its columns would differ on the primary whatever the data.
    replica_has_our_writes(&client, replica).await;
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&client, "SELECT inet_server_port()").await,
        replica.to_string()
    );
    client
        .simple_query("SELECT now(), v, pg_backend_pid() FROM opt_rw WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO opt_rw VALUES (2, 2)")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        first(&direct, "SELECT v FROM opt_rw WHERE id = 2").await,
        "2"
    );
    assert_eq!(outcome(&proxy, "replayed_match"), 2.0);
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 0.0);

    // Turned off, a transaction runs on the primary from its BEGIN.
    proxy.stop().await;
    let proxy = Proxy::start(c, "[routing]\noptimistic_transactions = false\n").await;
    let client = connect(&proxy.url(c)).await;
    assert_eq!(server_port(&client).await, replica);
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("ROLLBACK").await.unwrap();
    proxy.stop().await;
}

/// The stale case: the replica has not replayed a change the primary
/// committed. A transaction that reads the old value there and writes from
/// it gets 40001 and writes nothing; its retry starts on the primary and
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_computed_from_a_stale_read_is_refused_with_40001() {
    let (c, _turn) = replay_cluster().await;
    setup_table(&c, "opt_stale").await;
    // Generous lag limits: the paused replica stays in use.
    let proxy = Proxy::start(&c, "[routing]\nmax_lag = \"1h\"\nmax_lag_bytes = \"1GB\"\n").await;
    let client = connect(&proxy.url(&c)).await;
    blocking(&c, |c| c.pause_replay()).await.unwrap();
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute("UPDATE opt_stale SET v = 200 WHERE id = 1")
        .await
        .unwrap();

    client.batch_execute("BEGIN").await.unwrap();
    let v: i32 = first(&client, "SELECT v FROM opt_stale WHERE id = 1")
        .await
        .parse()
        .unwrap();
    assert_eq!(v, 100, "the replica's stale value");
    let err = client
        .batch_execute(&format!("UPDATE opt_stale SET v = {} WHERE id = 1", v + 1))
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "40001", "{db:?}");
    assert!(db.message().contains("answers differently"), "{db:?}");
    // The transaction is failed, as after any 40001, until it rolls back.
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("25P02"));
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        first(&direct, "SELECT v FROM opt_stale WHERE id = 1").await,
        "200"
    );
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 1.0);

    // The retry starts on the primary: it reads 200 and writes 201.
    client.batch_execute("BEGIN").await.unwrap();
    let v: i32 = first(&client, "SELECT v FROM opt_stale WHERE id = 1")
        .await
        .parse()
        .unwrap();
    assert_eq!(v, 200);
    client
        .batch_execute(&format!("UPDATE opt_stale SET v = {} WHERE id = 1", v + 1))
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        first(&direct, "SELECT v FROM opt_stale WHERE id = 1").await,
        "201"
    );
    // A shape that keeps mismatching is remembered: after three, such
    // transactions begin on the primary. (A new pgsplit: this one's
    // read-your-writes floor keeps reads off the paused replica.)
    proxy.stop().await;
    let proxy = Proxy::start(&c, "[routing]\nmax_lag = \"1h\"\nmax_lag_bytes = \"1GB\"\n").await;
    let client = connect(&proxy.url(&c)).await;
    for round in 1..=3 {
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            first(&client, "SELECT v FROM opt_stale WHERE id = 1").await,
            "100",
            "round {round}: the stale replica"
        );
        let err = client
            .batch_execute("UPDATE opt_stale SET v = 0 WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("40001"));
        client.batch_execute("ROLLBACK").await.unwrap();
        // The session's next transaction starts on the primary anyway.
        client.batch_execute("BEGIN; ROLLBACK").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 3.0);
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_stale WHERE id = 1").await,
        "201",
        "the remembered shape reads on the primary"
    );
    assert_eq!(server_port(&client).await, c.port(Node::Primary));
    client.batch_execute("ROLLBACK").await.unwrap();
    // Another shape is optimistic as ever.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(server_port(&client).await, c.port(Node::Replica));
    client.batch_execute("ROLLBACK").await.unwrap();

    // The one after that is optimistic again, once the replica has the
    // write (read-your-writes keeps reads off it until then).
    blocking(&c, |c| c.resume_replay()).await.unwrap();
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    let replica = c.port(Node::Replica);
    let on_replica = poll_until(Duration::from_secs(10), || async {
        client.batch_execute("BEGIN").await.unwrap();
        let port = server_port(&client).await;
        client.batch_execute("ROLLBACK").await.unwrap();
        port == replica
    })
    .await;
    assert!(
        on_replica.is_some(),
        "transactions never returned to the replica"
    );
    proxy.stop().await;
}

/// The race case: clients read a counter and write back what they read plus
/// one, in REPEATABLE READ transactions, retrying on 40001 as applications
/// do. No increment may be lost (on the primary alone none would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_then_increment_loses_no_update() {
    const CLIENTS: usize = 8;
    const EACH: usize = 15;
    let c = cluster();
    setup_table(c, "opt_race").await;
    let proxy = Proxy::start(c, "").await;
    let url = proxy.url(c);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let mut retries = 0u32;
            for _ in 0..EACH {
                loop {
                    match increment(&client).await {
                        Ok(()) => break,
                        Err(code) if code == "40001" => {
                            retries += 1;
                            client.batch_execute("ROLLBACK").await.unwrap();
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(code) => panic!("increment failed with {code}"),
                    }
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let direct = connect(&c.url(Node::Primary)).await;
    let v: usize = first(&direct, "SELECT v FROM opt_race WHERE id = 1")
        .await
        .parse()
        .unwrap();
    eprintln!(
        "race: {CLIENTS} clients x {EACH} increments, {retries} retries after 40001; \
         matched {} mismatched {}",
        outcome(&proxy, "replayed_match"),
        outcome(&proxy, "replayed_mismatch")
    );
    assert_eq!(v, 100 + CLIENTS * EACH, "an increment was lost");
    proxy.stop().await;
}

/// One read-then-write transaction; the SQLSTATE of a failure.
async fn increment(client: &Client) -> Result<(), String> {
    let code = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.code().code().to_owned())
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(code)?;
    let v: i64 = first(client, "SELECT v FROM opt_race WHERE id = 1")
        .await
        .parse()
        .map_err(|e| format!("{e}"))?;
    client
        .batch_execute(&format!("UPDATE opt_race SET v = {} WHERE id = 1", v + 1))
        .await
        .map_err(code)?;
    client.batch_execute("COMMIT").await.map_err(code)
}

/// psycopg's default connections and SQLAlchemy ORM sessions, which put
/// every read in a transaction: read-only ones run on the replica (the
/// server says so: `inet_server_port()` inside them), read-then-write ones
/// commit on the primary with the right value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_orm_transactions_read_on_the_replica_and_write_on_the_primary() {
    let c = cluster();
    setup_table(c, "opt_orm").await;
    let proxy = Proxy::start(c, "").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/optimistic_orm.py"
    );
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(proxy.url(c))
        .arg("opt_orm")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("optimistic_orm.py did not finish within 120 s"))
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "optimistic_orm.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    assert_eq!(
        stdout,
        format!(
            "psycopg read-only {replica}\n\
             psycopg read-then-write 101 {primary}\n\
             sqlalchemy read-only {replica}\n\
             sqlalchemy read-then-write 102\n\
             pipeline {replica} 102\n\
             raw pipeline {replica} 102 INTRANS\n"
        )
    );
    let direct = connect(&c.url(Node::Primary)).await;
    assert_eq!(
        first(&direct, "SELECT v FROM opt_orm WHERE id = 1").await,
        "102"
    );
    eprintln!(
        "orm: read_only_on_replica {}, replayed_match {}, started_on_primary {}, mismatch {}",
        outcome(&proxy, "read_only_on_replica"),
        outcome(&proxy, "replayed_match"),
        outcome(&proxy, "started_on_primary"),
        outcome(&proxy, "replayed_mismatch")
    );
    assert!(outcome(&proxy, "replayed_match") >= 2.0);
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 0.0);
    proxy.stop().await;
}

/// Past `optimistic_max_statements` the transaction moves before the next
/// statement, verified, and reads on on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_past_its_bound_moves_the_transaction() {
    let c = cluster();
    setup_table(c, "opt_bound").await;
    let proxy = Proxy::start(c, "[routing]\noptimistic_max_statements = 3\n").await;
    let client = connect(&proxy.url(c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    client.batch_execute("BEGIN").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            first(&client, "SELECT inet_server_port()").await,
            replica.to_string()
        );
    }
    // The record holds 3: the fourth statement moves the transaction.
    assert_eq!(
        first(&client, "SELECT v FROM opt_bound WHERE id = 1").await,
        "100"
    );
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(outcome(&proxy, "moved_before_unreplayable"), 1.0);
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 0.0);
    proxy.stop().await;
}

/// A BEGIN is deferred however it arrives: alone through the extended
/// protocol, or at the head of a query string of reads (which then runs
/// whole on the replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_in_the_extended_protocol_or_a_query_string_is_deferred() {
    let c = cluster();
    setup_table(c, "opt_forms").await;
    let proxy = Proxy::start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    // tokio-postgres prepares the BEGIN (Parse, Describe, Sync), then runs
    // it (Bind, Execute, Sync).
    client.execute("BEGIN", &[]).await.unwrap();
    assert_eq!(server_port(&client).await, replica);
    client.execute("COMMIT", &[]).await.unwrap();
    expect_outcome(&proxy, "read_only_on_replica", 1.0).await;

    let rows = client
        .simple_query(
            "BEGIN; SELECT inet_server_port(); SELECT v, now() FROM opt_forms WHERE id = 1",
        )
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, [replica.to_string(), "100".to_owned()]);
    // The transaction is open, on the replica; a write moves it.
    assert_eq!(server_port(&client).await, replica);
    client
        .batch_execute("UPDATE opt_forms SET v = 5 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(outcome(&proxy, "replayed_match"), 1.0);
    let direct = connect(&c.url(Node::Primary)).await;
    assert_eq!(
        first(&direct, "SELECT v FROM opt_forms WHERE id = 1").await,
        "5"
    );

    // BEGIN READ WRITE says it will write: the primary from the start.
    replica_has_our_writes(&client, replica).await;
    client.batch_execute("BEGIN READ WRITE").await.unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("ROLLBACK").await.unwrap();
    proxy.stop().await;
}

/// A replica's refusal is a routing hint: a statement the classifier let
/// through to a replica (here a writing function an operator listed as
/// replica-safe) fails there with 25006, and runs on the primary instead;
/// the client never sees the error, in autocommit and inside an
/// optimistic transaction (which moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusal_runs_the_statement_on_the_primary() {
    let c = cluster();
    setup_table(c, "opt_refused").await;
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION opt_sneaky_write(n int) RETURNS int LANGUAGE sql \
             AS $$ INSERT INTO opt_refused VALUES (n, n) RETURNING n $$",
        )
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.wait_caught_up()).unwrap();
    let proxy = Proxy::start(
        c,
        "[routing]\nreplica_safe_functions = [\"opt_sneaky_write\"]\n",
    )
    .await;
    let client = connect(&proxy.url(c)).await;
    let retries = |proxy: &Proxy| {
        proxy
            .ctx
            .metrics
            .counters()
            .into_iter()
            .find(|(n, l, _)| n == "pgsplit_retries_total" && l == "reason=\"replica_refused\"")
            .map_or(0.0, |(_, _, v)| v)
    };
    assert_eq!(first(&client, "SELECT opt_sneaky_write(2)").await, "2");
    assert_eq!(retries(&proxy), 1.0);

    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_refused WHERE id = 1").await,
        "100"
    );
    assert_eq!(
        server_port(&client).await,
        c.port(Node::Replica),
        "the transaction is on the replica"
    );
    assert_eq!(first(&client, "SELECT opt_sneaky_write(3)").await, "3");
    assert_eq!(server_port(&client).await, c.port(Node::Primary));
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(retries(&proxy), 2.0);
    assert_eq!(
        first(
            &direct,
            "SELECT count(*) FROM opt_refused WHERE id IN (2, 3)"
        )
        .await,
        "2"
    );
    proxy.stop().await;
}

/// The replica's connection dies in the middle of an optimistic
/// transaction: the next read moves the transaction to the primary (replay
/// and compare) and the client sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lost_mid_transaction_moves_it_to_the_primary() {
    let c = cluster();
    setup_table(c, "opt_lost").await;
    let proxy = Proxy::start(c, "").await;
    let url = format!("{}?application_name=opt_lost_app", proxy.url(c));
    let client = connect(&url).await;
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_lost WHERE id = 1").await,
        "100"
    );
    let on_replica = connect(&c.url(Node::Replica)).await;
    let ended = first(
        &on_replica,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'opt_lost_app' AND state = 'idle in transaction'",
    )
    .await;
    assert_eq!(ended, "1", "pgsplit's replica backend for the client");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        first(&client, "SELECT v FROM opt_lost WHERE id = 1").await,
        "100"
    );
    assert_eq!(server_port(&client).await, c.port(Node::Primary));
    client
        .batch_execute("UPDATE opt_lost SET v = 7 WHERE id = 1; COMMIT")
        .await
        .unwrap();
    let direct = connect(&c.url(Node::Primary)).await;
    assert_eq!(
        first(&direct, "SELECT v FROM opt_lost WHERE id = 1").await,
        "7"
    );
    proxy.stop().await;
}

/// Read-only transactions of a web-like mix: 3 to 5 point reads.
const WEB_READS: &str = "\\set aid random(1, 100000 * :scale)
\\set n random(3, 5)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 1;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 2;
\\if :n >= 4
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 3;
\\endif
\\if :n >= 5
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 4;
\\endif
COMMIT;
";

/// Read-then-write transactions of the mix (another SELECT text, so that
/// the servers' statistics tell the two apart).
const WEB_WRITES: &str = "\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
SELECT abalance, aid FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
COMMIT;
";

/// `name`'s value in a Prometheus text exposition (first series).
fn exposition_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The web-like mix inside transactions (80% read-only transactions of 3-5
/// SELECTs, 20% read-then-write), 8 and 64 clients, optimistic transactions
/// on and off: the share of the read-only transactions' reads the replica
/// ran (its own pg_stat_statements), TPS, the replay's cost per writing
/// transaction, and the mismatch rate. Printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --release --test it -- --ignored --nocapture optimistic::measure_web_mix"]
async fn measure_web_mix() {
    use crate::consistency::{
        calls, own_cpu, parse_tps, pgbench, reset_stat_statements, settle, stat_statements_cluster,
    };
    let c = stat_statements_cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let reads = dir.path().join("reads.sql");
    let writes = dir.path().join("writes.sql");
    std::fs::write(&reads, WEB_READS).unwrap();
    std::fs::write(&writes, WEB_WRITES).unwrap();
    let (reads_arg, writes_arg) = (
        format!("{}@80", reads.display()),
        format!("{}@20", writes.display()),
    );
    eprintln!(
        "web mix in transactions (80% 3-5 SELECTs, 20% SELECT + UPDATE; -M simple, 10 s per run, scale 8):"
    );
    for clients in ["8", "64"] {
        for optimistic in [true, false] {
            settle(&c).await;
            reset_stat_statements(&c).await;
            let proxy = Proxy::start(
                &c,
                &format!(
                    "[routing]\noptimistic_transactions = {optimistic}\n[pool]\nmax_size = 80\n"
                ),
            )
            .await;
            let cpu_before = own_cpu();
            let out = pgbench(
                &c,
                proxy.addr.port(),
                &[
                    "-M",
                    "simple",
                    "-c",
                    clients,
                    "-j",
                    "2",
                    "-T",
                    "10",
                    "-n",
                    "-f",
                    &reads_arg,
                    "-f",
                    &writes_arg,
                ],
            )
            .await;
            let metrics = crate::common::http_get(proxy.admin, "/metrics")
                .await
                .unwrap_or_default();
            let outcomes: Vec<(String, f64)> = [
                "read_only_on_replica",
                "started_on_primary",
                "replayed_match",
                "replayed_mismatch",
                "moved_before_unreplayable",
            ]
            .iter()
            .map(|o| ((*o).to_owned(), outcome(&proxy, o)))
            .collect();
            proxy.stop().await;
            let cpu = own_cpu().saturating_sub(cpu_before);
            let tps = parse_tps(&out).unwrap_or(0.0);
            let done: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            let (ro_primary, ro_replica, rw_primary, rw_replica) = blocking(&c, |c| {
                let ro = "SELECT abalance FROM pgbench_accounts%";
                let rw = "SELECT abalance, aid FROM pgbench_accounts%";
                (
                    calls(c, Node::Primary, ro),
                    calls(c, Node::Replica, ro),
                    calls(c, Node::Primary, rw),
                    calls(c, Node::Replica, rw),
                )
            })
            .await;
            let share = ro_replica as f64 / (ro_primary + ro_replica).max(1) as f64;
            let replay_sum = exposition_value(&metrics, "pgsplit_transaction_replay_seconds_sum");
            let replay_count =
                exposition_value(&metrics, "pgsplit_transaction_replay_seconds_count");
            let get = |name: &str| {
                outcomes
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |(_, v)| *v)
            };
            let moved = get("replayed_match") + get("replayed_mismatch");
            eprintln!(
                "  {clients:>2} clients, optimistic={optimistic:<5}: pgsplit CPU {:.1} us per transaction",
                cpu.as_secs_f64() * 1e6 / done.max(1.0)
            );
            eprintln!(
                "  {clients:>2} clients, optimistic={optimistic:<5}: {tps:>6.0} tps; read-only transactions' reads on the replica {ro_replica} of {} ({:.1}%); read-then-write SELECTs on the replica {rw_replica}, on the primary {rw_primary}",
                ro_primary + ro_replica,
                share * 100.0
            );
            if optimistic {
                eprintln!(
                    "      transactions {outcomes:?}; replay {:.3} ms mean over {replay_count} moves; mismatch rate {:.2}% of moves",
                    replay_sum * 1000.0 / replay_count.max(1.0),
                    get("replayed_mismatch") * 100.0 / moved.max(1.0)
                );
            }
        }
    }
}

/// Savepoints before and after the move, a prepared statement the client
/// closed before the move (the replay uses it as it was), and statements the
/// record cannot hold (`SET LOCAL`, a cursor) moving the transaction first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_statements_and_unreplayable_reads_survive_the_move() {
    let c = cluster();
    setup_table(c, "opt_sp").await;
    let proxy = Proxy::start(c, "").await;
    let client = connect(&proxy.url(c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    let direct = connect(&c.url(Node::Primary)).await;

    let read = client
        .prepare("SELECT v FROM opt_sp WHERE id = $1")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let v: i32 = client.query_one(&read, &[&1i32]).await.unwrap().get(0);
    assert_eq!(v, 100);
    client.batch_execute("SAVEPOINT before_move").await.unwrap();
    assert_eq!(server_port(&client).await, replica);
    // The client closes its statement; the record still needs it.
    drop(read);
    client
        .batch_execute("UPDATE opt_sp SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("SAVEPOINT after_move").await.unwrap();
    client
        .batch_execute("UPDATE opt_sp SET v = 2 WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("ROLLBACK TO SAVEPOINT after_move")
        .await
        .unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_sp WHERE id = 1").await,
        "1"
    );
    // The savepoint made on the replica exists on the primary too.
    client
        .batch_execute("ROLLBACK TO SAVEPOINT before_move")
        .await
        .unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_sp WHERE id = 1").await,
        "100"
    );
    client
        .batch_execute("UPDATE opt_sp SET v = 3 WHERE id = 1; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        first(&direct, "SELECT v FROM opt_sp WHERE id = 1").await,
        "3"
    );
    assert_eq!(outcome(&proxy, "replayed_match"), 1.0);

    // SET LOCAL and a cursor cannot be recorded: the transaction moves
    // before them, verified, and they run on the primary.
    replica_has_our_writes(&client, replica).await;
    for (statement, then) in [
        ("SET LOCAL work_mem = '2MB'", "SHOW work_mem"),
        (
            "DECLARE opt_cursor CURSOR FOR SELECT v FROM opt_sp",
            "FETCH 1 FROM opt_cursor",
        ),
    ] {
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            first(&client, "SELECT v FROM opt_sp WHERE id = 1").await,
            "3"
        );
        client.batch_execute(statement).await.unwrap();
        assert_eq!(server_port(&client).await, primary, "{statement}");
        let shown = first(&client, then).await;
        assert!(shown == "2MB" || shown == "3", "{then}: {shown}");
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(outcome(&proxy, "moved_before_unreplayable"), 1.0);
    // DECLARE is a write to the classifier (it may run functions).
    assert_eq!(outcome(&proxy, "replayed_match"), 2.0);
    assert_eq!(outcome(&proxy, "replayed_mismatch"), 0.0);
    proxy.stop().await;
}

/// A replica that falls over the lag limits while a transaction reads on it:
/// the next read moves the transaction to the primary (verified) rather
/// than read on from a replica falling behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_falling_behind_mid_transaction_moves_it() {
    let (c, _turn) = replay_cluster().await;
    setup_table(&c, "opt_lagging").await;
    let proxy = Proxy::start(
        &c,
        "[routing]\nmax_lag = \"300ms\"\nhealth_interval = \"100ms\"\n",
    )
    .await;
    let client = connect(&proxy.url(&c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_lagging WHERE id = 1").await,
        "100"
    );
    assert_eq!(server_port(&client).await, replica);

    blocking(&c, |c| c.pause_replay()).await.unwrap();
    let direct = connect(&c.url(Node::Primary)).await;
    let lagging = poll_until(Duration::from_secs(15), || async {
        direct
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS opt_lag_w (v int); INSERT INTO opt_lag_w VALUES (1)",
            )
            .await
            .unwrap();
        crate::common::own::health_of(&proxy, replica).lagging
    })
    .await;
    assert!(lagging.is_some(), "the replica never went over max_lag");
    assert_eq!(
        first(&client, "SELECT v FROM opt_lagging WHERE id = 1").await,
        "100"
    );
    assert_eq!(server_port(&client).await, primary);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(outcome(&proxy, "moved_before_unreplayable"), 1.0);
    blocking(&c, |c| c.resume_replay()).await.unwrap();
    proxy.stop().await;
}

/// A portal read part way on the replica (Execute with a row limit) goes on
/// from the same row on the primary after the move: the replay binds it and
/// reads the same rows again there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_read_part_way_goes_on_after_the_move() {
    let c = cluster();
    setup_table(c, "opt_portal").await;
    let proxy = Proxy::start(c, "").await;
    let mut client = connect(&proxy.url(c)).await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    let series = client
        .prepare("SELECT n, inet_server_port() FROM generate_series(1, 5) AS n")
        .await
        .unwrap();
    let txn = client.transaction().await.unwrap();
    let portal = txn.bind(&series, &[]).await.unwrap();
    let rows = txn.query_portal(&portal, 2).await.unwrap();
    let got: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(1, i32::from(replica)), (2, i32::from(replica))]);
    txn.execute("UPDATE opt_portal SET v = 9 WHERE id = 1", &[])
        .await
        .unwrap();
    let rows = txn.query_portal(&portal, 2).await.unwrap();
    let got: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(3, i32::from(primary)), (4, i32::from(primary))]);
    txn.commit().await.unwrap();
    assert_eq!(outcome(&proxy, "replayed_match"), 1.0);
    proxy.stop().await;
}

/// The first statement after a deferred BEGIN fails in pgsplit itself (here
/// no primary connection comes free in time): the client's transaction is
/// failed though no server has one, so what follows gets 25P02 until it
/// ends, and its COMMIT answers ROLLBACK, as PostgreSQL's would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_transaction_failed_in_pgsplit_stays_failed_until_it_ends() {
    let c = cluster();
    setup_table(c, "opt_failed").await;
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"300ms\"\n",
    )
    .await;
    let client = connect(&proxy.url(c)).await;
    let holder = connect(&proxy.url(c)).await;
    // The other session holds the one primary connection in a transaction.
    holder
        .batch_execute("BEGIN; UPDATE opt_failed SET v = v WHERE id = 1")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute("UPDATE opt_failed SET v = 1 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("53300"),
        "{err}"
    );
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("25P02"),
        "{err}"
    );
    // COMMIT ends it (PostgreSQL answers a failed transaction's COMMIT
    // with ROLLBACK); then the session reads as before, not with 25P02.
    client.batch_execute("COMMIT").await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        first(&client, "SELECT v FROM opt_failed WHERE id = 1").await,
        "100"
    );
    proxy.stop().await;
}
