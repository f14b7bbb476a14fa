//! Where the running pgsplit is between start and exit, as one signal that
//! only moves forward: `/readyz` turns 503 from [`Phase::Draining`], open
//! sessions end (57P01) at [`Phase::Terminating`], background tasks stop at
//! [`Phase::Stopped`]. Every task that outlives a client is spawned on the
//! lifecycle's tracker, so stopping waits for them.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// No new clients; open sessions may finish (SIGTERM, `shutdown_grace`).
    Draining,
    /// Open sessions end now, telling their clients 57P01.
    Terminating,
    /// Background tasks (monitor, catalog refresh, admin listener) end.
    Stopped,
}

#[derive(Clone)]
pub struct Lifecycle {
    phase: Arc<watch::Sender<Phase>>,
    tasks: TaskTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Arc::new(watch::channel(Phase::Running).0),
            tasks: TaskTracker::new(),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves on to `to`; never back.
    pub fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|p| {
            let later = to > *p;
            if later {
                *p = to;
            }
            later
        });
    }

    /// Resolves once the phase is `p` or later.
    pub fn reached(&self, p: Phase) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.phase.subscribe();
        async move {
            let _ = rx.wait_for(|now| *now >= p).await;
        }
    }

    /// Runs `task` in the background until it ends; [`Lifecycle::stopped`]
    /// waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Enters [`Phase::Stopped`] and waits until every tracked task has
    /// ended.
    pub async fn stopped(&self) {
        self.advance(Phase::Stopped);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_stopping_waits_for_tasks() {
        let life = Lifecycle::default();
        let stopping = life.reached(Phase::Stopped);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        life.spawn(async move {
            stopping.await;
            // A task cleaning up after the signal is waited for.
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        life.advance(Phase::Terminating);
        life.advance(Phase::Draining);
        assert_eq!(life.phase(), Phase::Terminating, "no way back");
        let bounded = tokio::time::timeout(Duration::from_secs(5), life.stopped()).await;
        assert!(bounded.is_ok(), "stopped() did not return");
        assert!(ended.load(std::sync::atomic::Ordering::Acquire));
        // Reaching an earlier phase resolves at once.
        let now = tokio::time::timeout(Duration::from_secs(1), life.reached(Phase::Draining));
        assert!(now.await.is_ok());
    }
}
