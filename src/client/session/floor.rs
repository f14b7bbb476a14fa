//! The read-your-writes floor: recorded after a committed write, consulted
//! for every read, and waited on (briefly) when only the floor keeps a read
//! off the replicas.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Session;
use crate::backend::ServerId;
use crate::backend::replay::CatchUp;
use crate::client::ClientError;
use crate::config::{Config, ReadYourWrites};
use crate::server::Lsn;

impl Session {
    /// Raises this session's (and, with `pod`, every session's) floor to the
    /// primary's insert position `lsn`, read after a commit.
    pub(super) fn set_floor(&mut self, lsn: Lsn, config: &Config) {
        let lsn = lsn.record_boundary();
        self.st.floor = Some(self.st.floor.map_or(lsn, |f| f.max(lsn)));
        if config.routing.read_your_writes == ReadYourWrites::Pod {
            self.ctx.pod_floor.fetch_max(lsn.0, Ordering::AcqRel);
        }
    }

    /// The read-your-writes floor that applies to this session now.
    pub(super) fn floor(&self, config: &Config) -> Option<Lsn> {
        match config.routing.read_your_writes {
            ReadYourWrites::Off => None,
            ReadYourWrites::Session => self.st.floor,
            ReadYourWrites::Pod => self.st.floor.max(self.ctx.shared_floor()),
        }
    }

    /// Records the WAL position after a committed write, asked on the
    /// connection to `id` (the primary that ran it), as the floor.
    pub(super) async fn record_floor(&mut self, id: ServerId, config: &Config) {
        let lsn = match self.conns.held(id) {
            Ok(held) => held.conn.wal_insert_lsn().await.map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match lsn {
            Ok(lsn) => self.set_floor(lsn, config),
            Err(e) => {
                // Unknown position: keep this session's reads on the primary.
                tracing::debug!(error = %e, "cannot read the WAL position after a write");
                self.st.floor = Some(Lsn(u64::MAX));
            }
        }
    }

    /// A read held back only by its read-your-writes floor: asks replica
    /// `id` how far it has replayed, and waits up to `read_your_writes_wait`
    /// for it to pass the floor (see `backend::replay`). Whether it did; the
    /// primary serves the read if not.
    pub(super) async fn wait_for_replica(&self, floor: Lsn, id: ServerId) -> bool {
        let wait = self.ctx.config().routing.read_your_writes_wait;
        // An unknown position (u64::MAX) is never reached.
        if wait.is_zero() || floor == Lsn(u64::MAX) {
            return false;
        }
        let Some(target) = self.ctx.server(id) else {
            return false;
        };
        let login = crate::backend::monitor::login(&target);
        let started = Instant::now();
        let outcome = self.ctx.replay.catch_up(&target, &login, floor, wait).await;
        let reached = outcome == CatchUp::Reached;
        self.ctx.metrics.replay_wait(started.elapsed(), reached);
        reached
    }
}
