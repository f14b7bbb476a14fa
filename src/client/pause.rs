//! `PAUSE` and `RESUME` from the admin console: while paused, a session
//! that is about to start new work (a unit outside an open transaction)
//! waits; work inside open transactions goes on, so that they can finish.
//! An operator pauses, waits for running transactions to end (the console's
//! `PAUSE` does), switches the primary over, and resumes: clients wait
//! instead of failing.
//!
//! The session marks itself active *before* it checks the flag, and `PAUSE`
//! sets the flag *before* it looks for active sessions (both sequentially
//! consistent), so either the session sees the pause or `PAUSE` sees the
//! session: none slips past unseen.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Pause {
    paused: AtomicBool,
    resumed: Notify,
}

impl Pause {
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    #[inline]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once not paused.
    pub async fn resumed(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the flag is read: a RESUME in between wakes it.
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_go_on_at_resume() {
        let pause = Arc::new(Pause::default());
        pause.resumed().await;
        pause.pause();
        let waiter = {
            let pause = pause.clone();
            tokio::spawn(async move { pause.resumed().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "paused: it waits");
        pause.resume();
        let done = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(done, Ok(Ok(()))), "resumed: it goes on");
    }
}
