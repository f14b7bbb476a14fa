//! Wiring: bind the listeners, start the background tasks, accept clients, and
//! own shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::backend::health::{Health, HealthSnapshot, LagLimits};
use crate::backend::monitor::{self, MonitorConfig};
use crate::backend::{Pools, ServerId, ServerTarget};
use crate::client::auth::ScramSecret;
use crate::client::cancel::CancelRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::build;
use crate::route::catalog::FunctionCatalog;
use crate::route::classify::Classifier;

/// The credentials clients log in with (those of the primary URL).
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub scram: ScramSecret,
}

/// Everything a session needs, shared by all of them.
pub struct Context {
    pub config: Config,
    /// Configured servers; index 0 is the configured primary.
    pub servers: Vec<Arc<ServerTarget>>,
    pub pools: Pools,
    pub classifier: Arc<Classifier>,
    pub health: Arc<Health>,
    pub cancels: CancelRegistry,
    pub credentials: Credentials,
    pub metrics: Arc<Metrics>,
    /// Read-your-writes floor shared by every session (`read_your_writes = "pod"`):
    /// the highest WAL position recorded after a committed write, 0 for none.
    pub pod_floor: AtomicU64,
}

impl Context {
    pub fn new(config: Config) -> Arc<Context> {
        let mut servers = vec![ServerTarget::new(ServerId(0), config.primary.clone())];
        for (i, r) in config.replicas.iter().enumerate() {
            let id = ServerId(u32::try_from(i + 1).unwrap_or(u32::MAX));
            servers.push(ServerTarget::new(id, r.clone()));
        }
        let names: Vec<_> = servers.iter().map(|s| (s.id, s.name.clone())).collect();
        let password = config.primary.password.clone().unwrap_or_default();
        let catalog = FunctionCatalog::builtin();
        Arc::new(Context {
            pools: Pools::new(config.pool.clone()),
            classifier: Arc::new(Classifier::new(catalog, config.routing.cache_size)),
            health: Arc::new(Health::new(HealthSnapshot::initial(&names))),
            cancels: CancelRegistry::default(),
            credentials: Credentials {
                user: config.user().to_owned(),
                scram: ScramSecret::generate(&password),
                password,
            },
            metrics: Metrics::new(),
            pod_floor: AtomicU64::new(0),
            servers,
            config,
        })
    }

    pub fn configured_primary(&self) -> ServerId {
        ServerId(0)
    }

    pub fn server(&self, id: ServerId) -> Option<Arc<ServerTarget>> {
        self.servers.iter().find(|s| s.id == id).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    pub ctx: Arc<Context>,
    listener: TcpListener,
    admin: TcpListener,
}

impl App {
    pub async fn bind(config: Config) -> Result<App, AppError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        Ok(App {
            ctx: Context::new(config),
            listener,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.ctx.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.ctx.config.admin_listen)
    }

    /// Serves until `shutdown` resolves, then stops accepting and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let App {
            ctx,
            listener,
            admin,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let routing = &ctx.config.routing;
        tokio::spawn(monitor::run_monitor(
            ctx.servers.clone(),
            MonitorConfig {
                interval: routing.health_interval,
                limits: LagLimits {
                    max_lag: routing.max_lag,
                    max_lag_bytes: routing.max_lag_bytes.0,
                },
            },
            ctx.health.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(monitor::run_catalog_refresh(
            ctx.health.clone(),
            ctx.servers.clone(),
            ctx.classifier.clone(),
            routing.replica_safe_functions.clone(),
            routing.primary_functions.clone(),
            routing.function_refresh,
            stop_rx.clone(),
        ));
        tokio::spawn(crate::admin::serve(admin, ctx.clone(), stop_rx.clone()));
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            primary = %ctx.config.primary,
            replicas = ctx.config.replicas.len(),
            "pgsplit ready"
        );
        let limit = Arc::new(Semaphore::new(ctx.config.limits.max_client_connections));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let ctx = ctx.clone();
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        ctx.metrics.client_connections.increment(1.0);
                        ctx.metrics.client_connections_total.increment(1);
                        crate::client::serve_client(ctx.clone(), tcp, peer).await;
                        ctx.metrics.client_connections.decrement(1.0);
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut tcp = tcp;
                        let msg = build::error_response(
                            build::Severity::Fatal,
                            "53300",
                            "pgsplit: sorry, too many clients already",
                        );
                        let _ = tcp.write_all(&msg).await;
                        ctx.metrics.error("53300");
                    });
                }
            }
        }
        tracing::info!("pgsplit stopping");
        let _ = stop_tx.send(true);
    }
}
