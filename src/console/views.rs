//! What each console command shows, built from pgsplit's state: pure
//! functions of snapshots, so a table test can give them any state.

use std::time::Duration;

use tokio::time::Instant;

use super::table::{Table, Type, Value};
use crate::backend::health::{HealthSnapshot, Role};
use crate::config::{Config, ReadYourWrites};
use crate::route::class::{Class, Kind};
use crate::route::router::{Reason, ReplicaStatus, Target};
use crate::server::{Lsn, ServerId};

/// One pool as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    pub server: ServerId,
    pub user: String,
    pub database: String,
    pub active: u32,
    pub idle: u32,
    pub waiting: u32,
    pub max_wait: Duration,
    pub max_size: u32,
}

fn name_of(health: &HealthSnapshot, id: ServerId) -> String {
    health
        .server(id)
        .map_or_else(|| format!("#{}", id.0), |s| s.name.clone())
}

fn int(n: impl TryInto<i64>) -> Value {
    n.try_into().map_or(Value::Null, Value::Int)
}

fn lsn_text(lsn: Option<Lsn>) -> Value {
    lsn.map(|l| l.to_string()).into()
}

/// `SHOW SERVERS`: every configured server, what the monitor knows of it,
/// and its pooled connections.
pub fn servers(health: &HealthSnapshot, pools: &[PoolRow], now: Instant) -> Table {
    let mut t = Table::new(&[
        ("server", Type::Text),
        ("role", Type::Text),
        ("serving_reads", Type::Bool),
        ("lagging", Type::Bool),
        ("lsn", Type::Text),
        ("lag_bytes", Type::Int8),
        ("lag_seconds", Type::Float8),
        ("probe_age_seconds", Type::Float8),
        ("last_error", Type::Text),
        ("active", Type::Int8),
        ("idle", Type::Int8),
    ]);
    for s in &health.servers {
        let (active, idle) = pools
            .iter()
            .filter(|p| p.server == s.id)
            .fold((0u64, 0u64), |(a, i), p| {
                (a + u64::from(p.active), i + u64::from(p.idle))
            });
        let role = s.role.as_str();
        t.push(vec![
            s.name.as_str().into(),
            role.into(),
            Value::Bool(s.usable),
            Value::Bool(s.lagging),
            lsn_text(s.lsn),
            s.lag_bytes.map_or(Value::Null, int),
            s.lag.map_or(Value::Null, |l| Value::Float(l.as_secs_f64())),
            s.last_ok.map_or(Value::Null, |t| {
                Value::Float(now.saturating_duration_since(t).as_secs_f64())
            }),
            s.last_error.clone().into(),
            int(active),
            int(idle),
        ]);
    }
    t
}

/// `SHOW POOLS`: one row per (server, user, database) pool.
pub fn pools(health: &HealthSnapshot, pools: &[PoolRow]) -> Table {
    let mut t = Table::new(&[
        ("server", Type::Text),
        ("user", Type::Text),
        ("database", Type::Text),
        ("active", Type::Int8),
        ("idle", Type::Int8),
        ("waiting", Type::Int8),
        ("max_wait_seconds", Type::Float8),
        ("max_size", Type::Int8),
    ]);
    let mut rows: Vec<&PoolRow> = pools.iter().collect();
    rows.sort_by(|a, b| {
        (a.server.0, &a.user, &a.database).cmp(&(b.server.0, &b.user, &b.database))
    });
    for p in rows {
        t.push(vec![
            name_of(health, p.server).into(),
            p.user.as_str().into(),
            p.database.as_str().into(),
            int(p.active),
            int(p.idle),
            int(p.waiting),
            Value::Float(p.max_wait.as_secs_f64()),
            int(p.max_size),
        ]);
    }
    t
}

/// `SHOW CLIENTS`: one row per client session (no SQL text; the client's
/// address only with `[admin] show_addresses`).
pub fn clients(
    health: &HealthSnapshot,
    clients: &[std::sync::Arc<crate::client::registry::ClientInfo>],
    now: std::time::SystemTime,
    show_addresses: bool,
) -> Table {
    let mut t = Table::new(&[
        ("user", Type::Text),
        ("database", Type::Text),
        ("application_name", Type::Text),
        ("state", Type::Text),
        ("pinned", Type::Text),
        ("server", Type::Text),
        ("connected_seconds", Type::Float8),
        ("units", Type::Int8),
        ("address", Type::Text),
    ]);
    for c in clients {
        t.push(vec![
            c.user.as_str().into(),
            c.database.as_str().into(),
            c.application_name.clone().into(),
            c.state().as_str().into(),
            c.pin().map(|p| p.as_str()).into(),
            c.server().map(|id| name_of(health, id)).into(),
            Value::Float(
                now.duration_since(c.since)
                    .unwrap_or_default()
                    .as_secs_f64(),
            ),
            int(c.units()),
            show_addresses.then(|| c.addr.to_string()).into(),
        ]);
    }
    t
}

/// `SHOW STATS`: pgsplit's counters since it started (units by route and
/// reason, errors, retries, fallbacks, connections...), one row per metric
/// and label set, as `/metrics` has them.
pub fn stats(counters: &[(String, String, f64)]) -> Table {
    let mut t = Table::new(&[
        ("metric", Type::Text),
        ("labels", Type::Text),
        ("value", Type::Float8),
    ]);
    for (name, labels, value) in counters {
        t.push(vec![
            name.as_str().into(),
            labels.as_str().into(),
            Value::Float(*value),
        ]);
    }
    t
}

/// `SHOW CONFIG`: the effective configuration, one key per row, passwords
/// masked (server URLs print `***` for theirs).
pub fn config(c: &Config) -> Table {
    let mut t = Table::new(&[("key", Type::Text), ("value", Type::Text)]);
    let mut row = |k: &str, v: String| t.push(vec![k.into(), v.into()]);
    let d = |d: Duration| format!("{d:?}");
    row("listen", c.listen.to_string());
    row("admin_listen", c.admin_listen.to_string());
    row("primary", c.primary.to_string());
    row(
        "replicas",
        c.replicas
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        "workers",
        c.workers.map_or("auto".into(), |w| w.to_string()),
    );
    row("auth.method", format!("{:?}", c.auth.method).to_lowercase());
    let r = &c.routing;
    row("routing.health_interval", d(r.health_interval));
    row("routing.max_lag", d(r.max_lag));
    row("routing.max_lag_bytes", r.max_lag_bytes.0.to_string());
    row(
        "routing.read_your_writes",
        format!("{:?}", r.read_your_writes).to_lowercase(),
    );
    row("routing.read_your_writes_wait", d(r.read_your_writes_wait));
    row("routing.primary_wait", d(r.primary_wait));
    row("routing.function_refresh", d(r.function_refresh));
    row(
        "routing.replica_safe_functions",
        r.replica_safe_functions.join(", "),
    );
    row("routing.primary_functions", r.primary_functions.join(", "));
    row("routing.cache_size", r.cache_size.to_string());
    row(
        "routing.optimistic_transactions",
        r.optimistic_transactions.to_string(),
    );
    row(
        "routing.optimistic_max_statements",
        r.optimistic_max_statements.to_string(),
    );
    row(
        "routing.optimistic_max_bytes",
        r.optimistic_max_bytes.0.to_string(),
    );
    let p = &c.pool;
    row("pool.mode", format!("{:?}", p.mode).to_lowercase());
    row("pool.max_size", p.max_size.to_string());
    row(
        "pool.prepared_statements",
        p.prepared_statements.to_string(),
    );
    row("pool.checkout_timeout", d(p.checkout_timeout));
    row("pool.connect_timeout", d(p.connect_timeout));
    row("pool.idle_timeout", d(p.idle_timeout));
    let l = &c.limits;
    row(
        "limits.max_client_connections",
        l.max_client_connections.to_string(),
    );
    row("limits.max_message_size", l.max_message_size.0.to_string());
    row("limits.handshake_timeout", d(l.handshake_timeout));
    row("limits.shutdown_grace", d(l.shutdown_grace));
    row("tls.mode", format!("{:?}", c.tls.mode).to_lowercase());
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    row("tls.cert", path(&c.tls.cert).unwrap_or_default());
    row("tls.key", path(&c.tls.key).unwrap_or_default());
    row("tls.client_ca", path(&c.tls.client_ca).unwrap_or_default());
    let n = &c.net;
    row("net.tcp_keepalive_idle", d(n.tcp_keepalive_idle));
    row("net.tcp_keepalive_interval", d(n.tcp_keepalive_interval));
    row("net.tcp_keepalive_count", n.tcp_keepalive_count.to_string());
    row("net.tcp_user_timeout", d(n.tcp_user_timeout));
    row("admin.users", c.admin.users.join(", "));
    row("admin.show_addresses", c.admin.show_addresses.to_string());
    t
}

/// What `SHOW ROUTE` knows of a statement and of now.
pub struct RouteFacts<'a> {
    pub class: Class,
    /// What makes it no read (`classify::why_not_read`), if anything.
    pub why_not_read: Option<String>,
    pub placed: (Target, Reason),
    pub health: &'a HealthSnapshot,
    /// Replicas with replay positions as routing saw them.
    pub replicas: &'a [ReplicaStatus],
    pub floor: Option<Lsn>,
    pub config: &'a Config,
}

fn route_table() -> Table {
    Table::new(&[
        ("target", Type::Text),
        ("server", Type::Text),
        ("reason", Type::Text),
        ("statement", Type::Text),
        ("why", Type::Text),
    ])
}

/// `SHOW ROUTE` of a BEGIN an optimistic transaction defers: no server
/// sees it yet.
pub fn deferred_begin_route() -> Table {
    let mut t = route_table();
    t.push(vec![
        "none".into(),
        "".into(),
        Reason::Transaction.as_str().into(),
        "BEGIN".into(),
        "optimistic transaction: pgsplit answers the BEGIN itself, and the transaction starts where its first statement goes (a read: a replica, recorded; a write: the primary)".into(),
    ]);
    t
}

/// `SHOW ROUTE`: where the statement goes for a client with default
/// session state now, and why, in words.
pub fn route(f: &RouteFacts<'_>) -> Table {
    let mut t = route_table();
    let (target, reason) = f.placed;
    let (target_name, server) = match target {
        Target::Primary => (
            "primary",
            match f.health.primary {
                crate::backend::health::PrimaryState::Known(id) => name_of(f.health, id),
                _ => f.config.primary.addr(),
            },
        ),
        Target::Replica(id) => ("replica", name_of(f.health, id)),
    };
    let kind = match f.class.kind {
        Kind::Read => "read-only".to_owned(),
        Kind::Write if !f.class.parsed => "not parsed".to_owned(),
        Kind::Write => "write".to_owned(),
        Kind::Begin { replica_ok: true } => "BEGIN READ ONLY".to_owned(),
        Kind::Begin { replica_ok: false } => "BEGIN".to_owned(),
        Kind::Session => "session setting".to_owned(),
        Kind::TxnControl => "transaction control".to_owned(),
    };
    t.push(vec![
        target_name.into(),
        server.into(),
        reason.as_str().into(),
        kind.into(),
        why(f).into(),
    ]);
    t
}

fn why(f: &RouteFacts<'_>) -> String {
    let (_, reason) = f.placed;
    let names = |pick: &dyn Fn(&ReplicaStatus) -> bool| {
        f.replicas
            .iter()
            .filter(|r| pick(r))
            .map(|r| name_of(f.health, r.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match reason {
        Reason::Read => "provably read-only; a replica under the lag limits serves it".into(),
        Reason::Write => f
            .why_not_read
            .as_ref()
            .map_or_else(|| "it may write".to_owned(), |w| format!("it {w}")),
        Reason::Transaction | Reason::Session => {
            let words = reason_words(reason, f.class.kind);
            match &f.why_not_read {
                Some(w) => format!("{words} (it {w})"),
                None => words.to_owned(),
            }
        }
        Reason::ParseFallback => {
            "the parser could not read it: the primary runs it, to be safe".into()
        }
        Reason::Pinned => format!(
            "it pins the session to the primary ({})",
            f.class.pin.map_or("a session pin", |p| p.as_str())
        ),
        Reason::Hint => "a routing hint chose the server".into(),
        Reason::Lag => {
            let max = f.config.routing.max_lag;
            let over: Vec<String> = f
                .health
                .servers
                .iter()
                .filter(|s| s.role == Role::Replica && s.lagging)
                .map(|s| match s.lag {
                    Some(l) if l > max => format!(
                        "{} over max_lag by {:.1} s",
                        s.name,
                        (l - max).as_secs_f64()
                    ),
                    _ if !s.usable && s.lag_bytes.is_some_and(|b| b <= f.config.routing.max_lag_bytes.0) => {
                        format!("{} on probation after a bad spell", s.name)
                    }
                    _ => format!("{} over max_lag_bytes", s.name),
                })
                .collect();
            format!("every replica is over the lag limits: {}", over.join("; "))
        }
        Reason::ReadYourWrites => {
            let floor = f.floor.map_or_else(|| "?".into(), |l| l.to_string());
            let scope = match f.config.routing.read_your_writes {
                ReadYourWrites::Pod => "this pod's last committed write",
                _ => "the session's last committed write",
            };
            format!(
                "no replica is known to have replayed {scope} (floor {floor}; replicas behind it: {}); \
                 a read asks the replica and waits up to read_your_writes_wait ({:?}) before it uses the primary",
                names(&|r| r.up && !r.lagging),
                f.config.routing.read_your_writes_wait
            )
        }
        Reason::ReplicaDown if f.replicas.is_empty() => "no replica is configured or up".into(),
        Reason::ReplicaDown => format!("no replica is up ({} down)", names(&|r| !r.up)),
        Reason::PrimaryDown => "the primary does not answer its health probes: the freshest replica serves reads it would have served".into(),
    }
}

fn reason_words(reason: Reason, kind: Kind) -> &'static str {
    match (reason, kind) {
        (Reason::Transaction, Kind::TxnControl) => {
            "transaction control: it goes where the open transaction runs"
        }
        (Reason::Transaction, _) => "a transaction that may write: it runs on the primary, whole",
        _ => {
            "a session setting: it runs on the primary and is replayed on the session's other connections"
        }
    }
}

#[cfg(test)]
#[path = "views_tests.rs"]
mod tests;
