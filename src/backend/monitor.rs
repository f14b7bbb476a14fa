//! The health monitor task: probes every configured server each
//! `health_interval` over its own tokio-postgres connection, feeds the answers
//! to [`HealthState`], publishes the snapshot and logs each change once. Also
//! refreshes function volatility from the primary's `pg_proc`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::BackendError;
use super::conn::{Login, ServerConn, ServerTarget};
use super::health::Health;
use super::health::{HealthState, LagLimits, PrimaryState, Probe};
use super::replay::ReplayPositions;
use super::{Pools, ServerId, Servers};
use crate::config::Config;
use crate::lifecycle::{Lifecycle, Phase};
use crate::route::catalog::{FunctionCatalog, LOAD_SQL};
use crate::route::classify::Classifier;
use crate::server::Lsn;
use crate::shared::Shared;

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";

/// The login pgsplit's own connections use (probes, catalog, replay
/// positions): the server URL's user and database.
pub(crate) fn login(target: &ServerTarget) -> Login {
    Login {
        user: target.url.user.clone().unwrap_or_else(|| "postgres".into()),
        database: target
            .url
            .dbname
            .clone()
            .unwrap_or_else(|| "postgres".into()),
    }
}

/// One server's probe connection, re-established after any failure. It is a
/// pgsplit server connection (not tokio-postgres) so that it uses exactly the
/// TLS and authentication settings the data path uses.
struct Prober {
    target: Arc<ServerTarget>,
    conn: Option<ServerConn>,
    timeout: Duration,
    /// The last failure, logged once when it first appears or changes.
    last_error: Option<String>,
}

impl Prober {
    async fn probe(&mut self) -> Option<Probe> {
        let error = match tokio::time::timeout(self.timeout, self.probe_inner()).await {
            Ok(Ok(p)) => {
                if self.last_error.take().is_some() {
                    tracing::info!(server = %self.target.name, "server answers health probes again");
                }
                return Some(p);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.conn = None;
        if self.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(server = %self.target.name, %error, "health probe failed; server not used until it answers");
            self.last_error = Some(error);
        }
        None
    }

    async fn probe_inner(&mut self) -> Result<Probe, BackendError> {
        let conn = match self.conn.take() {
            Some(c) if !c.is_broken() => self.conn.insert(c),
            _ => {
                let c =
                    ServerConn::connect(self.target.clone(), &login(&self.target), self.timeout)
                        .await?;
                self.conn.insert(c)
            }
        };
        let rows = conn.simple_rows(PROBE_SQL.as_bytes()).await?;
        let row = rows
            .first()
            .ok_or(BackendError::Closed(self.target.name.clone()))?;
        let in_recovery = matches!(row.first(), Some(Some(v)) if v == "t");
        let lsn = row.get(1).and_then(|v| v.as_deref()).and_then(Lsn::parse);
        Ok(Probe { in_recovery, lsn })
    }
}

/// What the monitor reads (the configuration and the server list, both
/// replaced on reload) and what it keeps current: the health snapshot, the
/// replay positions, the pools' server set, the function catalog.
pub(crate) struct Monitored {
    pub config: Arc<Shared<Config>>,
    pub servers: Arc<Shared<Servers>>,
    pub pools: Arc<Pools>,
    pub health: Arc<Health>,
    pub replay: Arc<ReplayPositions>,
    pub classifier: Arc<Classifier>,
    /// Both loops end when it reaches `Stopped`.
    pub lifecycle: Lifecycle,
}

/// Probes every configured server each `health_interval` and publishes the
/// snapshot. Follows reloads: servers added or removed, limits changed.
pub(crate) async fn run_monitor(ctx: Monitored) {
    let mut stopped = std::pin::pin!(ctx.lifecycle.reached(Phase::Stopped));
    let servers = ctx.servers.get();
    let names: Vec<_> = servers
        .list
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect();
    let mut state = HealthState::new(limits(&ctx), &names);
    let mut probers: Vec<Prober> = Vec::new();
    let mut known: Option<Arc<Servers>> = None;
    let mut silent = SilentPrimary::default();
    loop {
        let config = ctx.config.get();
        let interval = config.routing.health_interval;
        let servers = ctx.servers.get();
        if !known.as_ref().is_some_and(|k| Arc::ptr_eq(k, &servers)) {
            // A probe may take at most the interval, but never less than a
            // second: a loaded server should not be declared dead by a short
            // interval alone.
            let timeout = interval.max(Duration::from_secs(1));
            probers.retain(|p| servers.list.iter().any(|s| Arc::ptr_eq(s, &p.target)));
            for s in &servers.list {
                if !probers.iter().any(|p| Arc::ptr_eq(&p.target, s)) {
                    probers.push(Prober {
                        target: s.clone(),
                        conn: None,
                        timeout,
                        last_error: None,
                    });
                }
            }
            let names: Vec<_> = servers
                .list
                .iter()
                .map(|s| (s.id, s.name.clone()))
                .collect();
            state.set_servers(&names);
            state.set_limits(limits(&ctx));
            let ids: Vec<_> = servers.list.iter().map(|s| s.id).collect();
            ctx.pools.retain_servers(&ids);
            known = Some(servers);
        }
        let results = futures_util::future::join_all(probers.iter_mut().map(|p| async {
            let id = p.target.id;
            (id, p.probe().await)
        }))
        .await;
        for (id, probe) in &results {
            if let Some(Probe {
                in_recovery: true,
                lsn: Some(lsn),
            }) = probe
            {
                ctx.replay.observe(*id, *lsn);
            }
        }
        end_unanswering_replicas(&ctx, &results);
        for change in state.observe(Instant::now(), &results) {
            if change.contains("fenced") || change.contains("no server") {
                tracing::error!("{change}");
            } else {
                tracing::info!("{change}");
            }
        }
        let mut snapshot = state.snapshot().clone();
        for s in &mut snapshot.servers {
            s.last_error = probers
                .iter()
                .find(|p| p.target.id == s.id)
                .and_then(|p| p.last_error.clone());
        }
        let primary = match snapshot.primary {
            PrimaryState::Known(id) => Some(id),
            _ => None,
        };
        ctx.health.set(snapshot);
        // After the snapshot: a rescued read is placed again by it.
        silent.follow(&ctx, primary, &results, config.net.tcp_user_timeout);
        ctx.pools.reap();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = &mut stopped => return,
        }
    }
}

/// A replica that answered the last probe and not this one may be frozen
/// (a stopped process, a node gone without closing anything): reads in flight
/// on it would wait as long as the freeze. Its pooled connections are ended,
/// so that those reads run again elsewhere (see `backend::sockets`). The
/// primary's are left alone: a write in flight may have committed, and only
/// the server can say.
fn end_unanswering_replicas(ctx: &Monitored, results: &[(ServerId, Option<Probe>)]) {
    let before = ctx.health.get();
    for (id, probe) in results {
        let was_replica = before
            .server(*id)
            .is_some_and(|s| s.role == super::health::Role::Replica);
        if probe.is_none() && was_replica && before.primary != PrimaryState::Known(*id) {
            let ended = ctx.pools.end_connections(*id);
            let name = before.server(*id).map_or("?", |s| s.name.as_str());
            tracing::warn!(
                server = name,
                connections = ended,
                "replica stopped answering; its connections are ended and reads in flight run again elsewhere"
            );
        }
    }
}

/// The last known primary while it does not answer its probes (frozen, or
/// gone without closing anything).
///
/// Writes stop going to it at its first missed probe (they wait for a
/// primary instead, see `HealthSnapshot::primary_answers`), and so do reads
/// that a replica can serve. What was in flight on it when it froze:
/// - reads that may run again elsewhere are ended at once, every round, and
///   placed again (on a replica);
/// - anything else (a write may have committed; only the server can say) is
///   left to finish when the primary comes back, but not for ever: once it
///   has been silent for `tcp_user_timeout`, its connections are ended, as
///   TCP itself ends them on a host that is really gone. A client then sees
///   08006 for a statement whose outcome is unknown.
#[derive(Default)]
struct SilentPrimary {
    /// The last server known as primary.
    last: Option<ServerId>,
    /// Since when it has missed every probe, and whether its connections
    /// were ended for it.
    since: Option<(Instant, bool)>,
}

impl SilentPrimary {
    fn follow(
        &mut self,
        ctx: &Monitored,
        primary: Option<ServerId>,
        results: &[(ServerId, Option<Probe>)],
        limit: Duration,
    ) {
        if primary.is_some() && primary != self.last {
            self.last = primary;
            self.since = None;
        }
        let Some(id) = self.last else { return };
        let missed = results.iter().any(|(s, p)| *s == id && p.is_none());
        if !missed {
            self.since = None;
            return;
        }
        let now = Instant::now();
        let (since, ended) = self.since.get_or_insert((now, false));
        let reads = ctx.pools.end_rescuable_reads(id);
        if reads > 0 {
            tracing::warn!(
                reads,
                "primary stopped answering; reads in flight on it run again on a replica"
            );
        }
        if !*ended && now.saturating_duration_since(*since) >= limit {
            *ended = true;
            let connections = ctx.pools.end_connections(id);
            tracing::error!(
                connections,
                silent_for = ?now.saturating_duration_since(*since),
                "primary silent for net.tcp_user_timeout; its connections are ended (statements in flight fail with 08006)"
            );
        }
    }
}

fn limits(ctx: &Monitored) -> LagLimits {
    let r = &ctx.config.get().routing;
    LagLimits {
        max_lag: r.max_lag,
        max_lag_bytes: r.max_lag_bytes.0,
    }
}

/// Reloads function volatility from the primary every `function_refresh`,
/// starting now.
pub(crate) async fn run_catalog_refresh(ctx: Monitored) {
    let mut stopped = std::pin::pin!(ctx.lifecycle.reached(Phase::Stopped));
    let mut loaded_once = false;
    loop {
        let config = ctx.config.get();
        let primary = match ctx.health.get().primary {
            PrimaryState::Known(id) => ctx.servers.get().get(id).cloned(),
            _ => None,
        };
        if let Some(target) = primary {
            let routing = &config.routing;
            match load_catalog(
                &target,
                &routing.replica_safe_functions,
                &routing.primary_functions,
            )
            .await
            {
                Ok(catalog) => {
                    let n = catalog.len();
                    if ctx.classifier.set_catalog(catalog) {
                        tracing::info!(functions = n, "function volatility loaded from pg_proc");
                    }
                    loaded_once = true;
                }
                Err(e) => tracing::warn!(server = %target.name, error = %e, "cannot read pg_proc"),
            }
        }
        // Until the first load, retry quickly: reads calling functions wait on it.
        let wait = if loaded_once {
            config.routing.function_refresh
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = &mut stopped => return,
        }
    }
}
async fn load_catalog(
    target: &Arc<ServerTarget>,
    extra_safe: &[String],
    force_primary: &[String],
) -> Result<FunctionCatalog, BackendError> {
    let mut conn =
        ServerConn::connect(target.clone(), &login(target), Duration::from_secs(5)).await?;
    let rows = conn.simple_rows(LOAD_SQL.as_bytes()).await;
    conn.terminate().await;
    let mut out = Vec::new();
    for row in rows? {
        if let [Some(schema), Some(name), Some(safe)] = row.as_slice() {
            out.push((schema.clone(), name.clone(), safe == "t"));
        }
    }
    Ok(FunctionCatalog::from_rows(out, extra_safe, force_primary))
}
