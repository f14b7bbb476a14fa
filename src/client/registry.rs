//! The client sessions open now, for the console's `SHOW CLIENTS`.
//!
//! A session registers when it begins and leaves when its entry drops. What
//! changes while it runs (its state, its pin, the server it is on) is kept in
//! atomics it stores once per unit, so that nothing on the data path takes a
//! lock; the console reads them whenever it is asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::backend::ServerId;
use crate::route::class::PinReason;

/// What a session is doing, as `SHOW CLIENTS` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Idle,
    Active,
    InTransaction,
    FailedTransaction,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::InTransaction => "idle in transaction",
            ClientState::FailedTransaction => "idle in transaction (aborted)",
        }
    }

    fn from_code(c: u8) -> ClientState {
        match c {
            1 => ClientState::Active,
            2 => ClientState::InTransaction,
            3 => ClientState::FailedTransaction,
            _ => ClientState::Idle,
        }
    }

    fn code(self) -> u8 {
        match self {
            ClientState::Idle => 0,
            ClientState::Active => 1,
            ClientState::InTransaction => 2,
            ClientState::FailedTransaction => 3,
        }
    }
}

const PINS: [PinReason; 7] = [
    PinReason::TempObject,
    PinReason::Listen,
    PinReason::AdvisoryLock,
    PinReason::HoldCursor,
    PinReason::Serializable,
    PinReason::Hint,
    PinReason::SessionChange,
];

/// No server (a `u32` id that is never configured).
const NO_SERVER: u32 = u32::MAX;

/// One open session.
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub application_name: Option<String>,
    pub addr: SocketAddr,
    pub since: SystemTime,
    state: AtomicU8,
    /// 0: none, else 1 + index in `PINS`.
    pin: AtomicU8,
    server: AtomicU32,
    /// Units run.
    units: AtomicU64,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_code(self.state.load(Ordering::Relaxed))
    }

    pub fn pin(&self) -> Option<PinReason> {
        let code = self.pin.load(Ordering::Relaxed);
        PINS.get(usize::from(code).checked_sub(1)?).copied()
    }

    pub fn server(&self) -> Option<ServerId> {
        let id = self.server.load(Ordering::Relaxed);
        (id != NO_SERVER).then_some(ServerId(id))
    }

    pub fn units(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// A unit begins. Sequentially consistent: see `client::pause`.
    #[inline]
    pub fn began(&self) {
        self.state
            .store(ClientState::Active.code(), Ordering::SeqCst);
    }

    /// A unit that was about to begin waits (for `RESUME`) instead.
    pub fn waits(&self) {
        self.state.store(ClientState::Idle.code(), Ordering::SeqCst);
    }

    /// Running something, or in a transaction: what `PAUSE` waits for.
    pub fn busy(&self) -> bool {
        ClientState::from_code(self.state.load(Ordering::SeqCst)) != ClientState::Idle
    }

    /// A unit ended: the session is in `state`, pinned by `pin`, on `server`
    /// (the one running its open transaction or holding its state).
    #[inline]
    pub fn ended(&self, state: ClientState, pin: Option<PinReason>, server: Option<ServerId>) {
        self.state.store(state.code(), Ordering::Relaxed);
        let pin = pin
            .and_then(|p| PINS.iter().position(|q| *q == p))
            .map_or(0, |i| u8::try_from(i + 1).unwrap_or(0));
        self.pin.store(pin, Ordering::Relaxed);
        self.server
            .store(server.map_or(NO_SERVER, |s| s.0), Ordering::Relaxed);
        self.units.fetch_add(1, Ordering::Relaxed);
    }
}

/// The open sessions.
#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl Clients {
    /// Registers a session until the returned entry drops.
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        application_name: Option<&str>,
        addr: SocketAddr,
    ) -> Registered {
        let info = Arc::new(ClientInfo {
            user: user.to_owned(),
            database: database.to_owned(),
            application_name: application_name.map(str::to_owned),
            addr,
            since: SystemTime::now(),
            state: AtomicU8::new(0),
            pin: AtomicU8::new(0),
            server: AtomicU32::new(NO_SERVER),
            units: AtomicU64::new(0),
        });
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, info.clone());
        Registered {
            clients: self.clone(),
            key,
            info,
        }
    }

    /// Every open session, oldest first.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(u64, Arc<ClientInfo>)> =
            open.iter().map(|(k, v)| (*k, v.clone())).collect();
        all.sort_by_key(|(k, _)| *k);
        all.into_iter().map(|(_, v)| v).collect()
    }
}

/// A session's entry; it leaves the registry when dropped.
pub struct Registered {
    clients: Arc<Clients>,
    key: u64,
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_and_go_and_say_what_they_do() {
        let clients = Arc::new(Clients::default());
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap_or_else(|e| panic!("{e}"));
        let a = clients.register("alice", "app", Some("web"), addr);
        let b = clients.register("bob", "app", None, addr);
        assert_eq!(clients.list().len(), 2);
        assert_eq!(a.info.state(), ClientState::Idle);
        a.info.began();
        assert_eq!(a.info.state(), ClientState::Active);
        a.info.ended(
            ClientState::InTransaction,
            Some(PinReason::Listen),
            Some(ServerId(2)),
        );
        assert_eq!(a.info.state(), ClientState::InTransaction);
        assert_eq!(a.info.pin(), Some(PinReason::Listen));
        assert_eq!(a.info.server(), Some(ServerId(2)));
        assert_eq!(a.info.units(), 1);
        a.info.ended(ClientState::Idle, None, None);
        assert_eq!((a.info.pin(), a.info.server()), (None, None));
        drop(a);
        let left = clients.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].user, "bob");
        drop(b);
        assert!(clients.list().is_empty());
    }
}
