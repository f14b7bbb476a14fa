//! One pool of authenticated connections to one server, for one (user,
//! database): pgsplit's own, in place of bb8.
//!
//! Under transaction pooling a session checks a connection out for every
//! unit and back after it, so the pool is on the per-statement path. bb8 is
//! made for long checkouts: each get and put went through its own lock, its
//! `Notify`, its statistics, and pgsplit added a `Notify` per checkout to
//! learn of connect failures, together most of what transaction mode cost
//! over session mode per query. And its waiters were only as fair as a
//! `Notify`: a woken waiter could lose the connection to a task that asked
//! again at once. Here one lock guards everything, a returned connection
//! goes straight to the oldest waiter (first come, first served), and a
//! checkout that opens a connection sees its own connect error.
//!
//! - Idle connections are reused last-in first-out: the warmest connection
//!   serves next, and the coldest ones age out after `idle_timeout`.
//! - A waiter is granted either a connection or a slot: the right to open
//!   one (when a connection was dropped broken, or a connect failed, while
//!   others waited). A grant that reaches a waiter that has gone (timed out,
//!   or its client left) is passed on, so no slot is ever lost.
//! - Connecting happens in the checkout's task, bounded by `connect_timeout`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::BackendError;
use super::conn::{Login, ServerConn, ServerTarget};
use super::sockets::Sockets;

/// What the pool needs to open connections.
pub(crate) struct Opener {
    pub target: Arc<ServerTarget>,
    pub login: Login,
    pub connect_timeout: Duration,
    pub sockets: Arc<Sockets>,
}

/// Bounds of one pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_size: u32,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a waiter is given.
enum Grant {
    Conn(Box<ServerConn>),
    /// The right to open a connection (counted in `open` already).
    Slot,
}

struct Idle {
    conn: Box<ServerConn>,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Oldest first; reused from the back.
    idle: VecDeque<Idle>,
    /// Oldest first, with when each began to wait; served from the front.
    waiters: VecDeque<(Instant, oneshot::Sender<Grant>)>,
    /// Connections that exist or are being opened: idle, lent, connecting.
    open: u32,
}

/// How a checkout failed.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Every connection stayed busy for the whole `checkout_timeout`.
    Exhausted,
    /// Opening a connection failed.
    Connect(BackendError),
}

pub(crate) struct ServerPool {
    state: Mutex<State>,
    opener: Opener,
    limits: Limits,
    /// The parameters the server reported at the last login.
    greeting: Mutex<Option<super::pool::Params>>,
}

/// A connection lent by a pool; it goes back when dropped (or is discarded
/// when marked broken).
pub struct Pooled {
    conn: Option<Box<ServerConn>>,
    pool: Arc<ServerPool>,
}

impl std::ops::Deref for Pooled {
    type Target = ServerConn;
    #[inline]
    fn deref(&self) -> &ServerConn {
        // Present from checkout until drop.
        self.conn.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Pooled {
    #[inline]
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled({:?})", self.conn)
    }
}

/// A waiter's end of its grant. Dropped without being read (the checkout
/// timed out or was cancelled), it hands back whatever was granted.
struct Waiting {
    rx: oneshot::Receiver<Grant>,
    pool: Arc<ServerPool>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(grant) = self.rx.try_recv() {
            self.pool.pass_on(grant);
        }
    }
}

impl ServerPool {
    pub(crate) fn new(opener: Opener, limits: Limits) -> Arc<ServerPool> {
        Arc::new(ServerPool {
            state: Mutex::new(State::default()),
            opener,
            limits,
            greeting: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, a new one, or the next one returned, waiting at
    /// most `checkout_timeout` for one to come back.
    pub(crate) async fn checkout(self: &Arc<Self>) -> Result<Pooled, Refusal> {
        let waiting = {
            let mut state = self.lock();
            let now = Instant::now();
            while let Some(mut idle) = state.idle.pop_back() {
                // Cheap checks only (no round trip): closed by the server, or
                // it spoke unprompted while idle (a shutdown notice).
                if now.saturating_duration_since(idle.since) < self.limits.idle_timeout
                    && idle.conn.is_idle_and_open()
                {
                    return Ok(self.lend(idle.conn));
                }
                state.open = state.open.saturating_sub(1);
            }
            if state.open < self.limits.max_size {
                state.open += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                // Waiters that gave up are dropped here as well as when a
                // grant passes them by.
                state.waiters.retain(|(_, w)| !w.is_closed());
                state.waiters.push_back((now, tx));
                Some(Waiting {
                    rx,
                    pool: self.clone(),
                })
            }
        };
        let Some(mut waiting) = waiting else {
            return self.open().await;
        };
        let granted = tokio::time::timeout(self.limits.checkout_timeout, &mut waiting.rx).await;
        let grant = match granted {
            Ok(Ok(grant)) => grant,
            // A grant may have arrived as the wait ran out: taken, not lost.
            _ => {
                waiting.rx.close();
                match waiting.rx.try_recv() {
                    Ok(grant) => grant,
                    Err(_) => return Err(Refusal::Exhausted),
                }
            }
        };
        match grant {
            Grant::Conn(conn) => Ok(self.lend(conn)),
            Grant::Slot => self.open().await,
        }
    }

    fn lend(self: &Arc<Self>, conn: Box<ServerConn>) -> Pooled {
        Pooled {
            conn: Some(conn),
            pool: self.clone(),
        }
    }

    /// Opens a connection in a slot already counted in `open`.
    async fn open(self: &Arc<Self>) -> Result<Pooled, Refusal> {
        let o = &self.opener;
        match ServerConn::connect(o.target.clone(), &o.login, o.connect_timeout).await {
            Ok(mut conn) => {
                conn.register(&o.sockets);
                let mut params: Vec<_> = conn
                    .params()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                params.sort();
                *self.greeting.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(params));
                Ok(self.lend(Box::new(conn)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "server connection failed");
                // The slot goes to the next waiter, who tries for itself and
                // sees its own error rather than waiting out its timeout.
                self.pass_on(Grant::Slot);
                Err(Refusal::Connect(e))
            }
        }
    }

    /// A connection back from a session.
    fn put(&self, conn: Box<ServerConn>) {
        if conn.is_broken() {
            self.pass_on(Grant::Slot);
        } else {
            self.pass_on(Grant::Conn(conn));
        }
    }

    /// Gives `grant` to the oldest waiter still waiting; with none, a
    /// connection goes idle and a slot is freed.
    fn pass_on(&self, mut grant: Grant) {
        let mut state = self.lock();
        while let Some((_, waiter)) = state.waiters.pop_front() {
            match waiter.send(grant) {
                Ok(()) => return,
                Err(back) => grant = back,
            }
        }
        match grant {
            Grant::Conn(conn) => state.idle.push_back(Idle {
                conn,
                since: Instant::now(),
            }),
            Grant::Slot => state.open = state.open.saturating_sub(1),
        }
    }

    /// Closes idle connections unused for `idle_timeout` (the oldest are at
    /// the front).
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        while state
            .idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= self.limits.idle_timeout)
        {
            state.idle.pop_front();
            state.open = state.open.saturating_sub(1);
        }
    }

    /// (idle, lent or being opened, waiting checkouts).
    pub(crate) fn counts(&self) -> (u32, u32, u32) {
        let (idle, lent, waiting, _) = self.load(Instant::now());
        (idle, lent, waiting)
    }

    /// [`ServerPool::counts`] and how long the oldest waiter has waited.
    pub(crate) fn load(&self, now: Instant) -> (u32, u32, u32, Duration) {
        let state = self.lock();
        let idle = u32::try_from(state.idle.len()).unwrap_or(u32::MAX);
        let mut waiting = 0u32;
        let mut oldest = None;
        for (since, w) in &state.waiters {
            if !w.is_closed() {
                waiting = waiting.saturating_add(1);
                oldest = oldest.or(Some(*since));
            }
        }
        let max_wait = oldest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        (idle, state.open.saturating_sub(idle), waiting, max_wait)
    }

    /// What the server reported at the last login, if any.
    pub(crate) fn greeting(&self) -> Option<super::pool::Params> {
        self.greeting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
#[path = "server_pool_tests.rs"]
mod tests;
