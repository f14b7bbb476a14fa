//! The admin console (issue: "the operator's side"): database `pgsplit` on
//! pgsplit's own listener, driven with tokio-postgres (simple protocol) and
//! with psql, every command's columns and values checked against a known
//! state.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::own::blocking;
use crate::common::replay::replay_cluster;
use crate::common::{Proxy, cluster, connect};
use pgsplit_cluster::Node;

/// The rows of a console command, each as column name -> text value.
async fn rows(client: &Client, command: &str) -> Vec<HashMap<String, Option<String>>> {
    let messages = client
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn get<'a>(row: &'a HashMap<String, Option<String>>, column: &str) -> &'a str {
    row.get(column)
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
        .as_deref()
        .unwrap_or("NULL")
}

/// The one row of `SHOW ROUTE <sql>`.
async fn route_of(client: &Client, sql: &str) -> HashMap<String, Option<String>> {
    let mut r = rows(client, &format!("SHOW ROUTE {sql}")).await;
    assert_eq!(r.len(), 1, "SHOW ROUTE {sql}: {r:?}");
    r.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_servers_pools_config_and_routes() {
    let c = cluster();
    // Without read-your-writes: this test's own writes would otherwise
    // send reads to the primary until the replica is seen to replay them
    // (that reason has a table test of its own, in `console::views`).
    let proxy = Proxy::start(c, "[routing]\nread_your_writes = \"off\"\n").await;
    // A session first, so that pools exist.
    let app = connect(&proxy.url(c)).await;
    app.simple_query("SELECT 1").await.unwrap();
    app.batch_execute("CREATE TABLE IF NOT EXISTS console_t (id int)")
        .await
        .unwrap();
    let console = connect(&proxy.console_url(c)).await;
    let primary = format!("127.0.0.1:{}", c.port(Node::Primary));
    let replica = format!("127.0.0.1:{}", c.port(Node::Replica));

    let servers = rows(&console, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 2, "{servers:?}");
    let by_name = |name: &str| {
        servers
            .iter()
            .find(|r| get(r, "server") == name)
            .unwrap_or_else(|| panic!("{name} not in {servers:?}"))
    };
    let p = by_name(&primary);
    assert_eq!(get(p, "role"), "primary");
    assert_eq!(get(p, "serving_reads"), "f");
    let r = by_name(&replica);
    assert_eq!(get(r, "role"), "replica");
    assert_eq!(get(r, "serving_reads"), "t");
    assert_eq!(get(r, "lagging"), "f");
    assert!(get(r, "lsn").contains('/'), "{r:?}");
    let age: f64 = get(r, "probe_age_seconds").parse().unwrap();
    assert!((0.0..5.0).contains(&age), "{r:?}");
    assert_eq!(get(r, "last_error"), "NULL");

    let pools = rows(&console, "show pools;").await;
    let pool = pools
        .iter()
        .find(|r| get(r, "server") == primary && get(r, "database") == pgsplit_cluster::DATABASE)
        .unwrap_or_else(|| panic!("no primary pool in {pools:?}"));
    assert_eq!(get(pool, "user"), c.user());
    let active: i64 = get(pool, "active").parse().unwrap();
    let idle: i64 = get(pool, "idle").parse().unwrap();
    assert!(active + idle >= 1, "{pool:?}");
    assert_eq!(get(pool, "waiting"), "0");
    assert_eq!(get(pool, "max_size"), "15");

    // SHOW CLIENTS: a named session, idle; in a transaction; then pinned
    // by a temp table.
    // The session reports its state right after its ReadyForQuery is out:
    // the console may ask in between, so each state is waited for briefly.
    let mine = async |state: &str| {
        let mut last = Vec::new();
        for _ in 0..100 {
            last = rows(&console, "SHOW CLIENTS").await;
            if let Some(r) = last
                .iter()
                .find(|r| get(r, "application_name") == "console_test" && get(r, "state") == state)
            {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no console_test client in state {state:?}: {last:?}")
    };
    let named = connect(&format!("{}?application_name=console_test", proxy.url(c))).await;
    named.simple_query("SELECT 1").await.unwrap();
    let me = mine("idle").await;
    assert_eq!(get(&me, "user"), c.user());
    assert_eq!(get(&me, "database"), pgsplit_cluster::DATABASE);
    assert_eq!(get(&me, "pinned"), "NULL");
    assert_eq!(
        get(&me, "address"),
        "NULL",
        "addresses are hidden by default"
    );
    assert!(get(&me, "units").parse::<i64>().unwrap() >= 1);
    named
        .batch_execute("BEGIN; CREATE TEMP TABLE console_tmp (id int)")
        .await
        .unwrap();
    let me = mine("idle in transaction").await;
    assert_eq!(get(&me, "server"), primary);
    named.batch_execute("COMMIT").await.unwrap();
    let me = mine("idle").await;
    assert_eq!(get(&me, "pinned"), "temp_object", "{me:?}");
    drop(named);

    let config = rows(&console, "SHOW CONFIG").await;
    let value = |key: &str| {
        config
            .iter()
            .find(|r| get(r, "key") == key)
            .map(|r| get(r, "value").to_owned())
            .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG"))
    };
    assert!(value("primary").contains(":***@"), "{}", value("primary"));
    assert!(
        !config
            .iter()
            .any(|r| get(r, "value").contains(c.password())),
        "a password shows in SHOW CONFIG"
    );
    // Transaction by default; the suite's second pass runs in session mode.
    let mode = format!("{:?}", proxy.ctx.config().pool.mode).to_lowercase();
    assert_eq!(value("pool.mode"), mode);
    assert_eq!(value("routing.max_lag"), "1s");

    // Where statements go for a new session now, and why: one row for each
    // reason that does not depend on the servers' state (the lag, floor
    // and down reasons have tests of their own below and in `freeze`).
    app.batch_execute("CREATE SEQUENCE IF NOT EXISTS console_s")
        .await
        .unwrap();
    let table: &[(&str, &str, &str, &str)] = &[
        // (statement, target, reason, words in `why`)
        ("SELECT 1", "replica", "read", "read-only"),
        ("SELECT * FROM console_t", "replica", "read", "read-only"),
        (
            "SELECT nextval('console_s')",
            "primary",
            "write",
            "calls nextval",
        ),
        (
            "SELECT * FROM console_t FOR UPDATE",
            "primary",
            "write",
            "locking clause FOR UPDATE",
        ),
        (
            "INSERT INTO console_t VALUES (1)",
            "primary",
            "write",
            "an INSERT statement",
        ),
        (
            "WITH d AS (DELETE FROM console_t RETURNING id) SELECT * FROM d",
            "primary",
            "write",
            "contains a DELETE statement",
        ),
        (
            "SELECT * INTO console_copy FROM console_t",
            "primary",
            "write",
            "SELECT INTO",
        ),
        ("BEGIN", "none", "transaction", "optimistic transaction"),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "primary",
            "transaction",
            "transaction",
        ),
        ("BEGIN; SELECT 1", "replica", "read", "read-only"),
        ("BEGIN READ ONLY", "replica", "read", "read-only"),
        ("COMMIT", "primary", "transaction", "transaction"),
        ("SET search_path = public", "primary", "session", "session"),
        (
            "SELECT pg_advisory_lock(1)",
            "primary",
            "write",
            "calls pg_advisory_lock",
        ),
        (
            "/* pgsplit:primary */ SELECT 1",
            "primary",
            "hint",
            "routing hint",
        ),
        (
            "/* pgsplit:replica */ SELECT 1",
            "replica",
            "hint",
            "routing hint",
        ),
        ("SELEKT 1", "primary", "parse_fallback", "could not read"),
    ];
    let mut failed = Vec::new();
    for (sql, target, reason, why) in table {
        let row = route_of(&console, sql).await;
        if get(&row, "target") != *target
            || get(&row, "reason") != *reason
            || !get(&row, "why").contains(why)
        {
            failed.push(format!(
                "{sql}: want {target}/{reason}/{why:?}, got {row:?}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // EXPLAIN ROUTE is the same command.
    let row = route_of(&console, "SELECT 1").await;
    let explained = rows(&console, "EXPLAIN ROUTE SELECT 1").await;
    assert_eq!(explained, vec![row]);

    // Unknown commands: 42601, with the list of commands; the console goes on.
    let err = console.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42601");
    assert!(db.message().contains("SHOW SERVERS"), "{}", db.message());
    assert_eq!(
        rows(&console, "SHOW HELP").await.len(),
        pgsplit::console::command::COMMANDS.len()
    );
    assert_eq!(get(&rows(&console, "RELOAD").await[0], "status"), "reload");
    // SHOW STATS: the counters, units by route and reason among them.
    let stats = rows(&console, "SHOW STATS").await;
    assert!(
        stats
            .iter()
            .any(|r| get(r, "metric") == "pgsplit_units_routed_total"
                && get(r, "labels").contains("reason=\"read\"")
                && get(r, "value").parse::<f64>().unwrap_or(0.0) >= 1.0),
        "{stats:?}"
    );
    // The extended protocol is refused with 0A000, and the console goes on.
    let err = console.query("SHOW SERVERS", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
    assert_eq!(rows(&console, "SHOW SERVERS").await.len(), 2);

    // psql: an ordinary result set.
    let out = tokio::process::Command::new(c.bindir().join("psql"))
        .env("PGPASSWORD", c.password())
        .env("PGSSLMODE", "disable")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(proxy.addr.port().to_string())
        .args(["-U", c.user(), "-d", "pgsplit", "-c", "SHOW SERVERS", "-c"])
        .arg("SHOW ROUTE UPDATE console_t SET id = 2")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{replica}|replica|t|f|"))),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("primary|{primary}|write|write|it is an UPDATE"))),
        "{stdout}"
    );
    proxy.stop().await;
}

/// A user not in `[admin] users` is refused with 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_open_the_console() {
    let c = cluster();
    let proxy = Proxy::start(c, "[admin]\nusers = [\"someone_else\"]\n").await;
    let err = tokio_postgres::connect(&proxy.console_url(c), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap_or_else(|| panic!("a non-admin user opened the console"));
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28000"),
        "{err}"
    );
    // The same user still reaches the database.
    let app = connect(&proxy.url(c)).await;
    app.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

/// With replay paused on the replica and the primary writing, the console
/// shows the replica's lag, and `SHOW ROUTE` says a read goes to the primary
/// for lag, naming the replica and by how much it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_lagging_replica() {
    let (c, _turn) = replay_cluster().await;
    let proxy = Proxy::start(
        &c,
        "[routing]\nhealth_interval = \"100ms\"\nmax_lag = \"500ms\"\nread_your_writes = \"off\"\n",
    )
    .await;
    let console = connect(&proxy.console_url(&c)).await;
    let route = route_of(&console, "SELECT 1").await;
    assert_eq!(get(&route, "reason"), "read", "{route:?}");
    let writer = connect(&c.url(Node::Primary)).await;
    writer
        .batch_execute("CREATE TABLE IF NOT EXISTS console_lag (id int)")
        .await
        .unwrap();
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    blocking(&c, |c| c.pause_replay()).await.unwrap();
    let mut lagging = None;
    for _ in 0..100 {
        writer
            .batch_execute("INSERT INTO console_lag VALUES (1)")
            .await
            .unwrap();
        let route = route_of(&console, "SELECT 1").await;
        if get(&route, "reason") == "lag" {
            lagging = Some(route);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let servers = rows(&console, "SHOW SERVERS").await;
    blocking(&c, |c| c.resume_replay()).await.unwrap();
    let route = lagging.unwrap_or_else(|| panic!("no lag reason in 10 s: {servers:?}"));
    assert_eq!(get(&route, "target"), "primary");
    let replica = format!("127.0.0.1:{}", c.port(Node::Replica));
    assert!(
        get(&route, "why").contains(&format!("{replica} over max_lag by")),
        "{route:?}"
    );
    let r = servers
        .iter()
        .find(|r| get(r, "server") == replica)
        .unwrap();
    assert_eq!(get(r, "lagging"), "t", "{r:?}");
    let lag_bytes: i64 = get(r, "lag_bytes").parse().unwrap();
    assert!(lag_bytes > 0, "{r:?}");
    proxy.stop().await;
}

/// PAUSE with a transaction open: new work waits, the open transaction
/// goes on; PAUSE returns at its timeout saying one is still running, and
/// at once when none is; RESUME lets the waiting statement run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_open_transactions_and_holds_new_work() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let console = connect(&proxy.console_url(c)).await;
    let open = connect(&proxy.url(c)).await;
    open.batch_execute("CREATE TABLE IF NOT EXISTS console_pause (id int)")
        .await
        .unwrap();
    open.batch_execute("BEGIN; INSERT INTO console_pause VALUES (1)")
        .await
        .unwrap();
    let other = connect(&proxy.url(c)).await;
    let paused = rows(&console, "PAUSE 1").await;
    assert_eq!(get(&paused[0], "paused"), "t");
    assert_eq!(get(&paused[0], "still_running"), "1", "{paused:?}");
    // New work waits...
    let waiting = tokio::spawn(async move { other.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a new statement ran while paused");
    // ...the open transaction finishes.
    tokio::time::timeout(Duration::from_secs(5), open.batch_execute("COMMIT"))
        .await
        .unwrap_or_else(|_| panic!("the open transaction could not finish while paused"))
        .unwrap();
    let paused = rows(&console, "PAUSE").await;
    assert_eq!(get(&paused[0], "still_running"), "0", "{paused:?}");
    assert_eq!(get(&rows(&console, "RESUME").await[0], "status"), "resumed");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("the waiting statement did not run after RESUME"))
        .unwrap()
        .unwrap();
    proxy.stop().await;
}

/// A statement waiting in PAUSE does not hold up a shutdown: the session
/// ends with 57P01 and pgsplit stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_resume() {
    let c = cluster();
    let proxy = Proxy::start(c, "").await;
    let console = connect(&proxy.console_url(c)).await;
    let waiting_client = connect(&proxy.url(c)).await;
    assert_eq!(get(&rows(&console, "PAUSE 1").await[0], "paused"), "t");
    let waiting = tokio::spawn(async move { waiting_client.simple_query("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a new statement ran while paused");
    tokio::time::timeout(Duration::from_secs(10), proxy.stop())
        .await
        .unwrap_or_else(|_| panic!("pgsplit did not stop while a session waited in PAUSE"));
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("the waiting statement got no answer"))
        .unwrap();
    let err = answer.expect_err("a paused statement ran during the shutdown");
    let code = err.as_db_error().map(|e| e.code().code().to_owned());
    assert!(code.as_deref() == Some("57P01") || err.is_closed(), "{err}");
}
