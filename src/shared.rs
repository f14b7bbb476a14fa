//! A value many tasks read and one replaces whole: the configuration, the
//! server list, the login credentials, the servers' health.
//!
//! A reader takes a snapshot (one read lock, one reference count) and keeps
//! one consistent view for as long as it holds it: a session reads each once
//! per unit, so a reload or a health change never shows a unit half of each.

use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

pub struct Shared<T> {
    current: RwLock<Arc<T>>,
    changed: Notify,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared {
            current: RwLock::new(Arc::new(value)),
            changed: Notify::new(),
        }
    }

    /// The current value. (A writer that panicked left a whole value
    /// behind: values are only ever replaced, never edited in place.)
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the value and wakes everyone waiting in [`Shared::changed`].
    pub fn set(&self, value: T) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        self.changed.notify_waiters();
    }

    /// Resolves at the next [`Shared::set`].
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Shared;

    #[tokio::test]
    async fn a_snapshot_outlives_a_replacement_and_waiters_wake() {
        let shared = std::sync::Arc::new(Shared::new(1));
        let before = shared.get();
        let waiter = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.changed().await;
                *shared.get()
            })
        };
        // Let the waiter register before the replacement.
        tokio::time::sleep(Duration::from_millis(20)).await;
        shared.set(2);
        assert_eq!(*before, 1, "a snapshot is never edited");
        assert_eq!(*shared.get(), 2);
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(seen, Ok(Ok(2))), "{seen:?}");
    }
}
