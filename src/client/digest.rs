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
pub(crate) struct Digest {
    hasher: std::hash::DefaultHasher,
    /// Row columns left out, one mask per statement result in order (bit
    /// `i`: column `i`), see `Class::unverified_columns`.
    masks: Vec<u64>,
    /// The statement result the rows belong to now.
    result: usize,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest")
    }
}

impl Digest {
    /// `masks`: the columns to leave out of each statement's rows, in the
    /// order the statements answer (empty or all 0: every column counts).
    pub(crate) fn new(keys: &RandomState, masks: Vec<u64>) -> Digest {
        let masks = if masks.iter().all(|m| *m == 0) {
            Vec::new()
        } else {
            masks
        };
        Digest {
            hasher: keys.build_hasher(),
            masks,
            result: 0,
        }
    }

    /// Adds bytes of a counted message (whole, header included, or in
    /// consecutive pieces: the digest is the same). A row streamed in
    /// pieces is taken whole, skipped columns included: its digest cannot
    /// match a replay's, and the transaction fails safe (40001) if it moves.
    #[inline]
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        self.hasher.write(bytes);
    }

    /// Adds a whole message if it counts.
    #[inline]
    pub(crate) fn message(&mut self, t: u8, bytes: &[u8]) {
        if !counts(t) {
            return;
        }
        if !self.masks.is_empty() {
            let skip = self.masks.get(self.result).copied().unwrap_or(0);
            if matches!(
                t,
                tag::backend::COMMAND_COMPLETE
                    | tag::backend::EMPTY_QUERY_RESPONSE
                    | tag::backend::PORTAL_SUSPENDED
                    | tag::backend::ERROR_RESPONSE
            ) {
                // This statement's answer ends: the next rows are the next
                // statement's.
                self.result += 1;
            } else if t == tag::backend::DATA_ROW && skip != 0 && self.row(bytes, skip).is_some() {
                return;
            }
        }
        self.add(bytes);
    }

    /// Adds a DataRow's columns but the skipped ones; `None` (nothing
    /// added) if the row is malformed.
    fn row(&mut self, bytes: &[u8], skip: u64) -> Option<()> {
        let body = bytes.get(5..)?;
        let count = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        // Walk first: a malformed row is taken whole by the caller.
        let mut columns = Vec::with_capacity(count.min(64));
        let mut at = 2usize;
        for i in 0..count {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            let end = at + 4 + usize::try_from(len).unwrap_or(0);
            body.get(at..end)?;
            if !(i < 64 && skip & (1 << i) != 0) {
                columns.push(at..end);
            }
            at = end;
        }
        if at != body.len() {
            return None;
        }
        // The tag and the column count, not the message length: a skipped
        // column's value (a time with its trailing zeros trimmed, a port)
        // may differ in length.
        self.hasher.write(bytes.get(..1)?);
        self.hasher.write(body.get(..2)?);
        for c in columns {
            self.hasher.write(body.get(c)?);
        }
        Some(())
    }

    pub(crate) fn finish(&self) -> u64 {
        self.hasher.finish()
    }

    /// The digest's value with the masks it was taken under: a replay must
    /// digest with the same.
    pub(crate) fn seal(self) -> Sealed {
        Sealed {
            value: self.finish(),
            masks: self.masks,
        }
    }
}

/// A finished digest (see [`Digest::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub value: u64,
    /// Empty when no column was left out.
    pub masks: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_digest_as_the_whole() {
        let keys = RandomState::new();
        let row = b"D\0\0\0\x0b\0\x01\0\0\0\x01x";
        let mut whole = Digest::new(&keys, Vec::new());
        whole.message(tag::backend::DATA_ROW, row);
        let mut pieces = Digest::new(&keys, Vec::new());
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

    /// A DataRow of text columns.
    fn row(columns: &[&str]) -> Vec<u8> {
        let mut body = (columns.len() as u16).to_be_bytes().to_vec();
        for c in columns {
            body.extend_from_slice(&(c.len() as i32).to_be_bytes());
            body.extend_from_slice(c.as_bytes());
        }
        let mut m = vec![b'D'];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn skipped_columns_do_not_count() {
        let keys = RandomState::new();
        let digest = |skip: u64, columns: &[&str]| {
            let mut d = Digest::new(&keys, vec![skip]);
            d.message(tag::backend::DATA_ROW, &row(columns));
            d.finish()
        };
        // Column 1 (a port, a time) differs; with it skipped the rows agree,
        // whatever its length.
        assert_eq!(digest(0b10, &["a", "5432"]), digest(0b10, &["a", "5433"]));
        assert_eq!(
            digest(0b10, &["a", "12:00:00.12345+00"]),
            digest(0b10, &["a", "12:00:00.123456+00"])
        );
        assert_ne!(digest(0, &["a", "5432"]), digest(0, &["a", "5433"]));
        // The other columns still count.
        assert_ne!(digest(0b10, &["a", "5432"]), digest(0b10, &["b", "5432"]));
        // A malformed row is taken whole.
        let mut d = Digest::new(&keys, vec![0b1]);
        d.message(tag::backend::DATA_ROW, b"D\0\0\0\x08\0\x05\0\0");
        let mut whole = Digest::new(&keys, Vec::new());
        whole.add(b"D\0\0\0\x08\0\x05\0\0");
        assert_eq!(d.finish(), whole.finish());
    }

    #[test]
    fn each_statement_has_its_own_columns() {
        let keys = RandomState::new();
        // SELECT now(), v; SELECT v, now(): column 0 of the first result and
        // column 1 of the second are left out.
        let run = |a: &[&str], b: &[&str]| {
            let mut d = Digest::new(&keys, vec![0b01, 0b10]);
            d.message(tag::backend::DATA_ROW, &row(a));
            d.message(tag::backend::COMMAND_COMPLETE, b"C\0\0\0\x0dSELECT 1\0");
            d.message(tag::backend::DATA_ROW, &row(b));
            d.finish()
        };
        assert_eq!(
            run(&["12:00", "x"], &["y", "12:00"]),
            run(&["13:00", "x"], &["y", "13:00"])
        );
        assert_ne!(
            run(&["12:00", "x"], &["y", "12:00"]),
            run(&["12:00", "z"], &["y", "12:00"])
        );
        assert_ne!(
            run(&["12:00", "x"], &["y", "12:00"]),
            run(&["12:00", "x"], &["z", "12:00"])
        );
    }

    #[test]
    fn sessions_digest_differently() {
        let (a, b) = (RandomState::new(), RandomState::new());
        let mut x = Digest::new(&a, Vec::new());
        let mut y = Digest::new(&b, Vec::new());
        x.add(b"C\0\0\0\x0dSELECT 1\0");
        y.add(b"C\0\0\0\x0dSELECT 1\0");
        assert_ne!(x.finish(), y.finish());
    }
}
