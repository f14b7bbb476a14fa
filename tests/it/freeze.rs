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
