//! Cancel requests. Each client gets a (pid, secret) pair minted by pgsplit; a
//! cancel with that pair is forwarded to the server connection currently running
//! the client's statement, primary or replica, with that server's own key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{CancelKey, ServerTarget};
use crate::protocol::build;

/// Where a cancel for this client should go right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Shared, so that pointing the slot at a connection allocates nothing.
    pub server: Arc<ServerTarget>,
    pub key: CancelKey,
}

#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    pub fn set(&self, t: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn get(&self) -> Option<CancelTarget> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A registered client: its secret key and where its cancels go.
type Registered = (Vec<u8>, Arc<CancelSlot>);

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, Registered>>,
}

/// Unregisters the client's key when its session ends.
pub struct CancelGuard<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: Vec<u8>,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Mints a (pid, secret) pair with a secret of `key_len` bytes (see
    /// `startup::cancel_key_len`).
    pub fn register(&self, key_len: usize) -> CancelGuard<'_> {
        let slot = Arc::new(CancelSlot::default());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid: i32 = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 || map.contains_key(&pid) {
                continue;
            }
            let mut secret = vec![0u8; key_len];
            rand::fill(&mut secret[..]);
            map.insert(pid, (secret.clone(), slot.clone()));
            return CancelGuard {
                registry: self,
                pid,
                secret,
                slot,
            };
        }
    }

    /// Forwards a client's cancel request. Unknown keys and wrong secrets are
    /// ignored silently, as PostgreSQL does (the requester learns nothing).
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let target = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some((s, slot)) if crate::client::auth::constant_time_eq(s, secret) => slot.get(),
                _ => None,
            }
        };
        let Some(t) = target else { return };
        let (host, port) = (t.server.url.host.as_str(), t.server.url.port);
        match TcpStream::connect((host, port)).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(&build::cancel_request(
                        t.key.pid,
                        &t.key.secret.to_be_bytes(),
                    ))
                    .await;
                let _ = s.shutdown().await;
            }
            Err(e) => {
                tracing::warn!(server = %t.server.name, error = %e, "cannot forward cancel request")
            }
        }
    }
}
