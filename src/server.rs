//! Vocabulary shared by routing (pure) and the backend (I/O): server identity and
//! WAL positions.

use std::fmt;

/// Stable identity of a configured server (0 is the configured primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

/// A WAL position (pg_lsn) as a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `XXXXXXXX/XXXXXXXX` text form.
    pub fn parse(s: &str) -> Option<Lsn> {
        Lsn::parse_bytes(s.as_bytes())
    }

    /// [`Lsn::parse`] on the bytes of a DataRow value, as it arrives: no
    /// UTF-8 check, no allocation (the floor query's answer is read after
    /// every committed write).
    pub fn parse_bytes(s: &[u8]) -> Option<Lsn> {
        let slash = s.iter().position(|&b| b == b'/')?;
        let hi = hex_u32(&s[..slash])?;
        let lo = hex_u32(&s[slash + 1..])?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The WAL insert position points past the header of the page the next
    /// record will start on; no record ends inside a page header, so a
    /// position there means the page start, which is where a replica's replay
    /// position stops. Without this a floor taken on an idle primary right
    /// after a page or segment switch could never be met. Assumes the default
    /// 8 kB WAL block: short headers are 24 bytes; the 40-byte long header is
    /// recognised only at exactly +40 on a 16 MB boundary (the default segment
    /// size), so a position that may be a real record end is never moved back.
    pub fn record_boundary(self) -> Lsn {
        const WAL_BLOCK: u64 = 8192;
        const SHORT_HEADER: u64 = 24;
        const LONG_HEADER: u64 = 40;
        const SEGMENT: u64 = 16 << 20;
        let offset = self.0 % WAL_BLOCK;
        let page = self.0 - offset;
        if (offset != 0 && offset <= SHORT_HEADER)
            || (offset == LONG_HEADER && page.is_multiple_of(SEGMENT))
        {
            Lsn(page)
        } else {
            self
        }
    }

    /// Bytes from `earlier` to `self` (zero if `earlier` is ahead).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// One half of an LSN: 1 to 8 hex digits (leading zeros allowed), at most
/// `u32::MAX`.
fn hex_u32(digits: &[u8]) -> Option<u32> {
    let digits = match digits.iter().position(|&b| b != b'0') {
        Some(first) => &digits[first..],
        // All zeros; an empty half is no number.
        None => return (!digits.is_empty()).then_some(0),
    };
    if digits.len() > 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some((acc << 4) | d)
    })
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!(Lsn::parse("zz/1").is_none());
        assert!(Lsn::parse("1").is_none());
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
        assert_eq!(Lsn(0x3000028).record_boundary(), Lsn(0x3000000));
        assert_eq!(Lsn(0x3002018).record_boundary(), Lsn(0x3002000));
        assert_eq!(Lsn(0x3002100).record_boundary(), Lsn(0x3002100));
        assert_eq!(Lsn(0x3002000).record_boundary(), Lsn(0x3002000));
    }

    #[test]
    fn lsn_text_forms() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0/0", Some(0)),
            (b"0/3000060", Some(0x300_0060)),
            (b"FFFFFFFF/FFFFFFFF", Some(u64::MAX)),
            (b"ffffffff/0", Some(0xffff_ffff_0000_0000)),
            (b"0000000001/00", Some(1 << 32)),
            (b"100000000/0", None),
            (b"0/100000000", None),
            (b"/1", None),
            (b"1/", None),
            (b"1/2/3", None),
            (b"+1/2", None),
            (b"1 /2", None),
            (b"g/0", None),
            (b"", None),
            (&[0xff, b'/', b'1'], None),
        ];
        for (text, want) in cases {
            assert_eq!(
                Lsn::parse_bytes(text).map(|l| l.0),
                *want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
