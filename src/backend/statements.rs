//! The prepared statements that exist on one server connection, as far as
//! pgsplit knows: by name, with a hash of the Parse that made each, plus the
//! unnamed statement, plus the closes the client asked for while the
//! connection served someone else (or no one). Every change to that
//! knowledge goes through these methods; the relay decides the bytes.
//!
//! Under transaction pooling a client's named statements are not prepared
//! under the client's names but under names pgsplit derives from the text
//! (see [`shared_name`]): any client that needs the same text, under the same
//! session settings, finds it ready, whatever it calls it. Those are the
//! *shared* statements, a cache of bounded size per connection, least
//! recently used closed first. They belong to no client, so they never make
//! the connection unclean.

use std::collections::HashMap;

use bytes::Bytes;

/// The prefix of shared statement names.
pub(crate) const SHARED_PREFIX: &[u8] = b"pgsplit_";

/// The length of a shared statement name: the prefix and 16 hex digits.
pub(crate) const SHARED_NAME_LEN: usize = SHARED_PREFIX.len() + 16;

/// The server-side name of the shared statement with key `key`.
pub(crate) fn shared_name(key: u64) -> [u8; SHARED_NAME_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = [0u8; SHARED_NAME_LEN];
    let (prefix, digits) = name.split_at_mut(SHARED_PREFIX.len());
    prefix.copy_from_slice(SHARED_PREFIX);
    for (i, d) in digits.iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *d = HEX[((key >> shift) & 0xf) as usize];
    }
    name
}

#[derive(Debug, Default)]
pub struct Statements {
    named: HashMap<Bytes, u64>,
    /// Hash of the unnamed statement last parsed here, if any.
    unnamed: Option<u64>,
    /// Statements the client closed while this connection was not in use:
    /// closed here ahead of the next unit it runs.
    pending_close: Vec<Bytes>,
    /// Shared statements by key, with the unit that last used each.
    shared: HashMap<u64, u64>,
    /// Units begun on this connection (see [`Statements::begin_unit`]).
    unit: u64,
}

impl Statements {
    /// Whether the statement `name` (empty: the unnamed one) exists here with
    /// the text that hashes to `hash`.
    #[inline]
    pub fn has(&self, name: &[u8], hash: u64) -> bool {
        if name.is_empty() {
            self.unnamed == Some(hash)
        } else {
            self.named.get(name) == Some(&hash)
        }
    }

    /// Whether a named statement `name` exists here, whatever its text.
    pub fn has_name(&self, name: &[u8]) -> bool {
        self.named.contains_key(name)
    }

    /// A Parse of `name` (`None`: unnamed) with text hash `hash` is on its
    /// way. Counted as done until [`Statements::parse_failed`] says
    /// otherwise. A named one must not exist yet (close it first).
    pub fn parsing(&mut self, name: Option<Bytes>, hash: u64) {
        match name {
            None => self.unnamed = Some(hash),
            Some(name) => {
                self.named.insert(name, hash);
            }
        }
    }

    /// The Parse announced by [`Statements::parsing`] did not complete (an
    /// error ended its unit first).
    pub fn parse_failed(&mut self, name: Option<&Bytes>, hash: u64) {
        match name {
            None if self.unnamed == Some(hash) => self.unnamed = None,
            Some(name) if self.named.get(name) == Some(&hash) => {
                self.named.remove(name);
            }
            _ => {}
        }
    }

    /// A Close of `name` (empty: unnamed) is on its way, or the statement is
    /// gone otherwise (a simple Query destroys the unnamed one). Whether it
    /// existed.
    #[inline]
    pub fn closing(&mut self, name: &[u8]) -> bool {
        if name.is_empty() {
            self.unnamed.take().is_some()
        } else {
            self.named.remove(name).is_some()
        }
    }

    /// The client closed `name` while this connection was not running its
    /// statements: close it here before the connection's next unit.
    pub fn close_later(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed = None;
        } else if let Some((key, _)) = self.named.remove_entry(name) {
            self.pending_close.push(key);
        }
    }

    /// The closes [`Statements::close_later`] deferred, to send now (the
    /// list keeps its capacity: nothing is allocated per unit).
    #[inline]
    pub fn take_pending_closes(&mut self) -> std::vec::Drain<'_, Bytes> {
        self.pending_close.drain(..)
    }

    /// Everything is gone (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
        self.pending_close.clear();
        self.shared.clear();
    }

    /// No named statement of a client and no pending close: nothing another
    /// client could trip over (the unnamed statement it cannot name by
    /// accident, the shared ones it cannot name at all).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.pending_close.is_empty()
    }

    /// A unit begins: shared statements used from now on are the most
    /// recently used, and not evicted before the unit ends.
    #[inline]
    pub fn begin_unit(&mut self) {
        self.unit = self.unit.wrapping_add(1);
    }

    /// Whether the shared statement `key` exists here; marks it used.
    #[inline]
    pub fn use_shared(&mut self, key: u64) -> bool {
        match self.shared.get_mut(&key) {
            Some(last) => {
                *last = self.unit;
                true
            }
            None => false,
        }
    }

    /// A Parse of shared statement `key` is on its way (see
    /// [`Statements::parsing`]).
    pub fn parsing_shared(&mut self, key: u64) {
        self.shared.insert(key, self.unit);
    }

    /// The Parse of shared statement `key` did not complete, or a Close of it
    /// did: it is not here.
    pub fn shared_gone(&mut self, key: u64) {
        self.shared.remove(&key);
    }

    /// A Close of shared statement `key` did not run (an error ended its
    /// unit first): it is still here.
    pub fn shared_kept(&mut self, key: u64) {
        self.shared.entry(key).or_insert(0);
    }

    /// With `capacity` shared statements here already, the least recently
    /// used one that the current unit has not used: forgotten here, for the
    /// caller to close. `None` when there is room, or when the current unit
    /// uses them all (the cache then runs over until a later unit).
    pub fn evict_shared(&mut self, capacity: usize) -> Option<u64> {
        if self.shared.len() < capacity {
            return None;
        }
        let (&key, _) = self
            .shared
            .iter()
            .filter(|&(_, &last)| last != self.unit)
            .min_by_key(|&(_, &last)| last)?;
        self.shared.remove(&key);
        Some(key)
    }

    /// Shared statements here.
    pub fn shared_len(&self) -> usize {
        self.shared.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn parse_close_and_failed_parses() {
        let mut st = Statements::default();
        st.parsing(Some(name("s1")), 1);
        st.parsing(None, 7);
        assert!(st.has(b"s1", 1) && !st.has(b"s1", 2) && st.has(b"", 7));
        assert!(st.has_name(b"s1") && !st.is_empty());
        // A failed Parse of another text under a taken name leaves the
        // current one alone.
        st.parse_failed(Some(&name("s1")), 2);
        assert!(st.has(b"s1", 1));
        st.parse_failed(Some(&name("s1")), 1);
        assert!(!st.has_name(b"s1"));
        st.parse_failed(None, 7);
        assert!(!st.has(b"", 7));
        st.parsing(None, 8);
        assert!(st.closing(b""));
        assert!(!st.closing(b""), "closed twice");
        assert!(!st.closing(b"nope"));
    }

    #[test]
    fn deferred_closes_are_taken_once() {
        let mut st = Statements::default();
        st.parsing(Some(name("a")), 1);
        st.parsing(Some(name("b")), 2);
        st.close_later(b"a");
        st.close_later(b"unknown");
        assert!(!st.has_name(b"a") && !st.is_empty());
        assert_eq!(
            st.take_pending_closes().collect::<Vec<_>>(),
            vec![name("a")]
        );
        assert_eq!(st.take_pending_closes().count(), 0);
        st.clear();
        assert!(st.is_empty() && !st.has_name(b"b"));
    }

    #[test]
    fn shared_names_are_the_prefix_and_the_key_in_hex() {
        assert_eq!(
            &shared_name(0x0123_4567_89ab_cdef),
            b"pgsplit_0123456789abcdef"
        );
        assert_eq!(&shared_name(u64::MAX), b"pgsplit_ffffffffffffffff");
    }

    #[test]
    fn the_shared_cache_evicts_the_least_recently_used_outside_the_unit() {
        let mut st = Statements::default();
        st.begin_unit();
        st.parsing_shared(1);
        st.begin_unit();
        st.parsing_shared(2);
        st.begin_unit();
        st.parsing_shared(3);
        // Shared statements belong to no client.
        assert!(st.is_empty());
        assert_eq!(st.evict_shared(4), None, "room left");
        st.begin_unit();
        assert!(st.use_shared(1));
        assert!(!st.use_shared(9));
        // 1 was just used: 2 is the least recently used.
        assert_eq!(st.evict_shared(3), Some(2));
        assert_eq!(st.shared_len(), 2);
        st.parsing_shared(4);
        // 3 is the only one the current unit has not used.
        assert_eq!(st.evict_shared(3), Some(3));
        assert_eq!(st.evict_shared(2), None, "all used by the current unit");
        // A Close that never ran leaves the statement in place.
        st.shared_kept(3);
        assert!(st.use_shared(3));
        st.shared_gone(3);
        assert!(!st.use_shared(3));
        st.clear();
        assert_eq!(st.shared_len(), 0);
    }
}
