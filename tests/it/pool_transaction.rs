//! Transaction pooling (`[pool] mode = "transaction"`): clients hold a server
//! connection only while a transaction is open, or for one unit outside one,
//! and no client can tell except by `pg_backend_pid()`.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{Proxy, cluster, connect, http_get};
use pgsplit_cluster::Node;

/// The server backend pid that ran `sql`'s `pg_backend_pid()` column.
async fn pid(client: &tokio_postgres::Client, sql: &str) -> i32 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_few_connections_each_with_its_own_settings_and_statements() {
    const CLIENTS: usize = 200;
    const POOL: usize = 5;
    let c = cluster();
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS txpool_many; CREATE TABLE txpool_many (client int, round int)",
        )
        .await
        .unwrap();
    let proxy = Proxy::start(
        c,
        &format!("[pool]\nmode = \"transaction\"\nmax_size = {POOL}\ncheckout_timeout = \"30s\"\n"),
    )
    .await;
    let url = proxy.url(c);
    // Connected one after another (each login costs a SCRAM exchange on
    // pgsplit's one thread), then all at work at once.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(connect(&url).await);
    }
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("SET application_name = 'txpool-{i}'"))
                .await
                .unwrap();
            // tokio-postgres names its statements s0, s1, ... per connection:
            // every client prepares the same names for texts of its own.
            let read = client
                .prepare(&format!(
                    "SELECT current_setting('application_name') || '/' || $1::text || '/{i}', pg_backend_pid()"
                ))
                .await
                .unwrap();
            let mut pids = HashSet::new();
            for round in 0..3 {
                let row = client.query_one(&read, &[&round.to_string()]).await.unwrap();
                let got: String = row.get(0);
                assert_eq!(got, format!("txpool-{i}/{round}/{i}"));
                pids.insert(row.get::<_, i32>(1));
                let tx = client.transaction().await.unwrap();
                let i32_i = i32::try_from(i).unwrap();
                tx.execute(
                    "INSERT INTO txpool_many VALUES ($1, $2)",
                    &[&i32_i, &round],
                )
                .await
                .unwrap();
                let in_txn: String = tx
                    .query_one("SELECT current_setting('application_name')", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(in_txn, format!("txpool-{i}"));
                tx.commit().await.unwrap();
            }
            pids
        }));
    }
    let mut backends = HashSet::new();
    for t in tasks {
        backends.extend(t.await.unwrap());
    }
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM txpool_many", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, i64::try_from(CLIENTS * 3).unwrap());
    // Reads ran on the replica (or the primary): at most POOL backends on each.
    assert!(
        backends.len() <= 2 * POOL,
        "{CLIENTS} clients used {} server backends for reads",
        backends.len()
    );
    direct
        .batch_execute("DROP TABLE txpool_many")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_pins_its_client_to_its_connection_and_others_go_on() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 2\n").await;
    let url = proxy.url(c);
    let pinned = connect(&url).await;
    pinned
        .batch_execute(
            "CREATE TEMP TABLE txpool_pin (x int); INSERT INTO txpool_pin VALUES (1), (2)",
        )
        .await
        .unwrap();
    let first = pid(&pinned, "/* pgsplit:primary */ SELECT pg_backend_pid()").await;
    // Other clients come and go on the other connection meanwhile.
    for _ in 0..5 {
        let other = connect(&url).await;
        let theirs = pid(&other, "/* pgsplit:primary */ SELECT pg_backend_pid()").await;
        assert_ne!(theirs, first, "another client got the pinned connection");
        let n: i64 = pinned
            .query_one("SELECT count(*) FROM txpool_pin", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }
    assert_eq!(
        pid(&pinned, "/* pgsplit:primary */ SELECT pg_backend_pid()").await,
        first
    );
    let metrics = http_get(proxy.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("pgsplit_connection_pins_total{reason=\"temp_object\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_timeout_fails_one_statement_and_the_next_one_works() {
    let c = cluster();
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"300ms\"\n",
    )
    .await;
    let url = proxy.url(c);
    let mut holder = connect(&url).await;
    let waiter = connect(&url).await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("/* pgsplit:primary */ SELECT 1")
        .await
        .unwrap();
    let waiter = std::sync::Arc::new(waiter);
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.batch_execute("/* pgsplit:primary */ SELECT 2").await })
    };
    // While it waits, the gauge says so.
    let gauge = |n: u32| format!("\npgsplit_pool_waiting_clients {n}\n");
    let mut seen_waiting = false;
    for _ in 0..20 {
        let metrics = http_get(proxy.admin, "/metrics").await.unwrap();
        if metrics.contains(&gauge(1)) {
            seen_waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_waiting,
        "pgsplit_pool_waiting_clients never showed the waiting client"
    );
    let err = waiting.await.unwrap().unwrap_err();
    let metrics = http_get(proxy.admin, "/metrics").await.unwrap();
    assert!(metrics.contains(&gauge(0)), "{metrics}");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53300", "{db}");
    tx.commit().await.unwrap();
    let two: String = waiter
        .simple_query("/* pgsplit:primary */ SELECT 2")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(two, "2");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_transaction_leaves_no_trace_for_the_next() {
    let c = cluster();
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute("DROP TABLE IF EXISTS txpool_gone; CREATE TABLE txpool_gone (note text)")
        .await
        .unwrap();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 1\n").await;
    let url = proxy.url(c);
    {
        let gone = connect(&url).await;
        gone.batch_execute(
            "SET application_name = 'txpool-gone'; BEGIN; INSERT INTO txpool_gone VALUES ('ghost'); SET LOCAL statement_timeout = '1s'",
        )
        .await
        .unwrap();
        // Dropped with the transaction open.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = connect(&url).await;
    let row = next
        .query_one(
            "/* pgsplit:primary */ SELECT (SELECT count(*) FROM txpool_gone), current_setting('application_name'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "the uncommitted row is visible");
    assert_ne!(row.get::<_, String>(1), "txpool-gone");
    assert_eq!(row.get::<_, String>(2), "0");
    // Outside any transaction: two statements, two transaction ids.
    let txid = "/* pgsplit:primary */ SELECT txid_current()";
    let a: i64 = next.query_one(txid, &[]).await.unwrap().get(0);
    let b: i64 = next.query_one(txid, &[]).await.unwrap().get(0);
    assert_ne!(a, b, "the next client runs inside a transaction");
    c.psql(Node::Primary, "app", "DROP TABLE txpool_gone")
        .unwrap();
    proxy.stop().await;
}

/// asyncpg with its statement cache on: every connection names its
/// statements `__asyncpg_stmt_1__`, `__asyncpg_stmt_2__`... for different
/// texts. (Through PgBouncer 1.18 in transaction mode ~90% of such
/// transactions fail with "prepared statement does not exist".) The script is
/// `tests/clients/asyncpg_pool.py`; `.ci/run` installs asyncpg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_with_its_statement_cache_over_a_few_connections() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 5;
    let c = cluster();
    let direct = connect(&c.url(Node::Primary)).await;
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS txpool_asyncpg; CREATE TABLE txpool_asyncpg (client int, round int)",
        )
        .await
        .unwrap();
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 4\ncheckout_timeout = \"30s\"\n",
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/asyncpg_pool.py");
    let run = tokio::process::Command::new("python3")
        .args([
            script,
            &proxy.url(c),
            &CLIENTS.to_string(),
            &ROUNDS.to_string(),
            "txpool_asyncpg",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("asyncpg_pool.py did not finish within 180 s"))
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "asyncpg_pool.py failed (is asyncpg installed? .ci/run installs it): {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("ok {CLIENTS} {ROUNDS}"));
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM txpool_asyncpg", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, i64::try_from(CLIENTS * ROUNDS).unwrap());
    direct
        .batch_execute("DROP TABLE txpool_asyncpg")
        .await
        .unwrap();
    proxy.stop().await;
}

/// A pinned client holds its connection until it releases what pinned it:
/// with a pool of one, another client times out while the state lives and
/// gets the connection once the state is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_what_pinned_a_client_unpins_it() {
    let c = cluster();
    let proxy = Proxy::start(
        c,
        "[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"300ms\"\n",
    )
    .await;
    let url = proxy.url(c);
    let cases = [
        ("CREATE TEMP TABLE txpool_unpin (x int)", "DISCARD TEMP"),
        ("LISTEN txpool_unpin", "UNLISTEN *"),
        (
            "SELECT pg_advisory_lock(4242)",
            "SELECT pg_advisory_unlock_all()",
        ),
        (
            "BEGIN; DECLARE txpool_c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "CLOSE ALL",
        ),
    ];
    for (pin, release) in cases {
        let pinned = connect(&url).await;
        let other = connect(&url).await;
        pinned.batch_execute(pin).await.unwrap();
        let err = other
            .batch_execute("/* pgsplit:primary */ SELECT 1")
            .await
            .unwrap_err();
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("53300"), "{pin}: {err}");
        pinned.batch_execute(release).await.unwrap();
        other
            .batch_execute("/* pgsplit:primary */ SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("{pin} then {release}: still pinned: {e}"));
    }
    proxy.stop().await;
}

/// Under transaction pooling a server connection serves one client after
/// another: a cancel reaches the statement its client is running, and a
/// cancel from a client with nothing running reaches no one, even when the
/// connection it last used now runs another client's statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_only_its_own_clients_statement() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 1\n").await;
    let url = proxy.url(c);
    let idle = connect(&url).await;
    let busy = std::sync::Arc::new(connect(&url).await);
    // The idle client used the one primary connection last.
    idle.batch_execute("/* pgsplit:primary */ SELECT 1")
        .await
        .unwrap();
    let running = {
        let busy = busy.clone();
        tokio::spawn(async move {
            busy.batch_execute("/* pgsplit:primary */ SELECT pg_sleep(1)")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    idle.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    running
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("another client's cancel stopped this statement: {e}"));
    // Its own cancel stops it.
    let token = busy.cancel_token();
    let sleeping = {
        let busy = busy.clone();
        tokio::spawn(async move {
            busy.batch_execute("/* pgsplit:primary */ SELECT pg_sleep(30)")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .unwrap_or_else(|_| panic!("the cancel did not stop the statement"))
        .unwrap()
        .unwrap_err();
    let code = err.as_db_error().map(|e| e.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");
    // And the session goes on.
    busy.batch_execute("/* pgsplit:primary */ SELECT 1")
        .await
        .unwrap();
    proxy.stop().await;
}
