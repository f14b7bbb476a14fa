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
        let (hi, lo) = s.split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
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
}
