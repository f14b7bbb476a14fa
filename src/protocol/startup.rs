//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. Bounded like PostgreSQL's own
//! `MAX_STARTUP_PACKET_LENGTH` (10,000 bytes).

use super::ProtocolError;
use super::fields::Reader;

pub const MAX_STARTUP_LEN: usize = 10_000;
/// The longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY_LEN: usize = 256;
/// The newest protocol 3.x minor version pgsplit speaks to clients. 3.2
/// (PostgreSQL 18) differs from 3.0 only in the longer cancel key.
pub const LATEST_MINOR: u16 = 2;

/// The cancel key length pgsplit mints for a client of protocol `3.minor`:
/// 32 bytes from 3.2 on, as PostgreSQL 18 does, else the 4 bytes of 3.0.
pub fn cancel_key_len(minor: u16) -> usize {
    if minor >= 2 { 32 } else { 4 }
}
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Protocol 3.x with its parameters in the order sent.
    Message {
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        /// 4 bytes (protocol 3.0) to [`MAX_CANCEL_KEY_LEN`] (3.2).
        secret: Vec<u8>,
    },
}

impl Startup {
    /// The value of a startup parameter (last one wins, as in PostgreSQL).
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The length of the startup packet at the front of `buf` once it is complete
/// (`Ok(None)` while fewer than 4 bytes are there).
pub fn peek_startup_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(b) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let len_usize = usize::try_from(len).map_err(|_| ProtocolError::BadLength(len.into()))?;
    if len_usize < 8 {
        return Err(ProtocolError::BadLength(len.into()));
    }
    if len_usize > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLong {
            len: len_usize,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(Some(len_usize))
}

/// Parses a whole startup packet (length field included).
pub fn parse_startup(packet: &[u8]) -> Result<Startup, ProtocolError> {
    let mut r = Reader::new(packet, "startup packet");
    r.i32()?;
    let code = r.i32()?;
    match code {
        SSL_REQUEST => {
            r.finish()?;
            Ok(Startup::SslRequest)
        }
        GSSENC_REQUEST => {
            r.finish()?;
            Ok(Startup::GssEncRequest)
        }
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let secret = r.rest();
            if !(4..=MAX_CANCEL_KEY_LEN).contains(&secret.len()) {
                return Err(ProtocolError::Malformed("CancelRequest"));
            }
            Ok(Startup::Cancel {
                pid,
                secret: secret.to_vec(),
            })
        }
        _ => {
            let major = u16::try_from(code >> 16).unwrap_or(0);
            let minor = u16::try_from(code & 0xffff).unwrap_or(0);
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                let name = std::str::from_utf8(name)
                    .map_err(|_| ProtocolError::Malformed("startup packet"))?;
                let value = std::str::from_utf8(value)
                    .map_err(|_| ProtocolError::Malformed("startup packet"))?;
                params.push((name.to_owned(), value.to_owned()));
            }
            r.finish()?;
            Ok(Startup::Message { minor, params })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;

    #[test]
    fn parses_startup_and_requests() {
        let pkt = build::startup_message(&[("user", "alice"), ("database", "app")]);
        match parse_startup(&pkt).unwrap() {
            Startup::Message { minor, params } => {
                assert_eq!(minor, 0);
                assert_eq!(Startup::param(&params, "user"), Some("alice"));
                assert_eq!(Startup::param(&params, "database"), Some("app"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(peek_startup_len(&pkt).unwrap(), Some(pkt.len()));
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_startup(&ssl).unwrap(), Startup::SslRequest);
        let cancel = build::cancel_request(42, &7i32.to_be_bytes());
        assert_eq!(
            parse_startup(&cancel).unwrap(),
            Startup::Cancel {
                pid: 42,
                secret: vec![0, 0, 0, 7]
            }
        );
        // Protocol 3.2: a longer key.
        let long = build::cancel_request(42, &[9; 32]);
        assert_eq!(
            parse_startup(&long).unwrap(),
            Startup::Cancel {
                pid: 42,
                secret: vec![9; 32]
            }
        );
    }

    #[test]
    fn cancel_keys_outside_4_to_256_bytes_are_refused() {
        for len in [0, 3, 257] {
            let pkt = build::cancel_request(1, &vec![1; len]);
            assert!(parse_startup(&pkt).is_err(), "key of {len} bytes");
        }
        assert!(parse_startup(&build::cancel_request(1, &[1; 256])).is_ok());
        assert_eq!(cancel_key_len(0), 4);
        assert_eq!(cancel_key_len(1), 4);
        assert_eq!(cancel_key_len(2), 32);
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(peek_startup_len(&[0, 0, 0, 4]).is_err());
        assert!(peek_startup_len(&[0x7f, 0, 0, 0]).is_err());
        assert!(peek_startup_len(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(matches!(
            parse_startup(&[0, 0, 0, 8, 0, 2, 0, 0]),
            Err(ProtocolError::UnsupportedVersion { major: 2, .. })
        ));
        let pkt = build::startup_message(&[("user", "alice")]);
        for n in 0..pkt.len() {
            let _ = parse_startup(&pkt[..n]);
        }
    }
}
