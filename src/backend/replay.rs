//! Replica replay positions learned on demand (read-your-writes without
//! idling the replica).
//!
//! The health monitor sees each replica's replay position once per probe
//! interval (250 ms by default). A client that wrote a moment ago has a floor
//! ahead of that, so with only the probe its reads would go to the primary
//! until the next probe, and an application writing a few times a second
//! would never read from a replica at all. Here a read whose floor is ahead
//! of what pgsplit knows asks the replica itself (`pg_last_wal_replay_lsn()`),
//! and keeps asking until the replica has caught up or the reader's wait
//! (`read_your_writes_wait`) is over.
//!
//! One query is in flight per replica at a time, on a connection of its own,
//! however many sessions wait: each waiter registers how far it needs the
//! replica to be and until when, and every answer wakes them all. The
//! position only ever grows; routing reads the larger of it and the probe's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{Login, ServerConn, ServerTarget};
use crate::lifecycle::Lifecycle;
use crate::route::router::ReplicaStatus;
use crate::server::{Lsn, ServerId};

const REPLAY_SQL: &[u8] = b"SELECT pg_last_wal_replay_lsn()::text";

/// Longest one round (a login if needed, and the query) may take: a frozen
/// replica must not keep a round in flight for ever.
const ASK_LIMIT: Duration = Duration::from_secs(2);

/// Pause after a failed round before the next login attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// What one replica's waiters need and what is known of it.
struct Entry {
    /// Highest replay position seen (0: none), by probe or query.
    known: watch::Sender<u64>,
    /// The highest floor a waiter needs, and the latest instant any waiter
    /// still waits until: the query loop runs while both say so.
    wanted: u64,
    wanted_until: Option<Instant>,
    /// A query loop runs for this replica.
    polling: bool,
    /// The query connection between loops: logging in again for every
    /// write would cost more than the query.
    conn: Option<ServerConn>,
    /// The known position when a wait last ran out. Until the replica moves
    /// past it (a probe or a query sees it), reads do not wait again: a
    /// paused or stuck replica costs one wait, not one per read.
    stalled: Option<u64>,
}

impl Entry {
    /// The highest replay position known, if any.
    fn position(&self) -> Option<Lsn> {
        let k = *self.known.borrow();
        (k > 0).then_some(Lsn(k))
    }

    fn new() -> Entry {
        Entry {
            known: watch::Sender::new(0),
            wanted: 0,
            wanted_until: None,
            polling: false,
            conn: None,
            stalled: None,
        }
    }
}

/// How a wait for a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The replica has replayed past the floor.
    Reached,
    /// It had not within the wait (or could not be asked).
    TimedOut,
}

/// Shared by the sessions and the health monitor.
pub struct ReplayPositions {
    entries: Mutex<HashMap<ServerId, Entry>>,
    /// Position queries sent (a metrics counter).
    queries: metrics::Counter,
    /// Poll loops run on its tracker, so shutdown waits for them.
    lifecycle: Lifecycle,
    #[cfg(test)]
    sent: std::sync::atomic::AtomicU64,
}

impl ReplayPositions {
    pub fn new(queries: metrics::Counter, lifecycle: Lifecycle) -> Arc<ReplayPositions> {
        Arc::new(ReplayPositions {
            entries: Mutex::new(HashMap::new()),
            queries,
            lifecycle,
            #[cfg(test)]
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a replay position of `id` (from a probe or a query); wakes
    /// the waiters when it moved forward.
    pub fn observe(&self, id: ServerId, lsn: Lsn) {
        let mut entries = self.lock();
        let entry = entries.entry(id).or_insert_with(Entry::new);
        entry.known.send_if_modified(|k| {
            let moved = lsn.0 > *k;
            *k = (*k).max(lsn.0);
            moved
        });
    }

    /// `replicas` as the health snapshot has them, with each replay position
    /// raised to the one learned here when that is further (one lock).
    pub fn raise(&self, replicas: &[ReplicaStatus]) -> Vec<ReplicaStatus> {
        let entries = self.lock();
        replicas
            .iter()
            .map(|r| {
                let known = entries.get(&r.id).and_then(Entry::position);
                ReplicaStatus {
                    replay: r.replay.max(known),
                    ..*r
                }
            })
            .collect()
    }

    /// Waits until replica `target` has replayed `floor`, asking it on
    /// demand, for at most `wait`. Never longer: a replica that does not
    /// answer counts as not caught up.
    pub async fn catch_up(
        self: &Arc<Self>,
        target: &Arc<ServerTarget>,
        login: &Login,
        floor: Lsn,
        wait: Duration,
    ) -> CatchUp {
        let deadline = Instant::now() + wait;
        let mut rx = {
            let mut entries = self.lock();
            let entry = entries.entry(target.id).or_insert_with(Entry::new);
            let known = *entry.known.borrow();
            if known >= floor.0 {
                return CatchUp::Reached;
            }
            if entry.stalled.is_some_and(|s| known <= s) {
                return CatchUp::TimedOut;
            }
            entry.wanted = entry.wanted.max(floor.0);
            entry.wanted_until = Some(entry.wanted_until.map_or(deadline, |u| u.max(deadline)));
            if !entry.polling {
                entry.polling = true;
                let me = self.clone();
                let target = target.clone();
                let login = login.clone();
                self.lifecycle
                    .spawn(async move { me.poll(target, login).await });
            }
            entry.known.subscribe()
        };
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|k| *k >= floor.0)).await;
        match reached {
            Ok(Ok(_)) => CatchUp::Reached,
            _ => {
                if let Some(entry) = self.lock().get_mut(&target.id) {
                    entry.stalled = Some(*entry.known.borrow());
                }
                CatchUp::TimedOut
            }
        }
    }

    /// The query loop of one replica: asks for its replay position until it
    /// covers every waiter's floor or every waiter has given up.
    async fn poll(self: Arc<Self>, target: Arc<ServerTarget>, login: Login) {
        let mut conn = self.lock().get_mut(&target.id).and_then(|e| e.conn.take());
        loop {
            {
                let mut entries = self.lock();
                let Some(entry) = entries.get_mut(&target.id) else {
                    return;
                };
                let known = *entry.known.borrow();
                let waited_for = entry.wanted_until.is_some_and(|u| u > Instant::now());
                if !waited_for || known >= entry.wanted {
                    entry.polling = false;
                    entry.wanted = 0;
                    entry.wanted_until = None;
                    entry.conn = conn.filter(|c| !c.is_broken());
                    return;
                }
            }
            // Bounded by its own limit, not by the waiters' deadlines: a
            // login cut short would be started again (and again) by every
            // round, while waiters stop waiting on their own anyway.
            let asked = tokio::time::timeout(ASK_LIMIT, self.ask(&target, &login, &mut conn)).await;
            match asked {
                Ok(Some(lsn)) => self.observe(target.id, lsn),
                // No answer in time or an error: a new connection next
                // round, after a pause so that a refused connection does not
                // spin (waiters give up on their own meanwhile).
                _ => {
                    conn = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            // The next question goes at once: replay on a healthy replica
            // takes well under a millisecond, less than tokio's smallest
            // sleep, and a pause here is paid by every waiting read (measured:
            // a 1 ms pause cost 45% of the throughput of a 9-read/1-write
            // workload at 8 clients). There is never more than one query in
            // flight per replica, and the loop ends when no read waits.
            tokio::task::yield_now().await;
        }
    }

    async fn ask(
        &self,
        target: &Arc<ServerTarget>,
        login: &Login,
        conn: &mut Option<ServerConn>,
    ) -> Option<Lsn> {
        let c = match conn.take() {
            Some(c) if !c.is_broken() => conn.insert(c),
            _ => {
                let c = ServerConn::connect(target.clone(), login, Duration::from_secs(1))
                    .await
                    .map_err(|e| {
                        tracing::debug!(server = %target.name, error = %e, "cannot ask a replica for its replay position");
                    })
                    .ok()?;
                conn.insert(c)
            }
        };
        self.queries.increment(1);
        #[cfg(test)]
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = c.simple_rows(REPLAY_SQL).await.ok()?;
        let lsn = rows.first()?.first()?.as_deref().and_then(Lsn::parse);
        if lsn.is_none() {
            // NULL: not a replica (promoted?) or replay never started.
            *conn = None;
        }
        lsn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_grow() {
        let p = ReplayPositions::new(metrics::Counter::noop(), Lifecycle::default());
        // Routing sees the larger of the probe's position and the learned one.
        let status = |id, replay| ReplicaStatus {
            id: ServerId(id),
            up: true,
            lagging: false,
            replay,
        };
        let replays = |p: &ReplayPositions| -> Vec<Option<Lsn>> {
            p.raise(&[
                status(3, Some(Lsn(150))),
                status(3, Some(Lsn(250))),
                status(4, None),
            ])
            .iter()
            .map(|r| r.replay)
            .collect()
        };
        assert_eq!(replays(&p), [Some(Lsn(150)), Some(Lsn(250)), None]);
        p.observe(ServerId(3), Lsn(100));
        p.observe(ServerId(3), Lsn(200));
        p.observe(ServerId(3), Lsn(50));
        assert_eq!(replays(&p), [Some(Lsn(200)), Some(Lsn(250)), None]);
    }

    #[tokio::test]
    async fn a_known_position_answers_without_a_query() {
        let p = ReplayPositions::new(metrics::Counter::noop(), Lifecycle::default());
        let url = crate::config::ServerUrl::parse("postgres://u@127.0.0.1:1/db?sslmode=disable")
            .unwrap_or_else(|e| panic!("{e}"));
        let target = ServerTarget::new(ServerId(1), url, crate::config::NetConfig::default());
        let login = Login {
            user: "u".into(),
            database: "db".into(),
        };
        p.observe(ServerId(1), Lsn(500));
        let r = p
            .catch_up(&target, &login, Lsn(400), Duration::from_millis(10))
            .await;
        assert_eq!(r, CatchUp::Reached);
        assert_eq!(p.sent.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Ahead of what is known, and the server cannot be reached (port 1):
        // the wait ends at its deadline, not later.
        let started = Instant::now();
        let r = p
            .catch_up(&target, &login, Lsn(600), Duration::from_millis(50))
            .await;
        assert_eq!(r, CatchUp::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Stalled: the next read does not wait at all until the position moves.
        let r = p
            .catch_up(&target, &login, Lsn(600), Duration::from_secs(3600))
            .await;
        assert_eq!(r, CatchUp::TimedOut);
        p.observe(ServerId(1), Lsn(700));
        let r = p
            .catch_up(&target, &login, Lsn(650), Duration::from_secs(3600))
            .await;
        assert_eq!(r, CatchUp::Reached);
    }
}
