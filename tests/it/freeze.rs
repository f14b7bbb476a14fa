//! Faults that close nothing (issue: "a frozen or vanished server must not
//! hang clients"): the replica's postmaster and all its children stopped
//! with SIGSTOP, as a node that lost power or a pod frozen by a stuck disk
//! looks from outside. Each test freezes a cluster of its own and resumes it
//! in a guard that runs however the test ends.

use std::path::Path;

use futures_util::StreamExt;
use std::time::{Duration, Instant};

use crate::common::own::own_cluster;
use crate::common::{Proxy, connect};
use pgsplit_cluster::Node;

/// The processes of the server whose data directory is `data`: its
/// postmaster (from `postmaster.pid`) and the postmaster's children.
fn server_processes(data: &Path) -> Vec<u32> {
    let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[u32], sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pids:?}");
}

/// Processes stopped with SIGSTOP until dropped (SIGCONT), even when the
/// test panics.
struct Frozen(Vec<u32>);

impl Frozen {
    fn freeze(pids: Vec<u32>) -> Frozen {
        signal(&pids, "STOP");
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "CONT");
    }
}

const READ: &str = "SELECT inet_server_port(), count(*) FROM generate_series(1, 200000)";

/// Reads (and a writer) keep going through a replica freeze: no client
/// error, and no read waits longer than the probe timeout (1 s) plus a health
/// interval (250 ms) plus 1 s. Reads in flight on the replica when it froze
/// are ended when the monitor finds it unanswering and run again on the
/// primary; without that they would wait out the whole freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_flight_on_a_frozen_replica_run_again_elsewhere() {
    const FREEZE: Duration = Duration::from_secs(5);
    let bound = Duration::from_millis(1000 + 250 + 1000);
    let c = own_cluster().await;
    let replica = c.port(Node::Replica);
    connect(&c.url(Node::Primary))
        .await
        .batch_execute("CREATE TABLE freeze_w (id serial, at timestamptz default now())")
        .await
        .unwrap();
    let proxy = Proxy::start(&c, "").await;
    let url = proxy.url(&c);
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(connect(&url).await);
    }
    let writer = connect(&url).await;
    let port: i32 = readers[0].query_one(READ, &[]).await.unwrap().get(0);
    assert_eq!(
        port,
        i32::from(replica),
        "reads go to the replica before the freeze"
    );

    let start = Instant::now();
    let until = start + Duration::from_secs(1) + FREEZE + Duration::from_secs(2);
    let tasks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(async move {
                let (mut slowest, mut errors, mut reads) = (Duration::ZERO, Vec::new(), 0u32);
                while Instant::now() < until {
                    let sent = Instant::now();
                    // Half the clients in simple Query messages.
                    let r = if i % 2 == 0 {
                        client.query_one(READ, &[]).await.map(|_| ())
                    } else {
                        client.simple_query(READ).await.map(|_| ())
                    };
                    slowest = slowest.max(sent.elapsed());
                    reads += 1;
                    if let Err(e) = r {
                        errors.push(e.to_string());
                    }
                }
                (slowest, errors, reads)
            })
        })
        .collect();
    let write_task = tokio::spawn(async move {
        let (mut slowest, mut errors) = (Duration::ZERO, Vec::new());
        while Instant::now() < until {
            let sent = Instant::now();
            if let Err(e) = writer
                .execute("INSERT INTO freeze_w DEFAULT VALUES", &[])
                .await
            {
                errors.push(e.to_string());
            }
            slowest = slowest.max(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, errors)
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen = Frozen::freeze(server_processes(&c.data_dir(Node::Replica)));
    tokio::time::sleep(FREEZE).await;
    drop(frozen);

    let (mut slowest, mut errors, mut reads) = (Duration::ZERO, Vec::new(), 0);
    for t in tasks {
        let (s, e, n) = t.await.unwrap();
        slowest = slowest.max(s);
        errors.extend(e);
        reads += n;
    }
    let (write_slowest, write_errors) = write_task.await.unwrap();
    eprintln!(
        "replica frozen {FREEZE:?}: {reads} reads, slowest {slowest:?}; writes slowest {write_slowest:?}"
    );
    assert!(errors.is_empty(), "read errors: {errors:?}");
    assert!(write_errors.is_empty(), "write errors: {write_errors:?}");
    assert!(
        slowest <= bound,
        "a read waited {slowest:?} (bound {bound:?}): reads in flight on the frozen replica were not rescued"
    );
    proxy.stop().await;
}

/// A read whose answer was streaming to the client when the replica froze
/// cannot run again (part of it is out): it fails with 08006 once the
/// monitor finds the replica unanswering, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_frozen_mid_answer_fails_and_the_session_goes_on() {
    let c = own_cluster().await;
    let replica = i32::from(c.port(Node::Replica));
    let proxy = Proxy::start(&c, "").await;
    let client = connect(&proxy.url(&c)).await;
    let port: i32 = client.query_one(READ, &[]).await.unwrap().get(0);
    assert_eq!(port, replica);
    // Rows for many seconds; the freeze comes once the first has reached
    // the client, so that part of the answer is out.
    let long = "SELECT inet_server_port(), a, b, repeat('x', 200) \
                FROM generate_series(1, 1000000) a, generate_series(1, 100) b";
    let no_params = std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>();
    let sent = Instant::now();
    let rows = client.query_raw(long, no_params).await.unwrap();
    let mut rows = std::pin::pin!(rows);
    let first = tokio::time::timeout(Duration::from_secs(30), rows.next())
        .await
        .unwrap_or_else(|_| panic!("no first row in 30 s"));
    let port: i32 = first.unwrap().unwrap().get(0);
    assert_eq!(port, replica);
    let frozen = Frozen::freeze(server_processes(&c.data_dir(Node::Replica)));
    let frozen_at = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(row) = rows.next().await {
            if let Err(e) = row {
                return Some(e);
            }
        }
        None
    })
    .await;
    let took = frozen_at.elapsed();
    drop(frozen);
    let err = match end {
        Err(_) => panic!("the read neither finished nor failed in 30 s"),
        Ok(None) => panic!("the read finished in {:?}", sent.elapsed()),
        Ok(Some(e)) => e,
    };
    let code = err.as_db_error().map(|e| e.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("08006"), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "the read failed only after {took:?}"
    );
    // Same session, next statement.
    let n: i64 = client
        .query_one("SELECT count(*) FROM generate_series(1, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
    proxy.stop().await;
}

/// Runs `READ` on `client` until the replica answers it (pgsplit has seen
/// the replica replay the latest floor), for at most 10 s.
async fn until_on_replica(client: &tokio_postgres::Client, replica: i32) {
    for _ in 0..200 {
        let port: i32 = client.query_one(READ, &[]).await.unwrap().get(0);
        if port == replica {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reads did not reach the replica in 10 s");
}

/// The SQLSTATE of a failed statement, if the server (or pgsplit) sent one.
fn code_of<T: std::fmt::Debug>(r: &Result<T, tokio_postgres::Error>) -> Option<String> {
    r.as_ref()
        .err()
        .and_then(|e| e.as_db_error())
        .map(|e| e.code().code().to_owned())
}

/// The primary freezes: reads of open sessions keep going to the replica
/// with no wait (read-your-writes on, the default), a write sent once the
/// monitor has seen the primary miss a probe waits for a primary and fails
/// with 57P03 after `primary_wait`, and once the primary is back writes work
/// again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_stops_writes_not_reads() {
    crate::common::logs();
    let c = own_cluster().await;
    let replica = i32::from(c.port(Node::Replica));
    connect(&c.url(Node::Primary))
        .await
        .batch_execute("CREATE TABLE freeze_p (id int)")
        .await
        .unwrap();
    let proxy = Proxy::start(&c, "[routing]\nprimary_wait = \"2s\"\n").await;
    let url = proxy.url(&c);
    let reader = connect(&url).await;
    let writer = connect(&url).await;
    writer
        .execute("INSERT INTO freeze_p VALUES (1)", &[])
        .await
        .unwrap();
    // The steady state of an application: its reads reach the replica,
    // which has replayed its writes.
    until_on_replica(&reader, replica).await;
    let frozen = Frozen::freeze(server_processes(&c.data_dir(Node::Primary)));
    let start = Instant::now();
    let reads = async {
        let mut slowest = Duration::ZERO;
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(4) {
            let sent = Instant::now();
            let Ok(row) =
                tokio::time::timeout(Duration::from_secs(5), reader.query_one(READ, &[])).await
            else {
                return (n, Duration::MAX);
            };
            let port: i32 = row.unwrap().get(0);
            slowest = slowest.max(sent.elapsed());
            assert_eq!(port, replica);
            n += 1;
        }
        (n, slowest)
    };
    let write = async {
        // Sent once the monitor has seen the primary miss a probe (its
        // timeout is 1 s, its interval 250 ms).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            writer.execute("INSERT INTO freeze_p VALUES (2)", &[]),
        )
        .await;
        (r, sent.elapsed())
    };
    let newcomer = async {
        // A client that connects once the primary has missed a probe: it is
        // greeted with what the primary said last, and reads from the
        // replica.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let client = connect(&url).await;
            client
                .query_one(READ, &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        })
        .await;
        (read, sent.elapsed())
    };
    let ((n, slowest), (write, took), (newcomer, newcomer_took)) =
        tokio::join!(reads, write, newcomer);
    let readyz = crate::common::http_get(proxy.admin, "/readyz").await;
    drop(frozen);
    eprintln!(
        "primary frozen: {n} reads, slowest {slowest:?}; new client read in {newcomer_took:?}; \
         write answered in {took:?}: {write:?}"
    );
    assert!(slowest < Duration::from_secs(1), "a read took {slowest:?}");
    let newcomer = newcomer.unwrap_or_else(|_| panic!("a new client hung for 5 s"));
    assert_eq!(newcomer.unwrap(), replica, "the new client's read");
    assert!(
        newcomer_took < Duration::from_secs(1),
        "a new client took {newcomer_took:?} to connect and read"
    );
    assert!(n >= 10, "only {n} reads in 4 s");
    let write = write.unwrap_or_else(|_| panic!("the write hung for {took:?}"));
    assert_eq!(code_of(&write).as_deref(), Some("57P03"), "{write:?}");
    assert!(
        took >= Duration::from_millis(1900),
        "the write failed before primary_wait: {took:?}"
    );
    // Back: writes work again, on the same session, without a restart.
    let mut ok = false;
    for _ in 0..100 {
        if writer
            .execute("INSERT INTO freeze_p VALUES (3)", &[])
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "writes did not come back after the primary resumed");
    let readyz = readyz.unwrap();
    assert!(readyz.contains(" 503"), "{readyz}");
    let ready_again = crate::common::http_get(proxy.admin, "/readyz")
        .await
        .unwrap();
    assert!(ready_again.contains(" 200"), "{ready_again}");
    proxy.stop().await;
}

/// A read on the primary only because the replica is behind its floor (the
/// replica's replay paused, so the floor stays ahead) is in flight when the
/// primary freezes: it is ended when the monitor sees the primary miss a
/// probe and runs again on the replica, stale as it is, instead of waiting
/// out the freeze. No read waits longer than the probe timeout plus one
/// health interval plus 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_in_flight_on_a_frozen_primary_runs_again_on_the_replica() {
    crate::common::logs();
    let c = own_cluster().await;
    let primary = i32::from(c.port(Node::Primary));
    let replica = i32::from(c.port(Node::Replica));
    let replay = |sql: &'static str| {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            c.psql(Node::Replica, pgsplit_cluster::DATABASE, sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    };
    connect(&c.url(Node::Primary))
        .await
        .batch_execute("CREATE TABLE freeze_r (id int)")
        .await
        .unwrap();
    tokio::task::spawn_blocking({
        let c = c.clone();
        move || c.wait_caught_up()
    })
    .await
    .unwrap()
    .unwrap();
    replay("SELECT pg_wal_replay_pause()").await.unwrap();
    let proxy = Proxy::start(&c, "").await;
    proxy.wait_replica_usable().await;
    let client = connect(&proxy.url(&c)).await;
    client
        .batch_execute("INSERT INTO freeze_r VALUES (1)")
        .await
        .unwrap();
    // Behind the floor: the primary serves this session's reads.
    let port: i32 = client.query_one(READ, &[]).await.unwrap().get(0);
    assert_eq!(port, primary);
    // In flight when the monitor notices the freeze: it waits on the
    // primary for a lock taken there (after the replica paused, so the
    // replica knows nothing of it).
    let locker = connect(&c.url(Node::Primary)).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE freeze_r IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let long = "SELECT inet_server_port(), count(*) FROM freeze_r";
    let frozen_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let freeze = {
        let c = c.clone();
        let frozen_at = frozen_at.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let f = Frozen::freeze(server_processes(&c.data_dir(Node::Primary)));
            *frozen_at.lock().unwrap() = Some(Instant::now());
            f
        }
    };
    let (read, frozen) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), client.query_one(long, &[])),
        freeze
    );
    let took = frozen_at.lock().unwrap().map(|t| t.elapsed());
    drop(frozen);
    let row = read
        .unwrap_or_else(|_| panic!("the read hung for 30 s"))
        .unwrap();
    let port: i32 = row.get(0);
    eprintln!("read answered by port {port}, {took:?} after the freeze");
    assert_eq!(port, replica, "answered again by the replica");
    let took = took.unwrap_or_default();
    assert!(
        took < Duration::from_millis(2250),
        "rescued only {took:?} after the freeze (probe timeout 1 s + interval 250 ms + 1 s)"
    );
    drop(locker);
    replay("SELECT pg_wal_replay_resume()").await.unwrap();
    proxy.stop().await;
}

/// A write in flight on a primary that freezes is left to finish while the
/// freeze may be short (it may have committed; only the server can say),
/// but not for ever: once the primary has been silent for
/// `net.tcp_user_timeout`, its connection is ended and the client sees 08006,
/// as it would when TCP gives up on a host that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_in_flight_on_a_frozen_primary_ends_after_the_user_timeout() {
    crate::common::logs();
    let c = own_cluster().await;
    let proxy = Proxy::start(&c, "[net]\ntcp_user_timeout = \"2s\"\n").await;
    proxy.wait_replica_usable().await;
    let client = connect(&proxy.url(&c)).await;
    let frozen = {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (
                Frozen::freeze(server_processes(&c.data_dir(Node::Primary))),
                Instant::now(),
            )
        }
    };
    let (write, (frozen, frozen_at)) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(30),
            client.batch_execute("CREATE TABLE freeze_w AS SELECT pg_sleep(20)::text AS s")
        ),
        frozen
    );
    let took = frozen_at.elapsed();
    drop(frozen);
    let write = write.unwrap_or_else(|_| panic!("the write hung for 30 s"));
    eprintln!("write in flight ended {took:?} after the freeze: {write:?}");
    assert_eq!(code_of(&write).as_deref(), Some("08006"), "{write:?}");
    // Missed probe (1 s) + user timeout (2 s) + a round; far from the 20 s
    // the statement itself would take.
    assert!(
        took > Duration::from_secs(2) && took < Duration::from_secs(8),
        "ended {took:?} after the freeze"
    );
    proxy.stop().await;
}
