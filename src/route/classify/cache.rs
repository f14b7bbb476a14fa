//! The cached classifier: decisions by statement shape, cleared when full or
//! when the function catalog changes.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::classify_unhinted;
use crate::route::catalog::FunctionCatalog;
use crate::route::class::Class;
use crate::route::lexer;

/// The cached classifier shared by every session (behind an `Arc`).
///
/// Decisions are cached by the masked text (see [`lexer`] for the invariant that
/// makes this sound) and stored without the per-call hint. The cache is cleared
/// when it reaches `capacity` (bounded and simple) and when the function catalog
/// changes.
#[derive(Debug)]
pub struct Classifier {
    catalog: RwLock<Arc<FunctionCatalog>>,
    /// foldhash: the keys are statement shapes, not attacker-chosen hash-flood
    /// material we must defend with SipHash (the map is bounded and cleared
    /// when full), and the cached path is hot: hashing is most of a lookup.
    cache: RwLock<HashMap<Box<str>, Class, foldhash::fast::RandomState>>,
    capacity: usize,
    /// Bumped whenever the catalog changes: a class computed under an older
    /// generation may be stale (see [`Classifier::generation`]).
    generation: std::sync::atomic::AtomicU64,
}

impl Classifier {
    /// A classifier over `catalog` caching at most `capacity` shapes (0: no cache).
    pub fn new(catalog: FunctionCatalog, capacity: usize) -> Self {
        Classifier {
            catalog: RwLock::new(Arc::new(catalog)),
            cache: RwLock::new(HashMap::with_hasher(foldhash::fast::RandomState::default())),
            capacity,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Classifies `sql`, from the cache when its shape was seen before.
    pub fn classify(&self, sql: &str) -> Class {
        let masked = lexer::mask(sql);
        let with_hint = |class: Class| Class {
            hint: masked.hint,
            ..class
        };
        if !masked.cacheable || self.capacity == 0 {
            return with_hint(classify_unhinted(sql, &self.catalog()));
        }
        if let Some(class) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(masked.key.as_str())
        {
            return with_hint(*class);
        }
        let catalog = self.catalog();
        let class = classify_unhinted(sql, &catalog);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        // Insert only if the catalog did not change meanwhile: `set_catalog` swaps the
        // catalog before clearing the cache, so a decision made with the old catalog
        // is either refused here or cleared there.
        if Arc::ptr_eq(&catalog, &self.catalog()) {
            if cache.len() >= self.capacity {
                cache.clear();
            }
            cache.insert(masked.key.clone().into_boxed_str(), class);
        }
        drop(cache);
        with_hint(class)
    }

    /// Replaces the function catalog; clears the cache and returns true when it
    /// differs from the current one.
    pub fn set_catalog(&self, catalog: FunctionCatalog) -> bool {
        {
            let mut current = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
            if **current == catalog {
                return false;
            }
            *current = Arc::new(catalog);
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        true
    }

    /// Changes whenever the catalog does: a caller that keeps a class beyond
    /// one statement (a session re-parsing the same text) may reuse it only
    /// while the generation it was computed under is current.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The catalog in use.
    pub fn catalog(&self) -> Arc<FunctionCatalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Number of cached shapes.
    pub fn cached(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
