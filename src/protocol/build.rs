//! Messages pgsplit composes itself (authentication, errors, its own queries).
//! Forwarded traffic never passes through here.

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

pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_i32(16);
    buf.put_i32(80_877_102);
    buf.put_i32(pid);
    buf.put_i32(secret);
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

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    tagged(b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    })
}

pub fn close_complete() -> Bytes {
    tagged(b'3', |_| {})
}

pub fn command_complete(tag: &str) -> Bytes {
    tagged(b'C', |b| cstr(b, tag.as_bytes()))
}

pub fn ready_for_query(status: TxStatus) -> Bytes {
    tagged(b'Z', |b| b.put_u8(status.byte()))
}

/// NegotiateProtocolVersion: we speak 3.0 and list the `_pq_.` options we ignored.
pub fn negotiate_protocol_version(minor: u16, unrecognized: &[&str]) -> Bytes {
    tagged(b'v', |b| {
        b.put_i32(i32::from(minor));
        b.put_i32(i32::try_from(unrecognized.len()).unwrap_or(0));
        for o in unrecognized {
            cstr(b, o.as_bytes());
        }
    })
}

pub fn query(sql: &[u8]) -> Bytes {
    tagged(b'Q', |b| cstr(b, sql))
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

pub fn terminate() -> Bytes {
    tagged(b'X', |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, fields};

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
}
