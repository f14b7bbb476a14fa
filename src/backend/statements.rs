//! The prepared statements that exist on one server connection, as far as
//! pgsplit knows: by name, with a hash of the Parse that made each, plus the
//! unnamed statement, plus the closes the client asked for while the
//! connection served someone else (or no one). Every change to that
//! knowledge goes through these methods; the relay decides the bytes.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct Statements {
    named: HashMap<Bytes, u64>,
    /// Hash of the unnamed statement last parsed here, if any.
    unnamed: Option<u64>,
    /// Statements the client closed while this connection was not in use:
    /// closed here ahead of the next unit it runs.
    pending_close: Vec<Bytes>,
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
    }

    /// No named statement and no pending close: nothing another client could
    /// trip over (the unnamed statement it cannot name by accident).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.pending_close.is_empty()
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
}
