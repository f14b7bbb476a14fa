//! Pools of authenticated server connections, one per (server, user,
//! database) (see `server_pool`). A connection returns to its pool only
//! clean: the session resets it first, and anything in an unknown state is
//! marked broken so the pool drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::BackendError;
use super::conn::{Login, ServerId, ServerTarget};
use super::server_pool::{Limits, Opener, Refusal, ServerPool};
use super::sockets::Sockets;

pub use super::server_pool::Pooled;
use crate::config::PoolConfig;
use crate::sqlstate;

/// The parameters the server reported at the last login to it (sorted by
/// name), so that a client can be greeted while that server does not answer
/// (see `Pools::greeting`).
pub(crate) type Params = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error(
        "no connection to server {server} became free within {waited:?} (pool limit {size} reached)"
    )]
    Exhausted {
        server: String,
        size: u32,
        waited: Duration,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl CheckoutError {
    pub fn sqlstate(&self) -> &str {
        match self {
            CheckoutError::Exhausted { .. } => sqlstate::TOO_MANY_CONNECTIONS,
            CheckoutError::Backend(e) => e.sqlstate(),
        }
    }

    /// What went wrong, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckoutError::Exhausted { .. } => "pool_exhausted",
            CheckoutError::Backend(e) => e.kind(),
        }
    }

    /// The failure in words a client may read (no server names).
    pub fn client_text(&self) -> String {
        match self {
            CheckoutError::Exhausted { size, waited, .. } => format!(
                "no server connection became free within {waited:?} (pool limit {size} reached)"
            ),
            CheckoutError::Backend(e) => e.client_text(),
        }
    }
}

type Key = (ServerId, String, String);

/// The pool of (`target`, `login`), found without building (and hashing) an
/// owned key: a checkout per unit under transaction pooling, among a
/// handful of pools.
fn find<'a>(
    pools: &'a HashMap<Key, Arc<ServerPool>>,
    target: &ServerTarget,
    login: &Login,
) -> Option<&'a Arc<ServerPool>> {
    pools
        .iter()
        .find(|((id, user, database), _)| {
            *id == target.id && *user == login.user && *database == login.database
        })
        .map(|(_, pool)| pool)
}

pub struct Pools {
    config: Mutex<PoolConfig>,
    pools: Mutex<HashMap<Key, Arc<ServerPool>>>,
    /// Every pooled connection's socket, by server.
    sockets: Arc<Sockets>,
}

impl Pools {
    pub fn new(config: PoolConfig) -> Self {
        Pools {
            config: Mutex::new(config),
            pools: Mutex::new(HashMap::new()),
            sockets: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<ServerPool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pool, taken out of the lock (each pool has its own).
    fn all(&self) -> Vec<(Key, Arc<ServerPool>)> {
        self.lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }

    fn config(&self) -> PoolConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New pool settings apply to pools created from now on: the current
    /// pools are forgotten, connections lent out finish their sessions and
    /// close, idle ones close with their pool.
    pub fn reconfigure(&self, config: PoolConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.lock().clear();
    }

    /// Ends every pooled connection to server `id` (lent out or idle), for a
    /// server that stopped answering: see `backend::sockets`. How many.
    pub fn end_connections(&self, id: ServerId) -> usize {
        self.sockets.end_all(id)
    }

    /// Ends the connections to server `id` that run a read which may run
    /// again elsewhere: for a primary that stopped answering. How many.
    pub fn end_rescuable_reads(&self, id: ServerId) -> usize {
        self.sockets.end_rescuable(id)
    }

    /// Forgets the pools of servers no longer configured.
    pub fn retain_servers(&self, keep: &[ServerId]) {
        self.lock().retain(|(id, _, _), _| keep.contains(id));
    }

    /// What `target` reported when pgsplit last logged in to it as `login`
    /// (none before the first login, or after a reload of the pools).
    pub(crate) fn greeting(&self, target: &ServerTarget, login: &Login) -> Option<Params> {
        find(&self.lock(), target, login)?.greeting()
    }

    /// Closes idle connections unused for `idle_timeout` (the health monitor
    /// calls it every round).
    pub fn reap(&self) {
        for (_, pool) in self.all() {
            pool.reap();
        }
    }

    fn pool(&self, target: &Arc<ServerTarget>, login: &Login) -> Arc<ServerPool> {
        let mut pools = self.lock();
        if let Some(pool) = find(&pools, target, login) {
            return pool.clone();
        }
        let key = (target.id, login.user.clone(), login.database.clone());
        let config = self.config();
        pools
            .entry(key)
            .or_insert_with(|| {
                ServerPool::new(
                    Opener {
                        target: target.clone(),
                        login: login.clone(),
                        connect_timeout: config.connect_timeout,
                        sockets: self.sockets.clone(),
                    },
                    Limits {
                        max_size: config.max_size,
                        checkout_timeout: config.checkout_timeout,
                        idle_timeout: config.idle_timeout,
                    },
                )
            })
            .clone()
    }

    pub async fn checkout(
        &self,
        target: &Arc<ServerTarget>,
        login: &Login,
    ) -> Result<Pooled, CheckoutError> {
        let pool = self.pool(target, login);
        pool.checkout().await.map_err(|refusal| match refusal {
            Refusal::Connect(e) => CheckoutError::Backend(e),
            Refusal::Exhausted => {
                let limits = pool.limits();
                CheckoutError::Exhausted {
                    server: target.name.clone(),
                    size: limits.max_size,
                    waited: limits.checkout_timeout,
                }
            }
        })
    }

    /// Every pool, for the console's `SHOW POOLS` and `SHOW SERVERS`.
    pub fn rows(&self) -> Vec<crate::console::views::PoolRow> {
        let now = tokio::time::Instant::now();
        self.all()
            .into_iter()
            .map(|((server, user, database), pool)| {
                let (idle, active, waiting, max_wait) = pool.load(now);
                crate::console::views::PoolRow {
                    server,
                    user,
                    database,
                    active,
                    idle,
                    waiting,
                    max_wait,
                    max_size: pool.limits().max_size,
                }
            })
            .collect()
    }

    /// Connections by (server, idle, in use) for metrics.
    pub fn stats(&self) -> Vec<(ServerId, u32, u32)> {
        self.all()
            .into_iter()
            .map(|((id, _, _), pool)| {
                let (idle, in_use, _) = pool.counts();
                (id, idle, in_use)
            })
            .collect()
    }
}
