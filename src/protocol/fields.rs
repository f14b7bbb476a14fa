//! Reads the few fields routing needs out of message bodies. Each reader checks
//! every length against what is there and returns `Malformed` instead of panicking.

use super::{ProtocolError, TxStatus};

/// A bounds-checked cursor over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn malformed(&self) -> ProtocolError {
        ProtocolError::Malformed(self.what)
    }

    /// A NUL-terminated string, returned without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed())?;
        let (s, rest) = self.buf.split_at(end);
        self.buf = rest.get(1..).unwrap_or(&[]);
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.malformed())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(s)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Fails unless the whole body was consumed.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

/// Query ('Q'): the SQL text.
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, "Query");
    let text = r.cstr()?;
    r.finish()?;
    Ok(text)
}

/// Parse ('P'): statement name and SQL text. Parameter type OIDs are checked for
/// shape but not returned: routing does not need them.
pub fn parse(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| ProtocolError::Malformed("Parse"))?;
    r.take(n.saturating_mul(4))?;
    r.finish()?;
    Ok((name, query))
}

/// Bind ('B'): portal name and statement name. The rest is forwarded untouched.
pub fn bind(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Ok((portal, statement))
}

/// Describe ('D') and Close ('C'): `S` (statement) or `P` (portal), and the name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed(what));
    }
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// Execute ('E'): portal name.
pub fn execute(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    r.i32()?;
    r.finish()?;
    Ok(portal)
}

/// ReadyForQuery ('Z'): the transaction status.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, ProtocolError> {
    match body {
        [b] => TxStatus::from_byte(*b).ok_or(ProtocolError::Malformed("ReadyForQuery")),
        _ => Err(ProtocolError::Malformed("ReadyForQuery")),
    }
}

/// ParameterStatus ('S'): name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.cstr()?;
    let value = r.cstr()?;
    r.finish()?;
    Ok((name, value))
}

/// BackendKeyData ('K'): process id and secret key. Protocol 3.0 keys are 4 bytes.
pub fn backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()?;
    let key = r.i32()?;
    r.finish()?;
    Ok((pid, key))
}

/// CommandComplete ('C'): the command tag.
pub fn command_tag(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, "CommandComplete");
    let tag = r.cstr()?;
    r.finish()?;
    Ok(tag)
}

/// The fields of an ErrorResponse or NoticeResponse that pgsplit looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a [u8],
    pub code: &'a [u8],
    pub message: &'a [u8],
}

impl ErrorFields<'_> {
    pub fn code_str(&self) -> &str {
        std::str::from_utf8(self.code).unwrap_or(crate::sqlstate::INTERNAL_ERROR)
    }

    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(self.message).into_owned()
    }
}

/// ErrorResponse / NoticeResponse ('E' / 'N'): a list of (type byte, cstring)
/// fields ended by a zero byte.
pub fn error_fields(body: &[u8]) -> Result<ErrorFields<'_>, ProtocolError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut out = ErrorFields::default();
    loop {
        let kind = r.u8()?;
        if kind == 0 {
            break;
        }
        let value = r.cstr()?;
        match kind {
            // 'V' is the non-localized severity; prefer it over 'S' when present.
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    r.finish()?;
    Ok(out)
}

/// Authentication request ('R'): the Int32 code and the rest of the body.
pub fn authentication(body: &[u8]) -> Result<(i32, &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "Authentication");
    let code = r.i32()?;
    Ok((code, r.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields() {
        assert_eq!(query_text(b"SELECT 1\0").unwrap(), b"SELECT 1");
        assert!(query_text(b"SELECT 1").is_err());
        assert!(query_text(b"SELECT 1\0x").is_err());
        let parse_body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        assert_eq!(parse(parse_body).unwrap(), (&b"s1"[..], &b"SELECT $1"[..]));
        assert!(parse(b"s1\0SELECT $1\0\0\x02\0\0\0\x17").is_err());
        assert!(parse(b"s1\0SELECT\0\xff\xff").is_err());
        assert_eq!(bind(b"p\0s\0rest").unwrap(), (&b"p"[..], &b"s"[..]));
        assert_eq!(
            target(b"Sname\0", "Describe").unwrap(),
            (b'S', &b"name"[..])
        );
        assert!(target(b"Xname\0", "Describe").is_err());
        assert_eq!(execute(b"\0\0\0\0\0").unwrap(), b"");
        assert_eq!(ready_for_query(b"T").unwrap(), TxStatus::InTransaction);
        assert!(ready_for_query(b"Q").is_err());
        assert!(ready_for_query(b"").is_err());
        assert_eq!(backend_key_data(&[0, 0, 0, 7, 0, 0, 0, 9]).unwrap(), (7, 9));
        let e = error_fields(b"SERROR\0VERROR\0C28P01\0Mbad\0\0").unwrap();
        assert_eq!(e.code, b"28P01");
        assert_eq!(e.message, b"bad");
        assert!(error_fields(b"SERROR\0C28P01").is_err());
    }

    #[test]
    fn truncations_never_panic() {
        let bodies: [&[u8]; 3] = [
            b"s1\0SELECT $1\0\0\x01\0\0\0\x17",
            b"SERROR\0VERROR\0C28P01\0Mbad\0\0",
            b"p\0s\0\0\0\0\0",
        ];
        for body in bodies {
            for n in 0..body.len() {
                let b = &body[..n];
                let _ = parse(b);
                let _ = error_fields(b);
                let _ = bind(b);
                let _ = execute(b);
                let _ = parameter_status(b);
                let _ = backend_key_data(b);
                let _ = target(b, "Close");
                let _ = authentication(b);
            }
        }
    }
}
