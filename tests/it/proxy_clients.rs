//! psql and pgbench through pgsplit, as child processes, against the shared
//! primary + replica.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::common;
use crate::common::{Proxy, cluster, connect, start};
use pgsplit_cluster::{Cluster, Node};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

/// Longest a psql or pgbench run may take before the test gives up on it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

/// A client binary: the cluster's bindir first (same major version as the
/// servers), then PATH.
fn binary(c: &Cluster, name: &str) -> PathBuf {
    let local = c.bindir().join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// A psql or pgbench command aimed at pgsplit, password in the environment.
fn client_command(c: &Cluster, proxy: &Proxy, program: &str) -> Command {
    let mut cmd = Command::new(binary(c, program));
    cmd.env("PGPASSWORD", c.password())
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env("PGSSLMODE", "disable")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(proxy.addr.port().to_string())
        .arg("-U")
        .arg(c.user())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, what: &str) -> Output {
    timeout(CHILD_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no exit within {CHILD_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `psql -X -At` with one `-c` per command, through pgsplit; stdin from `input`.
async fn psql(c: &Cluster, proxy: &Proxy, commands: &[&str], input: Option<&[u8]>) -> Output {
    let mut cmd = client_command(c, proxy, "psql");
    cmd.args(["-X", "-A", "-t", "-d", pgsplit_cluster::DATABASE]);
    for command in commands {
        cmd.arg("-c").arg(command);
    }
    let what = format!("psql {commands:?}");
    match input {
        None => {
            cmd.stdin(std::process::Stdio::null());
            run(cmd, &what).await
        }
        Some(data) => {
            use tokio::io::AsyncWriteExt;
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(data).await.expect("writing psql's stdin");
            drop(stdin);
            timeout(CHILD_TIMEOUT, child.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("{what}: no exit within {CHILD_TIMEOUT:?}"))
                .unwrap_or_else(|e| panic!("{what}: {e}"))
        }
    }
}

/// psql that must succeed; returns its stdout, trimmed.
async fn psql_ok(c: &Cluster, proxy: &Proxy, commands: &[&str]) -> String {
    let out = psql(c, proxy, commands, None).await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "psql {commands:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout.trim().to_owned()
}

/// Runs SQL on the primary directly (superuser over its socket).
async fn on_primary(c: &'static Cluster, sql: &'static str) -> String {
    tokio::task::spawn_blocking(move || c.psql(Node::Primary, pgsplit_cluster::DATABASE, sql))
        .await
        .expect("spawn_blocking")
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ----- psql -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_read_runs_on_the_replica() {
    let c = cluster();
    let proxy = start(c, "").await;
    let replica = c.port(Node::Replica).to_string();
    let primary = c.port(Node::Primary).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let port = psql_ok(c, &proxy, &["SELECT inet_server_port()"]).await;
        if port == replica {
            break;
        }
        assert_eq!(port, primary, "psql printed an unknown port");
        assert!(
            Instant::now() < deadline,
            "psql's read never ran on the replica"
        );
        sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_write_and_read_back() {
    let c = cluster();
    let proxy = start(c, "").await;
    let out = psql_ok(
        c,
        &proxy,
        &[
            "DROP TABLE IF EXISTS cli_psql; CREATE TABLE cli_psql (id int PRIMARY KEY, v text); \
           INSERT INTO cli_psql VALUES (1, 'one'), (2, 'two'), (3, 'trois')",
        ],
    )
    .await;
    assert_eq!(out, "DROP TABLE\nCREATE TABLE\nINSERT 0 3");
    assert_eq!(
        on_primary(c, "SELECT string_agg(v, ',' ORDER BY id) FROM cli_psql").await,
        "one,two,trois"
    );
    // Read back through pgsplit: read-your-writes holds across connections.
    assert_eq!(
        psql_ok(
            c,
            &proxy,
            &["SELECT string_agg(v, ',' ORDER BY id) FROM cli_psql"]
        )
        .await,
        "one,two,trois"
    );
    // Several -c in one session: a transaction runs on the primary and sees
    // its own uncommitted row.
    let out = psql_ok(
        c,
        &proxy,
        &[
            "BEGIN",
            "INSERT INTO cli_psql VALUES (4, 'four')",
            "SELECT count(*) || ':' || inet_server_port() FROM cli_psql",
            "ROLLBACK",
        ],
    )
    .await;
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        vec![
            "BEGIN".to_owned(),
            "INSERT 0 1".to_owned(),
            format!("4:{}", c.port(Node::Primary)),
            "ROLLBACK".to_owned()
        ],
        "output: {out}"
    );
    assert_eq!(on_primary(c, "SELECT count(*) FROM cli_psql").await, "3");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_and_out() {
    let c = cluster();
    connect(&c.url(Node::Primary))
        .await
        .batch_execute(
            "DROP TABLE IF EXISTS cli_copy; CREATE TABLE cli_copy (id int PRIMARY KEY, name text)",
        )
        .await
        .expect("create cli_copy");
    let proxy = start(c, "").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let rows: Vec<String> = (1..=1500).map(|i| format!("{i},name {i} ö")).collect();
    std::fs::write(&input, rows.join("\n") + "\n").expect("write in.csv");

    let copy_in = format!(
        "\\copy cli_copy FROM '{}' WITH (FORMAT csv)",
        input.display()
    );
    let out = psql_ok(c, &proxy, &[&copy_in]).await;
    assert_eq!(out, "COPY 1500");
    assert_eq!(on_primary(c, "SELECT count(*) FROM cli_copy").await, "1500");

    let copy_out = format!(
        "\\copy (SELECT id, name FROM cli_copy ORDER BY id) TO '{}' WITH (FORMAT csv)",
        output.display()
    );
    let out = psql_ok(c, &proxy, &[&copy_out]).await;
    assert_eq!(out, "COPY 1500");
    let back = std::fs::read_to_string(&output).expect("read out.csv");
    assert_eq!(back.lines().collect::<Vec<_>>(), rows);

    // COPY FROM STDIN fed on psql's stdin (simple protocol).
    let data = b"2001,piped one\n2002,piped two\n\\.\n";
    let out = psql(
        c,
        &proxy,
        &["COPY cli_copy FROM STDIN WITH (FORMAT csv)"],
        Some(data),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "COPY FROM STDIN: {stdout} {stderr}");
    assert_eq!(stdout.trim(), "COPY 2");
    // And COPY TO STDOUT, printed by psql.
    let out = psql_ok(
        c,
        &proxy,
        &["COPY (SELECT name FROM cli_copy WHERE id > 2000 ORDER BY id) TO STDOUT"],
    )
    .await;
    assert_eq!(out, "piped one\npiped two");

    // A bad row early in a long COPY: the server fails it while psql is still
    // sending; the rest of psql's data is ignored and the session goes on.
    let mut data = b"3001,ok\nnot a number,bad\n".to_vec();
    for i in 0..50_000 {
        data.extend_from_slice(format!("{},filler\n", 10_000 + i).as_bytes());
    }
    data.extend_from_slice(b"\\.\n");
    let out = psql(
        c,
        &proxy,
        &[
            "COPY cli_copy FROM STDIN WITH (FORMAT csv)",
            "SELECT 'after ' || count(*) FROM cli_copy WHERE id >= 3000",
        ],
        Some(&data),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(stderr.contains("invalid input syntax"), "stderr: {stderr}");
    assert_eq!(stdout.trim(), "after 0", "stderr: {stderr}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_notices_and_errors() {
    let c = cluster();
    let proxy = start(c, "").await;
    let out = psql(
        c,
        &proxy,
        &["DO $$ BEGIN RAISE NOTICE 'hi from psql'; END $$"],
        None,
    )
    .await;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("NOTICE:  hi from psql"), "stderr: {stderr}");

    let mut cmd = client_command(c, &proxy, "psql");
    cmd.args([
        "-X",
        "-At",
        "-v",
        "VERBOSITY=verbose",
        "-d",
        pgsplit_cluster::DATABASE,
        "-c",
        "SELECT 1 / 0",
    ]);
    let out = run(cmd, "psql division by zero").await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("ERROR:  22012"), "stderr: {stderr}");

    // A failing statement in the middle of a session does not end it.
    let out = psql(c, &proxy, &["SELEC 1", "SELECT 'still here'"], None).await;
    let (stdout, stderr) = text(&out);
    assert!(stderr.contains("syntax error"), "stderr: {stderr}");
    assert_eq!(stdout.trim(), "still here");
    proxy.stop().await;
}

// ----- pgbench -----

/// pgsplit's routing, fallback and retry counters, for failure messages.
fn routing_metrics(proxy: &Proxy) -> String {
    proxy
        .ctx
        .metrics
        .render(&proxy.ctx.health.get(), &[])
        .lines()
        .filter(|l| {
            [
                "pgsplit_units_routed_total",
                "pgsplit_fallbacks_total",
                "pgsplit_retries_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until pgsplit's health view has the replica replayed past the
/// pod-wide read-your-writes floor.
async fn wait_floor_reached(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let floor = proxy
            .ctx
            .pod_floor
            .load(std::sync::atomic::Ordering::Acquire);
        let snapshot = proxy.ctx.health.get();
        let replays: Vec<u64> = snapshot
            .replicas
            .iter()
            .map(|r| r.replay.map_or(0, |l| l.0))
            .collect();
        if replays.iter().all(|r| *r >= floor) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never replayed up to pgsplit's read-your-writes floor \
             {floor:X} (replica replay positions {replays:X?})"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of `xact_commit` over all databases of `node` (direct, superuser).
async fn xact_commits(c: &'static Cluster, node: Node) -> i64 {
    let out = tokio::task::spawn_blocking(move || {
        c.psql(
            node,
            "postgres",
            "SELECT sum(xact_commit)::bigint FROM pg_stat_database",
        )
    })
    .await
    .expect("spawn_blocking")
    .unwrap_or_else(|e| panic!("xact_commit on {node}: {e}"));
    out.parse()
        .unwrap_or_else(|e| panic!("xact_commit {out:?}: {e}"))
}

fn check_pgbench(out: &Output, what: &str, expected: u32) {
    let (stdout, stderr) = text(out);
    let all = format!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{all}",
        out.status
    );
    assert!(
        all.contains("number of failed transactions: 0"),
        "{what}: no `number of failed transactions: 0` line:\n{all}"
    );
    assert!(
        all.contains(&format!(
            "number of transactions actually processed: {expected}/{expected}"
        )),
        "{what}: not every transaction was processed:\n{all}"
    );
    let errors: Vec<&str> = all
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("error"))
        .collect();
    assert!(errors.is_empty(), "{what}: error lines: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_in_every_protocol_mode() {
    let c = cluster();
    let proxy = start(c, "").await;
    const CLIENTS: u32 = 4;
    const PER_CLIENT: u32 = 200;

    let mut init = client_command(c, &proxy, "pgbench");
    init.args(["-i", "-s", "1", "-q", pgsplit_cluster::DATABASE]);
    let out = run(init, "pgbench -i").await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "pgbench -i failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("done in") || stdout.contains("done in"),
        "pgbench -i did not finish:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        on_primary(c, "SELECT count(*) FROM pgbench_accounts").await,
        "100000"
    );

    for mode in ["simple", "extended", "prepared"] {
        for select_only in [false, true] {
            let what = format!("pgbench -M {mode}{}", if select_only { " -S" } else { "" });
            let before = if select_only {
                // The previous run's writes set a read-your-writes floor; reads
                // rightly go to the primary until pgsplit has seen the replica
                // replay past it. Start the read-only run after that.
                wait_floor_reached(&proxy).await;
                Some(xact_commits(c, Node::Replica).await)
            } else {
                None
            };
            let mut cmd = client_command(c, &proxy, "pgbench");
            cmd.args(["-n", "-c", &CLIENTS.to_string(), "-j", "2"])
                .args(["-t", &PER_CLIENT.to_string(), "-M", mode]);
            if select_only {
                cmd.arg("-S");
            }
            cmd.arg(pgsplit_cluster::DATABASE);
            let out = run(cmd, &what).await;
            check_pgbench(&out, &what, CLIENTS * PER_CLIENT);

            if let Some(before) = before {
                // The replica's statistics are flushed by its backends within
                // seconds of going idle; wait for them.
                let want = i64::from(CLIENTS * PER_CLIENT);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let grew = xact_commits(c, Node::Replica).await - before;
                    if grew >= want {
                        break;
                    }
                    if Instant::now() >= deadline {
                        panic!(
                            "{what}: the replica committed only {grew} transactions, \
                             fewer than the {want} read-only ones pgbench ran; \
                             pgsplit's routing counters:\n{}",
                            routing_metrics(&proxy)
                        );
                    }
                    sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    // The tpcb-like runs wrote on the primary: one history row per transaction.
    assert_eq!(
        on_primary(c, "SELECT count(*) FROM pgbench_history").await,
        (3 * CLIENTS * PER_CLIENT).to_string()
    );
    // And a tokio-postgres client still works through the same pgsplit.
    let client = connect(&proxy.url(c)).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM pgbench_branches", &[])
        .await
        .expect("after pgbench")
        .get(0);
    assert_eq!(n, 1);
    proxy.stop().await;
}

/// libpq 18 connection options with TLS off on both sides (pgsplit's default
/// `[tls] mode = "disable"`, a server without `ssl`): each row has the same
/// kind of outcome through pgsplit as directly against PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_options_behave_as_against_postgres_without_tls() {
    let c = cluster();
    let proxy = start(c, "").await;
    let mut rows = common::libpq::option_rows();
    for (name, option) in [
        ("sslmode=disable", "sslmode=disable"),
        ("sslmode=allow", "sslmode=allow"),
        ("sslmode=prefer", "sslmode=prefer"),
        ("sslmode=require", "sslmode=require"),
    ] {
        rows.push((name, option.to_owned()));
    }
    rows.push(("sslnegotiation=direct", "sslnegotiation=direct".to_owned()));
    let through =
        common::libpq::compare("TLS off", &c.url(Node::Primary), &proxy.url(c), "", &rows).await;
    let protocol_32 = rows
        .iter()
        .position(|(n, _)| *n == "protocol 3.2")
        .map(|i| &through[i])
        .unwrap_or_else(|| panic!("protocol row"));
    assert_eq!(protocol_32.protocol, 30_002, "{protocol_32:?}");
    proxy.stop().await;
}
