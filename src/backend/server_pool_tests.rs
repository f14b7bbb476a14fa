//! The pool's bookkeeping over in-memory connections: who gets a returned
//! connection, what a waiter that gave up leaves behind, what a broken
//! connection frees. Opening a connection goes to a port nobody listens on,
//! so it fails at once with the real error.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::ServerId;
use crate::config::{NetConfig, ServerUrl};
use crate::net::Stream;

fn pool(max_size: u32, checkout_timeout: Duration) -> Arc<ServerPool> {
    pool_with(Limits {
        max_size,
        checkout_timeout,
        idle_timeout: Duration::from_secs(600),
    })
}

fn pool_with(limits: Limits) -> Arc<ServerPool> {
    let url = ServerUrl::parse("postgres://u@127.0.0.1:1/db?sslmode=disable")
        .unwrap_or_else(|e| panic!("{e}"));
    ServerPool::new(
        Opener {
            target: ServerTarget::new(ServerId(0), url, NetConfig::default()),
            login: Login {
                user: "u".into(),
                database: "db".into(),
            },
            connect_timeout: Duration::from_secs(2),
            sockets: Arc::default(),
        },
        limits,
    )
}

/// Puts `n` idle connections (in memory, never used) in the pool.
fn seed(pool: &Arc<ServerPool>, n: u32) {
    for _ in 0..n {
        let (a, _b) = tokio::io::duplex(64);
        let conn = ServerConn::over(Stream::Memory(Box::new(a)), pool.opener.target.clone());
        pool.lock().open += 1;
        pool.put(Box::new(conn));
    }
}

async fn take(pool: &Arc<ServerPool>) -> Pooled {
    match pool.checkout().await {
        Ok(p) => p,
        Err(e) => panic!("checkout: {e:?}"),
    }
}

/// Lets spawned checkouts run until they wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_returned_connection_goes_to_the_oldest_waiter() {
    let pool = pool(1, Duration::from_secs(5));
    seed(&pool, 1);
    let first = take(&pool).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for who in ["second", "third"] {
        let pool = pool.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let conn = take(&pool).await;
            let _ = tx.send(who);
            // Held briefly, then back.
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
        });
        settle().await;
    }
    assert_eq!(pool.counts(), (0, 1, 2), "(idle, lent, waiting)");
    drop(first);
    assert_eq!(rx.recv().await, Some("second"));
    assert_eq!(rx.recv().await, Some("third"));
    settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.counts(), (1, 0, 0));
}

#[tokio::test]
async fn a_waiter_that_timed_out_leaves_nothing_behind() {
    let pool = pool(1, Duration::from_millis(50));
    seed(&pool, 1);
    let first = take(&pool).await;
    assert!(matches!(pool.checkout().await, Err(Refusal::Exhausted)));
    drop(first);
    assert_eq!(
        pool.counts(),
        (1, 0, 0),
        "back to idle, not to the gone waiter"
    );
    drop(take(&pool).await);
}

#[tokio::test]
async fn a_cancelled_waiter_passes_its_grant_on() {
    let pool = pool(1, Duration::from_secs(5));
    seed(&pool, 1);
    let first = take(&pool).await;
    let mut waiting = Box::pin(pool.checkout());
    // Polled once: it is queued.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut waiting)
            .await
            .is_err()
    );
    assert_eq!(pool.counts(), (0, 1, 1));
    // The connection is granted to it, and it goes away unread.
    drop(first);
    drop(waiting);
    assert_eq!(pool.counts(), (1, 0, 0));
}

#[tokio::test]
async fn a_broken_connection_frees_a_slot_for_a_waiter_who_connects_itself() {
    let pool = pool(1, Duration::from_secs(5));
    seed(&pool, 1);
    let mut first = take(&pool).await;
    first.mark_broken();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout().await.map(|_| ()) })
    };
    settle().await;
    drop(first);
    // Its own connect fails (nobody listens): the real error, at once, not
    // a pool timeout.
    let got = tokio::time::timeout(Duration::from_secs(4), waiter).await;
    match got {
        Ok(Ok(Err(Refusal::Connect(_)))) => {}
        other => panic!("want the connect error, got {other:?}"),
    }
    assert_eq!(pool.counts(), (0, 0, 0), "the slot is free again");
}

#[tokio::test]
async fn idle_connections_age_out() {
    let pool = pool_with(Limits {
        max_size: 3,
        checkout_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_millis(20),
    });
    seed(&pool, 2);
    pool.reap();
    assert_eq!(pool.counts(), (2, 0, 0), "not yet");
    tokio::time::sleep(Duration::from_millis(40)).await;
    pool.reap();
    assert_eq!(pool.counts(), (0, 0, 0));
}
