//! The configured servers as one list, replaced whole on reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ServerId, ServerTarget};
use crate::config::{Config, ServerUrl};

/// The configured servers. Ids are stable across reloads for servers whose
/// URL did not change.
pub struct Servers {
    /// The server configured as primary (the health monitor may know better).
    pub primary: ServerId,
    pub list: Vec<Arc<ServerTarget>>,
}

impl Servers {
    pub fn build(config: &Config, previous: Option<&Servers>, next_id: &AtomicU64) -> Servers {
        let id_for = |url: &ServerUrl| -> ServerId {
            if let Some(prev) = previous.and_then(|p| p.list.iter().find(|s| &s.url == url)) {
                return prev.id;
            }
            ServerId(u32::try_from(next_id.fetch_add(1, Ordering::Relaxed)).unwrap_or(u32::MAX))
        };
        let primary = id_for(&config.primary);
        let mut list = vec![ServerTarget::new(
            primary,
            config.primary.clone(),
            config.net,
        )];
        for r in &config.replicas {
            let id = id_for(r);
            if list.iter().all(|s| s.id != id) {
                list.push(ServerTarget::new(id, r.clone(), config.net));
            }
        }
        Servers { primary, list }
    }

    pub fn get(&self, id: ServerId) -> Option<&Arc<ServerTarget>> {
        self.list.iter().find(|s| s.id == id)
    }
}
