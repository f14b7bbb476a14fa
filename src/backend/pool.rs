//! Pools of authenticated server connections (bb8), one per (server, user,
//! database). A connection returns to its pool only clean: the session resets it
//! first, and anything in an unknown state is marked broken so bb8 drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::BackendError;
use super::conn::{Login, ServerConn, ServerId, ServerTarget};
use super::sockets::Sockets;
use crate::config::PoolConfig;
use crate::sqlstate;

pub struct ServerManager {
    target: Arc<ServerTarget>,
    login: Login,
    connect_timeout: Duration,
    failures: Arc<Failures>,
    sockets: Arc<Sockets>,
}

/// bb8 opens connections in background tasks and only logs their errors, so a
/// checkout would wait out its whole timeout on a server that refuses
/// connections. Failures are announced here so a waiting checkout can fail at
/// once with the real reason.
#[derive(Default)]
struct Failures {
    notify: tokio::sync::Notify,
    last: Mutex<Option<Failure>>,
}

/// The last failure to open a connection, as `BackendError::Unavailable`
/// will tell it.
#[derive(Clone)]
struct Failure {
    code: String,
    message: String,
    client_text: String,
}

impl bb8::ManageConnection for ServerManager {
    /// Boxed: a connection moves into and out of the pool on every checkout
    /// (per unit under transaction pooling), and a pointer moves cheaper
    /// than the struct.
    type Connection = Box<ServerConn>;
    type Error = BackendError;

    async fn connect(&self) -> Result<Box<ServerConn>, BackendError> {
        let result = ServerConn::connect(self.target.clone(), &self.login, self.connect_timeout)
            .await
            .map(|mut conn| {
                conn.register(&self.sockets);
                Box::new(conn)
            });
        if let Err(e) = &result {
            *self.failures.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Failure {
                code: e.sqlstate().to_owned(),
                message: e.to_string(),
                client_text: e.client_text(),
            });
            self.failures.notify.notify_waiters();
        }
        result
    }

    /// Cheap checks only, no round trip: the flags, and whether the server closed
    /// the socket or sent something unprompted (e.g. "terminating connection due
    /// to administrator command") while the connection sat idle.
    async fn is_valid(&self, conn: &mut Box<ServerConn>) -> Result<(), BackendError> {
        if conn.is_idle_and_open() {
            Ok(())
        } else {
            conn.mark_broken();
            Err(BackendError::Closed(conn.target().name.clone()))
        }
    }

    fn has_broken(&self, conn: &mut Box<ServerConn>) -> bool {
        conn.is_broken()
    }
}

/// Logs connection errors bb8 would otherwise swallow (its `build` and
/// background replenishing hide the real cause).
#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<BackendError> for LogSink {
    fn sink(&self, error: BackendError) {
        tracing::warn!(%error, "server connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<BackendError>> {
        Box::new(*self)
    }
}

pub type Pooled = bb8::PooledConnection<'static, ServerManager>;

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
/// A pool and the failure signal of its manager.
type Entry = (bb8::Pool<ServerManager>, Arc<Failures>);

pub struct Pools {
    config: Mutex<PoolConfig>,
    pools: Mutex<HashMap<Key, Entry>>,
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

    fn config(&self) -> PoolConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New pool settings apply to pools created from now on. bb8 cannot resize
    /// a pool, so the current pools are forgotten: connections lent out finish
    /// their sessions and close; idle ones close with their pool.
    pub fn reconfigure(&self, config: PoolConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(id, _, _), _| keep.contains(id));
    }

    fn pool(&self, target: &Arc<ServerTarget>, login: &Login) -> Entry {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        // Found without building (and hashing) an owned key: a checkout per
        // unit under transaction pooling, among a handful of pools.
        let found = pools.iter().find(|((id, user, database), _)| {
            *id == target.id && *user == login.user && *database == login.database
        });
        if let Some((_, entry)) = found {
            return entry.clone();
        }
        let key = (target.id, login.user.clone(), login.database.clone());
        let config = self.config();
        pools
            .entry(key)
            .or_insert_with(|| {
                let failures = Arc::new(Failures::default());
                let pool = bb8::Pool::builder()
                    .max_size(config.max_size)
                    .min_idle(None)
                    .connection_timeout(config.checkout_timeout)
                    .idle_timeout(Some(config.idle_timeout))
                    // Fail a checkout with the real error instead of retrying a
                    // refused connection until the timeout hides why.
                    .retry_connection(false)
                    .error_sink(Box::new(LogSink))
                    .build_unchecked(ServerManager {
                        target: target.clone(),
                        login: login.clone(),
                        connect_timeout: config.connect_timeout,
                        failures: failures.clone(),
                        sockets: self.sockets.clone(),
                    });
                (pool, failures)
            })
            .clone()
    }

    pub async fn checkout(
        &self,
        target: &Arc<ServerTarget>,
        login: &Login,
    ) -> Result<Pooled, CheckoutError> {
        let (pool, failures) = self.pool(target, login);
        let failed = failures.notify.notified();
        tokio::pin!(failed);
        // Register before asking: a failure between here and the wait counts.
        failed.as_mut().enable();
        let got = tokio::select! {
            got = pool.get_owned() => got,
            () = failed => {
                let last = failures
                    .last
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| Failure {
                        code: sqlstate::UNABLE_TO_CONNECT.into(),
                        message: "connection failed".into(),
                        client_text: "connection failed".into(),
                    });
                return Err(CheckoutError::Backend(BackendError::Unavailable {
                    server: target.name.clone(),
                    code: last.code,
                    message: last.message,
                    client_text: last.client_text,
                }));
            }
        };
        got.map_err(|e| match e {
            bb8::RunError::User(e) => CheckoutError::Backend(e),
            bb8::RunError::TimedOut => {
                let config = self.config();
                CheckoutError::Exhausted {
                    server: target.name.clone(),
                    size: config.max_size,
                    waited: config.checkout_timeout,
                }
            }
        })
    }

    /// Connections by (server name, idle, in use) for metrics.
    pub fn stats(&self) -> Vec<(ServerId, u32, u32)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .map(|((id, _, _), (p, _))| {
                let s = p.state();
                (*id, s.idle_connections, s.connections - s.idle_connections)
            })
            .collect()
    }
}
