//! Server health: who is primary, who is up, how far behind each replica is.
//!
//! [`HealthState`] is the pure state machine (probes in, snapshot out, time passed
//! in explicitly) and [`run_monitor`] the I/O loop around it. Routing reads only
//! the latest [`HealthSnapshot`], a cheap `Arc` clone per unit.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::route::router::ReplicaStatus;
use crate::server::{Lsn, ServerId};

/// Consecutive good probes before a replica (re)gains reads.
pub const GOOD_PROBES_TO_USE: u32 = 3;
/// How much primary WAL history is kept to turn byte lag into time lag.
const HISTORY: Duration = Duration::from_secs(600);

/// One probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a replica.
    pub lsn: Option<Lsn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Down,
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Down => "down",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// Everything known about one server after the last probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHealth {
    pub id: ServerId,
    pub name: String,
    pub role: Role,
    pub lsn: Option<Lsn>,
    pub lag_bytes: Option<u64>,
    pub lag: Option<Duration>,
    /// A replica that may take reads now.
    pub usable: bool,
    pub lagging: bool,
    pub last_ok: Option<Instant>,
    /// Why the last probe failed (set by the monitor, for error messages).
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryState {
    /// No probe has answered yet.
    Unknown,
    Known(ServerId),
    /// Nobody claims to be primary.
    None,
    /// More than one server claims to be primary: writes are refused.
    Fenced,
}

#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    pub primary: PrimaryState,
    /// The primary answered its last probe (true before the first probe).
    /// A known primary that missed one probe stays `Known` (a slow answer
    /// does not unseat it), but writes wait for it to answer again and
    /// reads that a replica can serve do not wait for it at all.
    pub primary_answers: bool,
    pub primary_lsn: Option<Lsn>,
    pub servers: Vec<ServerHealth>,
    pub replicas: Vec<ReplicaStatus>,
}

impl HealthSnapshot {
    pub fn initial(servers: &[(ServerId, String)]) -> Self {
        HealthSnapshot {
            primary: PrimaryState::Unknown,
            primary_answers: true,
            primary_lsn: None,
            servers: servers
                .iter()
                .map(|(id, name)| ServerHealth {
                    id: *id,
                    name: name.clone(),
                    role: Role::Unknown,
                    lsn: None,
                    lag_bytes: None,
                    lag: None,
                    usable: false,
                    lagging: false,
                    last_ok: None,
                    last_error: None,
                })
                .collect(),
            replicas: Vec::new(),
        }
    }

    pub fn server(&self, id: ServerId) -> Option<&ServerHealth> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The primary a write may be sent to now: known, and it answered its
    /// last probe.
    pub fn writable_primary(&self) -> Option<ServerId> {
        match self.primary {
            PrimaryState::Known(id) if self.primary_answers => Some(id),
            _ => None,
        }
    }
}

/// Lag limits a replica must be under to take reads.
#[derive(Debug, Clone, Copy)]
pub struct LagLimits {
    pub max_lag: Duration,
    pub max_lag_bytes: u64,
}

/// The pure part of the monitor.
pub struct HealthState {
    limits: LagLimits,
    /// Primary WAL positions over time, oldest first.
    history: VecDeque<(Instant, Lsn)>,
    good_streak: HashMap<ServerId, u32>,
    snapshot: HealthSnapshot,
    /// Consecutive failed probes of the known primary (see `observe`).
    primary_misses: u32,
}

impl HealthState {
    pub fn new(limits: LagLimits, servers: &[(ServerId, String)]) -> Self {
        HealthState {
            limits,
            history: VecDeque::new(),
            good_streak: HashMap::new(),
            snapshot: HealthSnapshot::initial(servers),
            primary_misses: 0,
        }
    }

    pub fn set_limits(&mut self, limits: LagLimits) {
        self.limits = limits;
    }

    /// Follows a reload: new servers start unknown, removed ones are forgotten.
    pub fn set_servers(&mut self, servers: &[(ServerId, String)]) {
        let mut list = Vec::with_capacity(servers.len());
        for (id, name) in servers {
            match self.snapshot.server(*id) {
                Some(h) => list.push(h.clone()),
                None => list.extend(HealthSnapshot::initial(&[(*id, name.clone())]).servers),
            }
        }
        self.snapshot.servers = list;
        self.good_streak
            .retain(|id, _| servers.iter().any(|(s, _)| s == id));
    }

    pub fn snapshot(&self) -> &HealthSnapshot {
        &self.snapshot
    }

    /// Time lag of a replica at `replay`: how long ago the primary first moved
    /// past that position. Zero when the replica has everything the primary has,
    /// so an idle primary never makes lag grow.
    fn time_lag(&self, now: Instant, replay: Lsn) -> Duration {
        let Some(&(_, latest)) = self.history.back() else {
            return Duration::ZERO;
        };
        if replay >= latest {
            return Duration::ZERO;
        }
        // The first position past `replay` was reached no later than when it
        // was first seen; `latest > replay` guarantees there is one.
        self.history
            .iter()
            .find(|(_, lsn)| *lsn > replay)
            .map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(*t))
    }

    /// Folds one round of probes (one per configured server, `None` = failed)
    /// into a new snapshot, and returns human-readable state changes to log.
    pub fn observe(&mut self, now: Instant, probes: &[(ServerId, Option<Probe>)]) -> Vec<String> {
        let claimants: Vec<ServerId> = probes
            .iter()
            .filter(|(_, p)| matches!(p, Some(p) if !p.in_recovery))
            .map(|(id, _)| *id)
            .collect();
        let primary = match claimants.as_slice() {
            // One missed probe (a slow answer on a loaded machine) does not
            // unseat a known primary while nobody else claims the role; a
            // second one in a row does.
            [] => match self.snapshot.primary {
                PrimaryState::Known(id)
                    if self.primary_misses == 0
                        && probes.iter().any(|(pid, p)| *pid == id && p.is_none()) =>
                {
                    self.primary_misses += 1;
                    PrimaryState::Known(id)
                }
                _ => PrimaryState::None,
            },
            [one] => PrimaryState::Known(*one),
            _ => PrimaryState::Fenced,
        };
        if claimants.len() == 1 {
            self.primary_misses = 0;
        }
        let primary_lsn = match primary {
            PrimaryState::Known(id) => probes
                .iter()
                .find(|(pid, _)| *pid == id)
                .and_then(|(_, p)| p.and_then(|p| p.lsn)),
            _ => None,
        };
        if let Some(lsn) = primary_lsn
            && self.history.back().is_none_or(|(_, last)| *last != lsn)
        {
            self.history.push_back((now, lsn));
        }
        // Drop history older than HISTORY, but keep the newest such entry: it
        // says since when the primary has been at least there, which a replica
        // stuck behind it still needs after a long idle spell.
        while self
            .history
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > HISTORY)
        {
            self.history.pop_front();
        }

        let mut changes = Vec::new();
        if primary != self.snapshot.primary {
            changes.push(match primary {
                PrimaryState::Known(id) => format!("primary is now server {}", self.name(id)),
                PrimaryState::None => "no server claims to be primary: writes wait".into(),
                PrimaryState::Fenced => format!(
                    "{} servers claim to be primary: writes are refused (fenced) until one remains",
                    claimants.len()
                ),
                PrimaryState::Unknown => String::new(),
            });
        }
        let mut servers = Vec::with_capacity(probes.len());
        let mut replicas = Vec::new();
        for (id, probe) in probes {
            let prev = self.snapshot.server(*id).cloned();
            let name = prev.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            let mut h = ServerHealth {
                id: *id,
                name,
                role: Role::Down,
                lsn: None,
                lag_bytes: None,
                lag: None,
                usable: false,
                lagging: false,
                last_ok: prev.as_ref().and_then(|p| p.last_ok),
                last_error: None,
            };
            match probe {
                None => {
                    self.good_streak.insert(*id, 0);
                }
                Some(p) => {
                    h.last_ok = Some(now);
                    h.lsn = p.lsn;
                    if !p.in_recovery {
                        h.role = Role::Primary;
                        self.good_streak.insert(*id, 0);
                    } else {
                        h.role = Role::Replica;
                        let replay = p.lsn.unwrap_or_default();
                        let lag_bytes = primary_lsn.map(|pl| pl.bytes_since(replay));
                        let lag = self.time_lag(now, replay);
                        h.lag_bytes = lag_bytes;
                        h.lag = Some(lag);
                        h.lagging = lag > self.limits.max_lag
                            || lag_bytes.is_some_and(|b| b > self.limits.max_lag_bytes);
                        let streak = self.good_streak.entry(*id).or_insert(0);
                        if h.lagging {
                            *streak = 0;
                        } else {
                            *streak = streak.saturating_add(1);
                        }
                        h.usable = *streak >= GOOD_PROBES_TO_USE;
                        replicas.push(ReplicaStatus {
                            id: *id,
                            up: true,
                            // On probation counts as lagging: reachable, not yet trusted.
                            lagging: !h.usable,
                            replay: p.lsn,
                        });
                    }
                }
            }
            if let Some(prev) = &prev {
                let was = describe(prev);
                let now_is = describe(&h);
                if was != now_is {
                    changes.push(format!("server {}: {} -> {}", h.name, was, now_is));
                }
            }
            servers.push(h);
        }
        let primary_answers = match primary {
            PrimaryState::Known(id) => probes.iter().any(|(pid, p)| *pid == id && p.is_some()),
            _ => false,
        };
        self.snapshot = HealthSnapshot {
            primary,
            primary_answers,
            primary_lsn,
            servers,
            replicas,
        };
        changes.retain(|c| !c.is_empty());
        changes
    }

    fn name(&self, id: ServerId) -> String {
        self.snapshot
            .server(id)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }
}

fn describe(h: &ServerHealth) -> &'static str {
    match h.role {
        Role::Unknown => "unknown",
        Role::Down => "down",
        Role::Primary => "primary",
        Role::Replica if h.usable => "replica (serving reads)",
        Role::Replica if h.lagging => "replica (lagging)",
        Role::Replica => "replica (on probation)",
    }
}

/// The shared, latest snapshot: the monitor sets it, sessions read it once
/// per unit, and writers waiting for a primary wait for its next change.
pub type Health = crate::shared::Shared<HealthSnapshot>;
