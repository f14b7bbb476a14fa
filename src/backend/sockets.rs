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
//! A primary that stops answering is treated with more care: a write in
//! flight on it may have committed, and only the server can say. Only
//! connections running a read that may run again elsewhere are ended at once
//! ([`Sockets::end_rescuable`]); the session marks them so for the length of
//! the read ([`Registration::rescuable`]), and the mark and the ending agree
//! through one atomic, so a read that has just finished is never cut.
//!
//! Each entry is a duplicate of the connection's descriptor: shutting it down
//! ends the connection for its owner too. A connection registers once, when
//! it is opened, and leaves when it is dropped; per read, only the mark (two
//! atomic operations) is on the path.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

use super::ServerId;

/// A connection's mark: what it is doing, as far as ending it is concerned.
const BUSY: u8 = 0;
/// Runs a read that may run again elsewhere.
const RESCUABLE: u8 = 1;
/// Ended while rescuable: the owner finds its connection gone.
const ENDED: u8 = 2;

struct Entry {
    server: ServerId,
    socket: socket2::Socket,
    mark: Arc<AtomicU8>,
}

#[derive(Default)]
pub(crate) struct Sockets {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

impl Sockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
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
        let mark = Arc::new(AtomicU8::new(BUSY));
        self.lock().insert(
            serial,
            Entry {
                server: id,
                socket: dup,
                mark: mark.clone(),
            },
        );
        Some(Registration {
            sockets: self.clone(),
            serial,
            mark,
        })
    }

    /// Shuts down every registered connection to server `id`; how many.
    pub(crate) fn end_all(&self, id: ServerId) -> usize {
        self.end(id, |_| true)
    }

    /// Shuts down the connections to `id` that run a read which may run
    /// again elsewhere (see the module notes); how many.
    pub(crate) fn end_rescuable(&self, id: ServerId) -> usize {
        self.end(id, |mark| {
            mark.compare_exchange(RESCUABLE, ENDED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    fn end(&self, id: ServerId, mut chosen: impl FnMut(&AtomicU8) -> bool) -> usize {
        let open = self.lock();
        let mut ended = 0;
        for entry in open.values() {
            if entry.server == id && chosen(&entry.mark) {
                // A socket already closed by its peer reports an error here;
                // either way it is done.
                let _ = entry.socket.shutdown(Shutdown::Both);
                ended += 1;
            }
        }
        ended
    }

    /// Registered connections to `id`.
    #[cfg(test)]
    pub(crate) fn count(&self, id: ServerId) -> usize {
        self.lock().values().filter(|e| e.server == id).count()
    }
}

/// A connection's entry in [`Sockets`], removed when dropped.
pub(crate) struct Registration {
    sockets: Arc<Sockets>,
    serial: u64,
    mark: Arc<AtomicU8>,
}

impl Registration {
    /// Marks the connection as running a read that may be rescued (`true`)
    /// or as busy with anything else (`false`). Whether the connection is
    /// still whole: `false` once it was ended while marked.
    pub(crate) fn rescuable(&self, on: bool) -> bool {
        let (from, to) = if on {
            (BUSY, RESCUABLE)
        } else {
            (RESCUABLE, BUSY)
        };
        match self
            .mark
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now != ENDED,
        }
    }
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

    /// Only connections marked rescuable are ended by `end_rescuable`, and
    /// the owner learns that its connection was ended when it clears the
    /// mark; a mark cleared first keeps the connection out of reach.
    #[tokio::test]
    async fn only_marked_reads_are_rescued() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let sockets = Arc::new(Sockets::default());
        let mut conns = Vec::new();
        for _ in 0..2 {
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let client = client.unwrap_or_else(|e| panic!("{e}"));
            let peer = accepted.unwrap_or_else(|e| panic!("{e}"));
            let reg = sockets
                .register(ServerId(1), &client)
                .unwrap_or_else(|| panic!("registered"));
            conns.push((client, peer, reg));
        }
        let (read, _, read_reg) = &mut conns[0];
        assert!(read_reg.rescuable(true));
        assert_eq!(sockets.end_rescuable(ServerId(2)), 0, "another server");
        assert_eq!(sockets.end_rescuable(ServerId(1)), 1, "only the marked one");
        assert_eq!(sockets.end_rescuable(ServerId(1)), 0, "ended once");
        assert!(!read_reg.rescuable(false), "the owner learns it was ended");
        let mut buf = [0u8; 4];
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(5), read.read(&mut buf)).await;
        assert!(matches!(got, Ok(Ok(0) | Err(_))), "ended: {got:?}");
        // The other connection: marked, then cleared before the ending.
        let (_, _, write_reg) = &conns[1];
        assert!(write_reg.rescuable(true));
        assert!(write_reg.rescuable(false));
        assert_eq!(sockets.end_rescuable(ServerId(1)), 0, "nothing marked");
        assert_eq!(sockets.end_all(ServerId(1)), 2);
    }
}
