//! Wiring: build each subsystem's narrow handle from the running parts, bind
//! the listeners, start the background tasks on the lifecycle's tracker,
//! accept clients, and own shutdown (drain) and reload. Nothing imports this
//! module but `main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::admin::AdminDeps;
use crate::backend::health::{Health, HealthSnapshot};
use crate::backend::monitor;
use crate::backend::replay::ReplayPositions;
use crate::backend::{Pools, Servers};
use crate::client::auth::Credentials;
use crate::client::cancel::CancelRegistry;
use crate::client::services::{HandshakeDeps, Services, SessionDeps};
use crate::config::{Config, Overrides};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics::Metrics;
use crate::protocol::build;
use crate::route::catalog::FunctionCatalog;
use crate::route::classify::Classifier;
use crate::shared::Shared;
use crate::tls::{ClientTls, TlsError};

/// The running pgsplit's parts, each shared by the handles built from them
/// (see [`Wiring::services`], [`Wiring::monitored`], [`Wiring::admin`]).
/// Only `app` sees them all: it builds the handles and applies reloads.
struct Wiring {
    config: Arc<Shared<Config>>,
    servers: Arc<Shared<Servers>>,
    credentials: Arc<Shared<Credentials>>,
    next_server_id: AtomicU64,
    pools: Arc<Pools>,
    client_tls: Arc<ClientTls>,
    cancels: Arc<CancelRegistry>,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    /// What sessions share (routing inputs, floors); the monitor keeps part
    /// of it current.
    session: Arc<SessionDeps>,
}

impl Wiring {
    fn new(config: Config) -> Result<Wiring, TlsError> {
        let client_tls = Arc::new(ClientTls::new(&config.tls)?);
        let next = AtomicU64::new(0);
        let servers = Servers::build(&config, None, &next);
        let names: Vec<_> = servers
            .list
            .iter()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        let metrics = Metrics::new();
        let lifecycle = Lifecycle::default();
        let replay = ReplayPositions::new(metrics.replay_queries.clone(), lifecycle.clone());
        let config = Arc::new(Shared::new(config));
        let servers = Arc::new(Shared::new(servers));
        let pools = Arc::new(Pools::new(config.get().pool.clone()));
        let session = Arc::new(SessionDeps {
            config: config.clone(),
            servers: servers.clone(),
            pools: pools.clone(),
            classifier: Arc::new(Classifier::new(
                FunctionCatalog::builtin(),
                config.get().routing.cache_size,
            )),
            health: Arc::new(Health::new(HealthSnapshot::initial(&names))),
            metrics: metrics.clone(),
            replay,
            pod_floor: Arc::new(AtomicU64::new(0)),
            lifecycle: lifecycle.clone(),
            clients: Arc::default(),
            pause: Arc::default(),
            reload: Arc::default(),
            refused: Arc::default(),
            mismatches: Arc::default(),
        });
        Ok(Wiring {
            credentials: Arc::new(Shared::new(Credentials::from_config(&config.get()))),
            config,
            servers,
            next_server_id: next,
            pools,
            client_tls,
            cancels: Arc::new(CancelRegistry::default()),
            metrics,
            lifecycle,
            session,
        })
    }

    fn services(&self) -> Arc<Services> {
        Arc::new(Services {
            handshake: HandshakeDeps {
                config: self.config.clone(),
                client_tls: self.client_tls.clone(),
                credentials: self.credentials.clone(),
                cancels: self.cancels.clone(),
                metrics: self.metrics.clone(),
            },
            session: self.session.clone(),
        })
    }

    fn monitored(&self) -> monitor::Monitored {
        monitor::Monitored {
            config: self.config.clone(),
            servers: self.servers.clone(),
            pools: self.pools.clone(),
            health: self.session.health.clone(),
            replay: self.session.replay.clone(),
            classifier: self.session.classifier.clone(),
            lifecycle: self.lifecycle.clone(),
        }
    }

    fn admin(&self) -> Arc<AdminDeps> {
        Arc::new(AdminDeps {
            lifecycle: self.lifecycle.clone(),
            health: self.session.health.clone(),
            servers: self.servers.clone(),
            pools: self.pools.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Applies a new configuration to a running pgsplit: servers, routing
    /// limits, pool settings, credentials. Listen addresses and `workers` need a
    /// restart.
    fn reload(&self, mut new: Config) {
        let old = self.config.get();
        if new.listen != old.listen || new.admin_listen != old.admin_listen {
            tracing::warn!(
                "listen addresses changed in the config; they take effect on restart only"
            );
        }
        if new.workers != old.workers {
            tracing::warn!("workers changed in the config; it takes effect on restart only");
        }
        let servers = Servers::build(&new, Some(&self.servers.get()), &self.next_server_id);
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
    wiring: Wiring,
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
            wiring: Wiring::new(config).map_err(AppError::Tls)?,
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
            .unwrap_or(self.wiring.config.get().listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.wiring.config.get().admin_listen)
    }

    /// What sessions share: the health snapshot, the classifier, the
    /// floors (tests and the demo look at it).
    pub fn session_deps(&self) -> Arc<SessionDeps> {
        self.wiring.session.clone()
    }

    /// Serves until `control` says to stop (or closes, which means stop).
    pub async fn run(self, mut control: impl futures_util::Stream<Item = Control> + Unpin) {
        use futures_util::StreamExt;
        let App {
            wiring,
            listener,
            admin,
            reload_source,
        } = self;
        let life = wiring.lifecycle.clone();
        life.spawn(monitor::run_monitor(wiring.monitored()));
        life.spawn(monitor::run_catalog_refresh(wiring.monitored()));
        life.spawn(crate::admin::serve(admin, wiring.admin()));
        let services = wiring.services();
        let metrics = wiring.metrics.clone();
        let config = wiring.config.get();
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
                () = wiring.session.reload.notified() => {
                    tracing::info!("reload asked from the admin console");
                    reload(&wiring, reload_source.as_ref());
                    continue;
                }
                c = control.next() => match c {
                    Some(Control::Reload) => {
                        reload(&wiring, reload_source.as_ref());
                        continue;
                    }
                    Some(other) => break other,
                    None => break Control::Stop,
                },
            };
            let metrics = metrics.clone();
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    let services = services.clone();
                    sessions.spawn(async move {
                        metrics.client_connections.increment(1.0);
                        metrics.client_connections_total.increment(1);
                        crate::client::serve_client(services, tcp, peer).await;
                        metrics.client_connections.decrement(1.0);
                        drop(permit);
                    });
                }
                Err(_) => {
                    // Told and closed on a tracked task: a flood of refused
                    // clients cannot outlive the process's shutdown.
                    sessions.spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut tcp = tcp;
                        metrics.rejected("too_many_clients");
                        let msg = build::error_response(
                            build::Severity::Fatal,
                            crate::sqlstate::TOO_MANY_CONNECTIONS,
                            "pgsplit: sorry, too many clients already",
                        );
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&msg)).await;
                    });
                }
            }
        };
        // Stop accepting: closing the listener makes new connections fail fast.
        drop(listener);
        life.advance(Phase::Draining);
        sessions.close();
        let grace = if how == Control::Drain {
            wiring.config.get().limits.shutdown_grace
        } else {
            Duration::ZERO
        };
        tracing::info!(open = sessions.len(), ?grace, "draining client sessions");
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() || grace.is_zero() {
            life.advance(Phase::Terminating);
            // Sessions tell their clients 57P01 and return their connections.
            if tokio::time::timeout(Duration::from_secs(5), sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!(open = sessions.len(), "sessions did not end in time");
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), life.stopped())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        tracing::info!("pgsplit stopped");
    }
}

fn reload(wiring: &Wiring, source: Option<&(PathBuf, Overrides)>) {
    let Some((file, flags)) = source else {
        tracing::warn!(
            "reload requested but pgsplit was started without --config; nothing to reload"
        );
        return;
    };
    match Config::load(Some(file), std::env::vars(), flags) {
        Ok(new) => wiring.reload(new),
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
