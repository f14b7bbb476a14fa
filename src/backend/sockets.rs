//! The sockets of the pooled server connections, by server, so that a server
//! that stopped answering can have them all ended at once.
//!
//! A frozen server (a stopped process, a node without power or network)
//! closes nothing: a read in flight on it waits for an answer that does not
//! come, for as long as the freeze or until TCP gives up (minutes). The
//! health monitor notices within a probe timeout. It then shuts these sockets
//! down: each read waiting on one sees its connection end at once and, when
//! nothing of its answer has reached the client yet, runs again elsewhere
//! (the retry of `route::plan::RelayMode::retry_conflict`), and idle
//! connections to the server are not lent again.
//!
//! Each entry is a duplicate of the connection's descriptor: shutting it down
//! ends the connection for its owner too. Nothing here is on the per-query
//! path: a connection registers once, when it is opened, and leaves when it
//! is dropped.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

use super::ServerId;

#[derive(Default)]
pub(crate) struct Sockets {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (ServerId, socket2::Socket)>>,
}

impl Sockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (ServerId, socket2::Socket)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `tcp`, a connection to server `id`, until the returned
    /// registration is dropped. `None` when the descriptor cannot be
    /// duplicated (out of descriptors): the connection then works as
    /// before, only without being ended early.
    pub(crate) fn register(
        self: &Arc<Self>,
        id: ServerId,
        tcp: &TcpStream,
    ) -> Option<Registration> {
        let dup = match socket2::SockRef::from(tcp).try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep a handle on a server socket");
                return None;
            }
        };
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(serial, (id, dup));
        Some(Registration {
            sockets: self.clone(),
            serial,
        })
    }

    /// Shuts down every registered connection to server `id`; how many.
    pub(crate) fn end_all(&self, id: ServerId) -> usize {
        let open = self.lock();
        let mut ended = 0;
        for (server, socket) in open.values() {
            if *server == id {
                // A socket already closed by its peer reports an error here;
                // either way it is done.
                let _ = socket.shutdown(Shutdown::Both);
                ended += 1;
            }
        }
        ended
    }

    /// Registered connections to `id`.
    #[cfg(test)]
    pub(crate) fn count(&self, id: ServerId) -> usize {
        self.lock().values().filter(|(s, _)| *s == id).count()
    }
}

/// A connection's entry in [`Sockets`], removed when dropped.
pub(crate) struct Registration {
    sockets: Arc<Sockets>,
    serial: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.serial);
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({})", self.serial)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A read waiting on a connection whose peer never answers ends as soon
    /// as the connection is ended through the registry.
    #[tokio::test]
    async fn ending_a_server_wakes_the_reads_waiting_on_it() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let connect = TcpStream::connect(addr);
        let (client, accepted) = tokio::join!(connect, listener.accept());
        let mut client = client.unwrap_or_else(|e| panic!("{e}"));
        // The peer stays open and silent: a frozen server.
        let _peer = accepted.unwrap_or_else(|e| panic!("{e}"));
        let sockets = Arc::new(Sockets::default());
        let reg = sockets.register(ServerId(3), &client);
        assert!(reg.is_some());
        assert_eq!(sockets.count(ServerId(3)), 1);
        assert_eq!(sockets.end_all(ServerId(4)), 0, "another server");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            client.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the read waits for the silent peer");
        assert_eq!(sockets.end_all(ServerId(3)), 1);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
        assert!(
            matches!(read, Ok(Ok(Ok(0) | Err(_)))),
            "the read ends: {read:?}"
        );
        drop(reg);
        assert_eq!(sockets.count(ServerId(3)), 0, "dropped, unregistered");
    }
}
