//! Wiring: bind the listeners, start the background tasks, accept clients, and
//! own shutdown (drain) and reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::backend::health::{Health, HealthSnapshot};
use crate::backend::monitor;
use crate::backend::{Pools, ServerId, ServerTarget, Servers};
use crate::client::auth::ScramSecret;
use crate::client::cancel::CancelRegistry;
use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::protocol::build;
use crate::route::catalog::FunctionCatalog;
use crate::route::classify::Classifier;
use crate::shared::Shared;
use crate::tls::{ClientTls, TlsError};

/// The credentials clients log in with (those of the primary URL).
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub scram: ScramSecret,
}

impl Credentials {
    fn from_config(config: &Config) -> Self {
        let password = config.primary.password.clone().unwrap_or_default();
        Credentials {
            user: config.user().to_owned(),
            scram: ScramSecret::generate(&password),
            password,
        }
    }
}

/// Everything a session needs, shared by all of them. The parts a reload may
/// change are [`Shared`] values: readers take a snapshot.
pub struct Context {
    config: Arc<Shared<Config>>,
    servers: Arc<Shared<Servers>>,
    credentials: Shared<Credentials>,
    next_server_id: AtomicU64,
    pub pools: Arc<Pools>,
    pub classifier: Arc<Classifier>,
    pub health: Arc<Health>,
    pub cancels: CancelRegistry,
    pub metrics: Arc<Metrics>,
    pub client_tls: ClientTls,
    /// Read-your-writes floor shared by every session (`read_your_writes = "pod"`):
    /// the highest WAL position recorded after a committed write, 0 for none.
    pub pod_floor: AtomicU64,
    /// Replica replay positions, learned by the monitor and on demand.
    pub replay: Arc<crate::backend::replay::ReplayPositions>,
    /// Set on SIGTERM/SIGINT: /readyz turns 503.
    pub draining: AtomicBool,
    /// Flips to true when open sessions must end now (57P01).
    pub terminate: watch::Sender<bool>,
}

impl Context {
    pub fn new(config: Config) -> Result<Arc<Context>, TlsError> {
        let client_tls = ClientTls::new(&config.tls)?;
        let next = AtomicU64::new(0);
        let servers = Servers::build(&config, None, &next);
        let names: Vec<_> = servers
            .list
            .iter()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        let metrics = Metrics::new();
        let replay = crate::backend::replay::ReplayPositions::new(metrics.replay_queries.clone());
        Ok(Arc::new(Context {
            client_tls,
            pools: Arc::new(Pools::new(config.pool.clone())),
            classifier: Arc::new(Classifier::new(
                FunctionCatalog::builtin(),
                config.routing.cache_size,
            )),
            health: Arc::new(Health::new(HealthSnapshot::initial(&names))),
            cancels: CancelRegistry::default(),
            credentials: Shared::new(Credentials::from_config(&config)),
            metrics,
            pod_floor: AtomicU64::new(0),
            replay,
            draining: AtomicBool::new(false),
            terminate: watch::channel(false).0,
            servers: Arc::new(Shared::new(servers)),
            next_server_id: next,
            config: Arc::new(Shared::new(config)),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn servers(&self) -> Arc<Servers> {
        self.servers.get()
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.get()
    }

    /// What the health monitor works with.
    pub fn monitored(&self) -> monitor::Monitored {
        monitor::Monitored {
            config: self.config.clone(),
            servers: self.servers.clone(),
            pools: self.pools.clone(),
            health: self.health.clone(),
            replay: self.replay.clone(),
            classifier: self.classifier.clone(),
        }
    }

    pub fn configured_primary(&self) -> ServerId {
        self.servers().primary
    }

    pub fn server(&self, id: ServerId) -> Option<Arc<ServerTarget>> {
        self.servers().get(id).cloned()
    }

    /// Applies a new configuration to a running pgsplit: servers, routing
    /// limits, pool settings, credentials. Listen addresses and `workers` need a
    /// restart.
    pub fn reload(&self, mut new: Config) {
        let old = self.config();
        if new.listen != old.listen || new.admin_listen != old.admin_listen {
            tracing::warn!(
                "listen addresses changed in the config; they take effect on restart only"
            );
        }
        if new.workers != old.workers {
            tracing::warn!("workers changed in the config; it takes effect on restart only");
        }
        let servers = Servers::build(&new, Some(&self.servers()), &self.next_server_id);
        let names: Vec<String> = servers.list.iter().map(|s| s.name.clone()).collect();
        if new.primary.password != old.primary.password || new.primary.user != old.primary.user {
            self.credentials.set(Credentials::from_config(&new));
        }
        // Fresh pools: new pool sizes, and server targets rebuilt with the
        // current TLS files. Connections lent out finish their sessions.
        self.pools.reconfigure(new.pool.clone());
        if !self.client_tls.reload(&new.tls) {
            // The running TLS settings stay, and the config says so.
            new.tls = old.tls.clone();
        }
        self.servers.set(servers);
        self.config.set(new);
        tracing::info!(servers = ?names, "configuration reloaded");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Unusable `[tls]` files: a configuration error (exit 64).
    #[error("config: tls: {0}")]
    Tls(TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the process asks the running pgsplit to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM: stop accepting, let sessions finish up to `shutdown_grace`.
    Drain,
    /// SIGINT: stop now.
    Stop,
    /// SIGHUP: reload the config file.
    Reload,
}

pub struct App {
    pub ctx: Arc<Context>,
    listener: TcpListener,
    admin: TcpListener,
    /// Where a reload reads the config from (file + environment + flags).
    reload_source: Option<(PathBuf, Overrides)>,
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
            ctx: Context::new(config).map_err(AppError::Tls)?,
            listener,
            admin,
            reload_source: None,
        })
    }

    /// Lets `Control::Reload` re-read `file` (with the environment and `flags`
    /// applied on top, as at start).
    pub fn reload_from(mut self, file: PathBuf, flags: Overrides) -> Self {
        self.reload_source = Some((file, flags));
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.ctx.config().listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.ctx.config().admin_listen)
    }

    /// Serves until `control` says to stop (or closes, which means stop).
    pub async fn run(self, mut control: impl futures_util::Stream<Item = Control> + Unpin) {
        use futures_util::StreamExt;
        let App {
            ctx,
            listener,
            admin,
            reload_source,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(monitor::run_monitor(ctx.monitored(), stop_rx.clone()));
        tokio::spawn(monitor::run_catalog_refresh(
            ctx.monitored(),
            stop_rx.clone(),
        ));
        tokio::spawn(crate::admin::serve(admin, ctx.clone(), stop_rx.clone()));
        let config = ctx.config();
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            primary = %config.primary,
            replicas = config.replicas.len(),
            "pgsplit ready"
        );
        let limit = Arc::new(Semaphore::new(config.limits.max_client_connections));
        let sessions = TaskTracker::new();
        let how = loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                c = control.next() => match c {
                    Some(Control::Reload) => {
                        reload(&ctx, reload_source.as_ref());
                        continue;
                    }
                    Some(other) => break other,
                    None => break Control::Stop,
                },
            };
            let ctx = ctx.clone();
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    sessions.spawn(async move {
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
                        ctx.metrics.rejected("too_many_clients");
                        let msg = build::error_response(
                            build::Severity::Fatal,
                            crate::sqlstate::TOO_MANY_CONNECTIONS,
                            "pgsplit: sorry, too many clients already",
                        );
                        let _ = tcp.write_all(&msg).await;
                    });
                }
            }
        };
        // Stop accepting: closing the listener makes new connections fail fast.
        drop(listener);
        ctx.draining.store(true, Ordering::Release);
        sessions.close();
        let grace = if how == Control::Drain {
            ctx.config().limits.shutdown_grace
        } else {
            Duration::ZERO
        };
        tracing::info!(open = sessions.len(), ?grace, "draining client sessions");
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() || grace.is_zero() {
            let _ = ctx.terminate.send(true);
            // Sessions tell their clients 57P01 and return their connections.
            if tokio::time::timeout(Duration::from_secs(5), sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!(open = sessions.len(), "sessions did not end in time");
            }
        }
        let _ = stop_tx.send(true);
        tracing::info!("pgsplit stopped");
    }
}

fn reload(ctx: &Context, source: Option<&(PathBuf, Overrides)>) {
    let Some((file, flags)) = source else {
        tracing::warn!(
            "reload requested but pgsplit was started without --config; nothing to reload"
        );
        return;
    };
    match Config::load(Some(file), std::env::vars(), flags) {
        Ok(new) => ctx.reload(new),
        Err(e) => tracing::error!(error = %e, "reload rejected; keeping the running configuration"),
    }
}

/// A control channel: the sender for whoever decides (signals, tests), the
/// stream for [`App::run`].
pub fn control_channel() -> (
    tokio::sync::mpsc::Sender<Control>,
    impl futures_util::Stream<Item = Control> + Unpin,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    (
        tx,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    )
}

/// Unix signals as controls: SIGTERM drains, SIGINT stops, SIGHUP reloads.
pub fn unix_signals() -> std::io::Result<impl futures_util::Stream<Item = Control> + Unpin> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, stream) = control_channel();
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Drain,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
            };
            tracing::info!(?c, "signal received");
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    Ok(stream)
}
