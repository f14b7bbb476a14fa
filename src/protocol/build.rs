//! Messages pgsplit composes itself (authentication, errors, its own queries),
//! and client messages re-written under another statement name ([`renamed`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::TxStatus;

/// Writes a tagged message whose body is produced by `body`; fills in the length.
fn tagged(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(tag);
    buf.put_i32(0);
    body(&mut buf);
    let len = i32::try_from(buf.len() - 1).unwrap_or(i32::MAX);
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

fn cstr(buf: &mut BytesMut, s: &[u8]) {
    // A NUL inside would end the string early on the other side: cut there.
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    buf.put_slice(&s[..end]);
    buf.put_u8(0);
}

pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    buf.put_i32(196_608);
    for (k, v) in params {
        cstr(&mut buf, k.as_bytes());
        cstr(&mut buf, v.as_bytes());
    }
    buf.put_u8(0);
    let len = i32::try_from(buf.len()).unwrap_or(i32::MAX);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

pub fn ssl_request() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
}

/// The protocol version code of a StartupMessage: major in the high 16 bits.
pub const fn protocol_version(major: u16, minor: u16) -> i32 {
    ((major as i32) << 16) | minor as i32
}

/// CancelRequest with a key of any length (4 bytes in protocol 3.0, up to
/// 256 in 3.2).
pub fn cancel_request(pid: i32, secret: &[u8]) -> Bytes {
    let len = 12 + secret.len();
    let mut buf = BytesMut::with_capacity(len);
    buf.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
    buf.put_i32(80_877_102);
    buf.put_i32(pid);
    buf.put_slice(secret);
    buf.freeze()
}

/// Severity of a message pgsplit sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Severity::Error => b"ERROR",
            Severity::Fatal => b"FATAL",
        }
    }
}

pub fn error_response(severity: Severity, code: &str, message: &str) -> Bytes {
    tagged(b'E', |b| {
        b.put_u8(b'S');
        cstr(b, severity.as_bytes());
        b.put_u8(b'V');
        cstr(b, severity.as_bytes());
        b.put_u8(b'C');
        cstr(b, code.as_bytes());
        b.put_u8(b'M');
        cstr(b, message.as_bytes());
        b.put_u8(0);
    })
}

pub fn notice_response(code: &str, message: &str) -> Bytes {
    tagged(b'N', |b| {
        b.put_u8(b'S');
        cstr(b, b"NOTICE");
        b.put_u8(b'V');
        cstr(b, b"NOTICE");
        b.put_u8(b'C');
        cstr(b, code.as_bytes());
        b.put_u8(b'M');
        cstr(b, message.as_bytes());
        b.put_u8(0);
    })
}

pub fn auth_ok() -> Bytes {
    tagged(b'R', |b| b.put_i32(0))
}

pub fn auth_cleartext() -> Bytes {
    tagged(b'R', |b| b.put_i32(3))
}

pub fn auth_md5(salt: [u8; 4]) -> Bytes {
    tagged(b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    })
}

pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    tagged(b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    })
}

pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    tagged(b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    })
}

pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    tagged(b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    })
}

pub fn parameter_status(name: &[u8], value: &[u8]) -> Bytes {
    tagged(b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    })
}

/// BackendKeyData: the process id and a secret key of 4 bytes (protocol
/// 3.0) or longer (3.2).
pub fn backend_key_data(pid: i32, secret: &[u8]) -> Bytes {
    tagged(b'K', |b| {
        b.put_i32(pid);
        b.put_slice(secret);
    })
}

pub fn parse_complete() -> Bytes {
    tagged(b'1', |_| {})
}

pub fn bind_complete() -> Bytes {
    tagged(b'2', |_| {})
}

pub fn no_data() -> Bytes {
    tagged(b'n', |_| {})
}

/// ParameterDescription of a statement without parameters.
pub fn no_parameters() -> Bytes {
    tagged(b't', |b| b.put_i16(0))
}

pub fn close_complete() -> Bytes {
    tagged(b'3', |_| {})
}

pub fn command_complete(tag: &str) -> Bytes {
    tagged(b'C', |b| cstr(b, tag.as_bytes()))
}

pub fn empty_query_response() -> Bytes {
    tagged(b'I', |_| {})
}

pub fn ready_for_query(status: TxStatus) -> Bytes {
    tagged(b'Z', |b| b.put_u8(status.byte()))
}

/// NegotiateProtocolVersion: the newest version we speak that is not newer
/// than the client's (the full version code, as PostgreSQL sends it: `3.0` is
/// 196608), and the `_pq_.` options we do not recognise.
pub fn negotiate_protocol_version(version: i32, unrecognized: &[&str]) -> Bytes {
    tagged(b'v', |b| {
        b.put_i32(version);
        b.put_i32(i32::try_from(unrecognized.len()).unwrap_or(0));
        for o in unrecognized {
            cstr(b, o.as_bytes());
        }
    })
}

pub fn query(sql: &[u8]) -> Bytes {
    tagged(b'Q', |b| cstr(b, sql))
}

/// [`query`] for a text fixed at compile time, built then: `N` is
/// `sql.len() + 6` (tag, length, text, terminator); anything else fails the
/// build.
pub const fn query_const<const N: usize>(sql: &[u8]) -> [u8; N] {
    assert!(N == sql.len() + 6 && N <= i32::MAX as usize);
    let mut out = [0u8; N];
    out[0] = b'Q';
    #[allow(clippy::cast_possible_truncation)] // bounded by the assert
    let len = ((N - 1) as u32).to_be_bytes();
    let mut i = 0;
    while i < 4 {
        out[1 + i] = len[i];
        i += 1;
    }
    let mut i = 0;
    while i < sql.len() {
        out[5 + i] = sql[i];
        i += 1;
    }
    out
}

pub fn password_message(data: &[u8]) -> Bytes {
    tagged(b'p', |b| b.put_slice(data))
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    tagged(b'p', |b| {
        cstr(b, mechanism.as_bytes());
        b.put_i32(i32::try_from(data.len()).unwrap_or(i32::MAX));
        b.put_slice(data);
    })
}

/// Close ('C') of a prepared statement, injected before re-preparing a name.
pub fn close_statement(name: &[u8]) -> Bytes {
    tagged(b'C', |b| {
        b.put_u8(b'S');
        cstr(b, name);
    })
}

/// Appends to `out` a message `tag` whose body is `head`, `name` as a C
/// string, then `tail`: a client's Parse, Bind, Describe or Close with the
/// statement name replaced. The parts come from a message that was framed
/// within limits, and the new name is short, so the length fits.
pub fn renamed(out: &mut BytesMut, tag: u8, head: &[u8], name: &[u8], tail: &[u8]) {
    let len = 4 + head.len() + name.len() + 1 + tail.len();
    out.reserve(1 + len);
    out.put_u8(tag);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    out.put_slice(head);
    cstr(out, name);
    out.put_slice(tail);
}

pub fn terminate() -> Bytes {
    tagged(b'X', |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, fields};

    #[test]
    fn query_built_at_compile_time_equals_the_runtime_one() {
        const SQL: &[u8] = b"SELECT 1";
        const Q: [u8; SQL.len() + 6] = query_const(SQL);
        assert_eq!(&Q[..], &query(SQL)[..]);
    }

    #[test]
    fn composed_messages_decode() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&error_response(Severity::Fatal, "28P01", "nope"));
        buf.extend_from_slice(&ready_for_query(TxStatus::Idle));
        buf.extend_from_slice(&parameter_status(b"TimeZone", b"UTC"));
        let e = decode_frame(&mut buf, 1024).unwrap().unwrap();
        let f = fields::error_fields(e.body()).unwrap();
        assert_eq!(
            (f.severity, f.code, f.message),
            (&b"FATAL"[..], &b"28P01"[..], &b"nope"[..])
        );
        let z = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(fields::ready_for_query(z.body()).unwrap(), TxStatus::Idle);
        let s = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(
            fields::parameter_status(s.body()).unwrap(),
            (&b"TimeZone"[..], &b"UTC"[..])
        );
    }

    /// NegotiateProtocolVersion byte for byte as PostgreSQL sends it: libpq
    /// compares the version field with 3.0 = 196608 and refuses 0 ("server
    /// requested downgrade to pre-3.0 protocol version").
    #[test]
    fn negotiate_protocol_version_carries_the_full_version_code() {
        assert_eq!(protocol_version(3, 0), 196_608);
        assert_eq!(protocol_version(3, 2), 196_610);
        let m = negotiate_protocol_version(protocol_version(3, 2), &["_pq_.foo", "_pq_.b"]);
        let mut want = vec![b'v', 0, 0, 0, 28, 0, 3, 0, 2, 0, 0, 0, 2];
        want.extend_from_slice(b"_pq_.foo\0_pq_.b\0");
        assert_eq!(&m[..], &want[..]);
        let none = negotiate_protocol_version(protocol_version(3, 0), &[]);
        assert_eq!(&none[..], &[b'v', 0, 0, 0, 12, 0, 3, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn cancel_keys_of_both_protocol_versions() {
        let k = backend_key_data(7, &[1, 2, 3, 4]);
        assert_eq!(&k[..], &[b'K', 0, 0, 0, 12, 0, 0, 0, 7, 1, 2, 3, 4]);
        let long = backend_key_data(7, &[5; 32]);
        assert_eq!(long.len(), 1 + 4 + 4 + 32);
        let c = cancel_request(7, &[5; 32]);
        assert_eq!(&c[..4], &44i32.to_be_bytes());
        assert_eq!(&c[4..8], &80_877_102i32.to_be_bytes());
        assert_eq!(&c[12..], &[5; 32]);
    }
}
