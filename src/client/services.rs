//! What the client side needs from the rest of pgsplit, in two narrow
//! handles built by `app`: the handshake's (TLS, credentials, cancel keys)
//! and the session's (servers, pools, routing inputs). A session never
//! sees TLS files or passwords; the handshake never sees a pool.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::auth::Credentials;
use super::cancel::CancelRegistry;
use crate::backend::health::Health;
use crate::backend::replay::ReplayPositions;
use crate::backend::{Pools, ServerId, ServerTarget, Servers};
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::route::classify::Classifier;
use crate::shared::Shared;
use crate::tls::ClientTls;

/// What logging a client in takes.
pub struct HandshakeDeps {
    pub config: Arc<Shared<Config>>,
    pub client_tls: Arc<ClientTls>,
    pub credentials: Arc<Shared<Credentials>>,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
}

impl HandshakeDeps {
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.get()
    }
}

/// What serving a logged-in client takes.
pub struct SessionDeps {
    pub config: Arc<Shared<Config>>,
    pub servers: Arc<Shared<Servers>>,
    pub pools: Arc<Pools>,
    pub classifier: Arc<Classifier>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Replica replay positions, learned by the monitor and on demand.
    pub replay: Arc<ReplayPositions>,
    /// Read-your-writes floor shared by every session (`read_your_writes =
    /// "pod"`): the highest WAL position recorded after a committed write, 0
    /// for none.
    pub pod_floor: Arc<AtomicU64>,
    /// Sessions end (57P01) when it reaches `Terminating`.
    pub lifecycle: Lifecycle,
    /// The sessions open now (`SHOW CLIENTS`).
    pub clients: Arc<crate::client::registry::Clients>,
    /// The console's `PAUSE`/`RESUME`.
    pub pause: Arc<crate::client::pause::Pause>,
    /// The console's `RELOAD`: the app reloads as on SIGHUP.
    pub reload: Arc<tokio::sync::Notify>,
    /// Shapes of statements a replica refused (25006) that were logged.
    pub refused: Arc<LoggedOnce>,
    /// Shapes of optimistic transactions whose reads answered differently
    /// on the primary.
    pub mismatches: Arc<Mismatches>,
}

/// Optimistic transactions whose move found a read changed, counted by the
/// shape of their first statement (literals masked). A shape that keeps
/// mismatching (the transaction reads rows that change all the time, or
/// something that differs between servers) starts on the primary: a 40001
/// every time would only make the application retry. Bounded; the first
/// shapes seen stay.
#[derive(Default)]
pub struct Mismatches {
    any: std::sync::atomic::AtomicBool,
    counts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Mismatches {
    const MAX: usize = 1024;
    /// Mismatches after which a shape starts on the primary.
    pub const KEEP_AFTER: u32 = 3;

    pub fn note(&self, shape: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(shape) {
            *n = n.saturating_add(1);
        } else if counts.len() < Self::MAX {
            counts.insert(shape.to_owned(), 1);
        }
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether transactions of this shape should start on the primary.
    pub fn keeps_mismatching(&self, shape: &str) -> bool {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(shape).is_some_and(|n| *n >= Self::KEEP_AFTER)
    }

    /// Whether any shape was noted (a lock-free check before the shape of
    /// every transaction is computed).
    pub fn any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Statement shapes logged once each (up to a bound, then no more): the log
/// tells an operator which statements the classifier sends to a replica
/// wrongly, without a line per execution.
#[derive(Default)]
pub struct LoggedOnce(std::sync::Mutex<std::collections::HashSet<String>>);

impl LoggedOnce {
    const MAX: usize = 1024;

    /// Whether `shape` is new (and now remembered).
    pub fn first(&self, shape: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::MAX || seen.contains(shape) {
            return false;
        }
        seen.insert(shape.to_owned())
    }
}

impl SessionDeps {
    #[inline]
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// The read-your-writes floor every session shares under `pod` scope
    /// (none before the first committed write).
    #[inline]
    pub fn shared_floor(&self) -> Option<crate::server::Lsn> {
        let pod = self.pod_floor.load(std::sync::atomic::Ordering::Acquire);
        (pod > 0).then_some(crate::server::Lsn(pod))
    }

    /// The server configured as primary (the health monitor may know better).
    pub fn configured_primary(&self) -> ServerId {
        self.servers.get().primary
    }

    pub fn server(&self, id: ServerId) -> Option<Arc<ServerTarget>> {
        self.servers.get().get(id).cloned()
    }
}

/// Both handles, for the accept loop.
pub struct Services {
    pub handshake: HandshakeDeps,
    pub session: Arc<SessionDeps>,
}
