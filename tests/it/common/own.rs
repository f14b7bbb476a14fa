//! Helpers for tests that run their own cluster (to stop, kill or promote a
//! node) rather than a shared one, and for tests that watch pgsplit's view of
//! the servers change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsplit::backend::health::ServerHealth;
use pgsplit_cluster::{Cluster, ClusterOptions};

use super::Proxy;

/// Runs a blocking `Cluster` call off the runtime's threads.
pub async fn blocking<R: Send + 'static>(
    c: &Arc<Cluster>,
    f: impl FnOnce(&Cluster) -> R + Send + 'static,
) -> R {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .expect("blocking cluster call panicked")
}

pub async fn own_cluster() -> Arc<Cluster> {
    let c = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await
        .expect("cluster start panicked")
        .unwrap_or_else(|e| panic!("could not start a PostgreSQL cluster: {e}"));
    Arc::new(c)
}

/// Polls `check` every 10ms until it holds; returns how long that took, or `None`
/// after `timeout`.
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The health of the server listening on `port`, as pgsplit sees it now.
pub fn health_of(proxy: &Proxy, port: u16) -> ServerHealth {
    let suffix = format!(":{port}");
    proxy
        .ctx
        .health
        .get()
        .servers
        .iter()
        .find(|s| s.name.ends_with(&suffix))
        .cloned()
        .unwrap_or_else(|| panic!("no server on port {port} in the health snapshot"))
}
