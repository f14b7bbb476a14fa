//! The digest of what a client received for a unit: row descriptions, rows,
//! command tags, errors, copy data. An optimistic transaction keeps one per
//! unit it ran on a replica; replayed on the primary, the same units must
//! give the same digests (see `route::optimistic`).
//!
//! Bookkeeping replies (ParseComplete, BindComplete, CloseComplete), notices,
//! parameter changes and ReadyForQuery are left out: they say nothing about
//! data, and pgsplit adds or drops some of them on its own (statements it
//! prepares lazily, settings it replays).

use std::hash::{BuildHasher, Hasher, RandomState};

use crate::protocol::tag;

/// Whether a server message with this tag is part of the digest.
#[inline]
pub(crate) fn counts(t: u8) -> bool {
    matches!(
        t,
        tag::backend::ROW_DESCRIPTION
            | tag::backend::DATA_ROW
            | tag::backend::COMMAND_COMPLETE
            | tag::backend::ERROR_RESPONSE
            | tag::backend::EMPTY_QUERY_RESPONSE
            | tag::backend::NO_DATA
            | tag::backend::PARAMETER_DESCRIPTION
            | tag::backend::PORTAL_SUSPENDED
            | tag::backend::COPY_OUT_RESPONSE
            | tag::COPY_DATA
            | tag::COPY_DONE
    )
}

/// A running digest. Keyed per session (`RandomState`), so that no client
/// can choose data whose digests collide with another answer's.
pub(crate) struct Digest(std::hash::DefaultHasher);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest")
    }
}

impl Digest {
    pub(crate) fn new(keys: &RandomState) -> Digest {
        Digest(keys.build_hasher())
    }

    /// Adds bytes of a counted message (whole, header included, or in
    /// consecutive pieces: the digest is the same).
    #[inline]
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// Adds a whole message if it counts.
    #[inline]
    pub(crate) fn message(&mut self, t: u8, bytes: &[u8]) {
        if counts(t) {
            self.add(bytes);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_digest_as_the_whole() {
        let keys = RandomState::new();
        let row = b"D\0\0\0\x0b\0\x01\0\0\0\x01x";
        let mut whole = Digest::new(&keys);
        whole.message(tag::backend::DATA_ROW, row);
        let mut pieces = Digest::new(&keys);
        for piece in row.chunks(3) {
            pieces.add(piece);
        }
        assert_eq!(whole.finish(), pieces.finish());
        // A ReadyForQuery or a ParseComplete changes nothing.
        whole.message(tag::backend::READY_FOR_QUERY, b"Z\0\0\0\x05T");
        whole.message(tag::backend::PARSE_COMPLETE, b"1\0\0\0\x04");
        assert_eq!(whole.finish(), pieces.finish());
        // Another row does.
        whole.message(tag::backend::DATA_ROW, row);
        assert_ne!(whole.finish(), pieces.finish());
    }

    #[test]
    fn sessions_digest_differently() {
        let (a, b) = (RandomState::new(), RandomState::new());
        let mut x = Digest::new(&a);
        let mut y = Digest::new(&b);
        x.add(b"C\0\0\0\x0dSELECT 1\0");
        y.add(b"C\0\0\0\x0dSELECT 1\0");
        assert_ne!(x.finish(), y.finish());
    }
}
