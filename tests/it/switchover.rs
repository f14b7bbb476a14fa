//! A planned switchover with no client errors (issue: "the operator's
//! side", item 2): under a steady read/write load, the console's `PAUSE`,
//! the replica promoted, the old primary stopped, `RESUME`. Clients wait
//! while paused instead of failing; no acknowledged write is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::common::own::{blocking, own_cluster};
use crate::common::{Proxy, connect};
use pgsplit_cluster::Node;

/// The first column of the first row of a console command.
async fn first_value(console: &tokio_postgres::Client, command: &str) -> String {
    let messages = console
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    messages
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_under_load_costs_no_client_error() {
    crate::common::logs();
    let c = own_cluster().await;
    connect(&c.url(Node::Primary))
        .await
        .batch_execute("CREATE TABLE switched (id bigint primary key, writer int)")
        .await
        .unwrap();
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    let proxy = Proxy::start(&c, "[routing]\nprimary_wait = \"10s\"\n").await;
    let url = proxy.url(&c);
    let console = connect(&proxy.console_url(&c)).await;

    // Two writers and two readers, as fast as they can, until told to stop;
    // every error is counted, every acknowledged write remembered, and the
    // slowest statement (the time a client waited) measured.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for writer in 0..2i32 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let (mut acked, mut errors, mut slowest) = (Vec::new(), Vec::new(), Duration::ZERO);
            let mut id = i64::from(writer) * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                match client
                    .execute("INSERT INTO switched VALUES ($1, $2)", &[&id, &writer])
                    .await
                {
                    Ok(_) => acked.push(id),
                    Err(e) => errors.push(e.to_string()),
                }
                slowest = slowest.max(sent.elapsed());
            }
            (acked, errors, slowest)
        }));
    }
    for _ in 0..2 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let (mut errors, mut slowest) = (Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if let Err(e) = client.query_one("SELECT count(*) FROM switched", &[]).await {
                    errors.push(e.to_string());
                }
                slowest = slowest.max(sent.elapsed());
            }
            (Vec::new(), errors, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The runbook: PAUSE (returns once running transactions are done), let
    // the replica catch up, promote it, stop the old primary, wait until
    // pgsplit sees the new primary, RESUME.
    let paused_at = Instant::now();
    let still_running = {
        let messages = console.simple_query("PAUSE 10").await.unwrap();
        messages
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get("still_running").map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(
        still_running, "0",
        "PAUSE returned with transactions running"
    );
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    blocking(&c, |c| c.promote(Node::Replica)).await.unwrap();
    blocking(&c, |c| c.stop(Node::Primary, false))
        .await
        .unwrap();
    let new_primary = format!("127.0.0.1:{}", c.port(Node::Replica));
    let mut seen = false;
    for _ in 0..200 {
        let servers = console.simple_query("SHOW SERVERS").await.unwrap();
        seen = servers.iter().any(|m| match m {
            SimpleQueryMessage::Row(r) => {
                r.get("server") == Some(new_primary.as_str()) && r.get("role") == Some("primary")
            }
            _ => false,
        });
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "pgsplit did not see the promoted replica as primary");
    assert_eq!(first_value(&console, "RESUME").await, "resumed");
    let paused_for = paused_at.elapsed();
    // Load goes on against the new primary for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    for w in workers {
        let (a, e, s) = w.await.unwrap();
        acked.extend(a);
        errors.extend(e);
        slowest = slowest.max(s);
    }
    let on_new: i64 = connect(&c.url(Node::Replica))
        .await
        .query_one("SELECT count(*) FROM switched", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "switchover: paused for {paused_for:?}; {} writes acknowledged, {} on the new primary; \
         {} client errors; the longest a client waited: {slowest:?}",
        acked.len(),
        on_new,
        errors.len()
    );
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(
        on_new,
        i64::try_from(acked.len()).unwrap(),
        "acknowledged writes lost"
    );
    assert!(acked.len() > 100, "too little load: {}", acked.len());
    proxy.stop().await;
}
