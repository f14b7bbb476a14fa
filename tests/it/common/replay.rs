//! The cluster of the tests that pause WAL replay on the replica.
//!
//! A paused replica falls behind for every client of its cluster: pgsplit takes
//! reads off it, and a test on the same cluster that expects its reads on the
//! replica, or a replica that has its writes, would fail for no fault of its
//! own. So the tests that pause replay do not use the shared [`super::cluster`],
//! and rather than a cluster each they share one of their own, one test at a
//! time: [`replay_cluster`] waits for the previous test to be done with it, then
//! hands it over with replay running, the replica caught up and nobody else
//! writing on the primary (the lag tests need an idle primary to start from).

use std::sync::{Arc, OnceLock};

use pgsplit_cluster::{Cluster, ClusterOptions};
use tokio::sync::{Mutex, MutexGuard};

/// A test's turn on the replay cluster: the cluster is that test's alone until
/// the turn is dropped. Bind it to a named variable (`_turn`), not to `_`,
/// which would drop it at once.
pub struct Turn {
    _held: MutexGuard<'static, ()>,
}

/// Waits for the turn on this process's replay cluster (started on first use)
/// and returns the cluster with it. A failed start is remembered and reported
/// by every test.
pub async fn replay_cluster() -> (Arc<Cluster>, Turn) {
    static TURN: Mutex<()> = Mutex::const_new(());
    static CLUSTER: OnceLock<Result<Arc<Cluster>, String>> = OnceLock::new();
    let held = TURN.lock().await;
    let ready = tokio::task::spawn_blocking(|| {
        let c = match CLUSTER.get_or_init(|| {
            Cluster::start(ClusterOptions::default())
                .map(Arc::new)
                .map_err(|e| e.to_string())
        }) {
            Ok(c) => c.clone(),
            Err(e) => return Err(format!("could not start the replay test cluster: {e}")),
        };
        // A test that failed with replay paused left it paused.
        c.resume_replay()
            .and_then(|()| c.wait_caught_up())
            .map_err(|e| format!("the replay test cluster did not catch up: {e}"))?;
        Ok(c)
    })
    .await;
    match ready {
        Ok(Ok(c)) => (c, Turn { _held: held }),
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("replay cluster setup panicked: {e}"),
    }
}
