//! Incremental framing of tagged messages: one type byte, then an Int32 length that
//! counts itself and the body. Every length is checked before anything is buffered
//! for it, so a peer cannot make pgsplit allocate more than the configured maximum.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// Type byte plus the 4-byte length field.
pub const HEADER_LEN: usize = 5;

/// One whole message: the type byte and the original bytes (header included), so
/// it can be forwarded exactly as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body (after the type byte and length).
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }
}

/// The header of the next message in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Total size including the type byte and the length field.
    pub total: usize,
}

/// Reads the header of the next message without consuming anything. `Ok(None)`
/// means fewer than 5 bytes are available. `max` bounds the total message size.
pub fn peek_frame(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    // The length counts itself, so anything below 4 is impossible.
    if len < 4 {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    let total = usize::try_from(len)
        .map_err(|_| ProtocolError::BadLength(i64::from(len)))?
        .saturating_add(1);
    if total > max {
        return Err(ProtocolError::TooLong { len: total, max });
    }
    Ok(Some(FrameHeader { tag, total }))
}

/// Splits the next whole message off the front of `buf`. `Ok(None)` means more
/// bytes are needed; the buffer is then reserved for the rest of the message so
/// the caller's next read fills it without repeated small growths.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = peek_frame(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < header.total {
        buf.reserve(header.total - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(header.total).freeze();
    Ok(Some(Frame {
        tag: header.tag,
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_whole_and_partial_messages() {
        let mut wire = msg(b'Q', b"SELECT 1\0");
        wire.extend(msg(b'S', b""));
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf, 1024).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = decode_frame(&mut buf, 1024).unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].tag, b'Q');
            assert_eq!(got[0].body(), b"SELECT 1\0");
            assert_eq!(got[1].tag, b'S');
            assert!(got[1].body().is_empty());
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(
            decode_frame(&mut buf, 100),
            Err(ProtocolError::BadLength(3))
        );
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame(&mut buf, 100),
            Err(ProtocolError::BadLength(-1))
        );
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1 << 20),
            Err(ProtocolError::TooLong { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(seed as u8);
            }
            let mut buf = BytesMut::from(&v[..]);
            while let Ok(Some(_)) = decode_frame(&mut buf, 1 << 16) {}
        }
    }
}
