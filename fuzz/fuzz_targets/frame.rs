//! Wire framing and the field readers.
//!
//! Input layout: byte 0 picks the frame size limit (`max`, 1..=256 bytes, small so
//! both whole frames and `TooLong` are reached), byte 1 picks how the rest arrives
//! (0: all at once, otherwise in chunks of 1..=31 bytes, as a socket would deliver
//! it), and the remaining bytes are the wire stream.
//!
//! Checked, beyond "never panics":
//! - `decode_frame` agrees with `peek_frame`, never consumes bytes when it returns
//!   `Ok(None)`, and hands out frames that are exactly the next bytes of the stream,
//!   with the tag in front, a length field that matches and a size within `max`;
//! - once every byte is fed, what is left is an incomplete frame (never a whole one);
//! - every field reader matching the frame's tag (both the frontend and the backend
//!   meaning where a tag byte has two) returns values consistent with the body, and
//!   where pgsplit can compose the same message (`protocol::build`) a successful read
//!   rebuilds the original bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsplit::protocol::frame::HEADER_LEN;
use pgsplit::protocol::{ProtocolError, TxStatus, build, decode_frame, fields, peek_frame, tag};

fuzz_target!(|data: &[u8]| {
    let [max_sel, chunk_sel, wire @ ..] = data else {
        return;
    };
    let max = usize::from(*max_sel) + 1;
    let chunk = match chunk_sel % 32 {
        0 => wire.len().max(1),
        n => usize::from(n),
    };

    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    while fed < wire.len() {
        let end = (fed + chunk).min(wire.len());
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        loop {
            assert_eq!(buf.len(), fed - consumed, "buffer out of step with the stream");
            let peeked = peek_frame(&buf, max);
            let before = buf.len();
            match decode_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    let header = peeked
                        .expect("peek_frame failed where decode_frame succeeded")
                        .expect("peek_frame saw no header where decode_frame made a frame");
                    let total = frame.bytes.len();
                    assert_eq!(total, header.total);
                    assert_eq!(frame.tag, header.tag);
                    assert!((HEADER_LEN..=max).contains(&total), "frame of {total} bytes, max {max}");
                    assert_eq!(&frame.bytes[..], &wire[consumed..consumed + total]);
                    assert_eq!(frame.tag, frame.bytes[0]);
                    let len = i32::from_be_bytes([
                        frame.bytes[1],
                        frame.bytes[2],
                        frame.bytes[3],
                        frame.bytes[4],
                    ]);
                    assert_eq!(usize::try_from(len).ok(), Some(total - 1));
                    assert_eq!(frame.body(), &frame.bytes[HEADER_LEN..]);
                    assert_eq!(buf.len(), before - total);
                    consumed += total;
                    read_fields(frame.tag, frame.body(), &frame.bytes);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    match peeked {
                        Ok(None) => assert!(before < HEADER_LEN),
                        Ok(Some(header)) => assert!(before < header.total),
                        Err(e) => panic!("peek_frame failed ({e}) where decode_frame waits"),
                    }
                    break;
                }
                Err(e) => {
                    assert_eq!(peeked, Err(e.clone()), "peek_frame and decode_frame disagree");
                    check_error(&e, max);
                    return;
                }
            }
        }
    }
    // Everything was fed: a whole frame must not be left behind.
    if let Ok(Some(header)) = peek_frame(&buf, max) {
        assert!(buf.len() < header.total, "a whole frame was left in the buffer");
    }
});

fn check_error(e: &ProtocolError, max: usize) {
    match e {
        ProtocolError::TooLong { len, max: m } => {
            assert_eq!(*m, max);
            assert!(*len > max);
        }
        ProtocolError::BadLength(len) => assert!(*len < 4),
        other => panic!("framing returned an unexpected error: {other:?}"),
    }
    assert_eq!(e.sqlstate(), "08P01");
    let _ = e.to_string();
}

fn no_nul(s: &[u8]) {
    assert!(!s.contains(&0), "a field reader returned a string with a NUL inside");
}

/// `body` starts with `parts`, each followed by a NUL.
fn starts_with_cstrs(body: &[u8], parts: &[&[u8]]) -> usize {
    let mut at = 0;
    for part in parts {
        no_nul(part);
        assert_eq!(&body[at..at + part.len()], *part);
        assert_eq!(body[at + part.len()], 0);
        at += part.len() + 1;
    }
    at
}

/// Calls the readers pgsplit uses for this tag, frontend and backend meanings both.
fn read_fields(t: u8, body: &[u8], bytes: &[u8]) {
    match t {
        tag::QUERY => {
            if let Ok(text) = fields::query_text(body) {
                assert_eq!(starts_with_cstrs(body, &[text]), body.len());
                assert_eq!(&build::query(text)[..], bytes);
            }
        }
        tag::PARSE => {
            if let Ok((name, query)) = fields::parse(body) {
                let at = starts_with_cstrs(body, &[name, query]);
                let n = i16::from_be_bytes([body[at], body[at + 1]]);
                assert_eq!(Ok(body.len()), usize::try_from(n).map(|n| at + 2 + 4 * n));
            }
        }
        tag::BIND => {
            if let Ok((portal, statement)) = fields::bind(body) {
                starts_with_cstrs(body, &[portal, statement]);
            }
        }
        tag::DESCRIBE => check_target(body, "Describe"),
        // Close (frontend) / CommandComplete (backend).
        tag::CLOSE => {
            check_target(body, "Close");
            if let Ok(command) = fields::command_tag(body) {
                assert_eq!(starts_with_cstrs(body, &[command]), body.len());
                if let Ok(s) = std::str::from_utf8(command) {
                    assert_eq!(&build::command_complete(s)[..], bytes);
                }
            }
        }
        // Execute (frontend) / ErrorResponse (backend).
        tag::EXECUTE => {
            if let Ok(portal) = fields::execute(body) {
                assert_eq!(starts_with_cstrs(body, &[portal]) + 4, body.len());
            }
            check_error_fields(body);
        }
        tag::backend::NOTICE_RESPONSE => check_error_fields(body),
        tag::backend::READY_FOR_QUERY => {
            if let Ok(status) = fields::ready_for_query(body) {
                assert_eq!(body, [status.byte()]);
                assert_eq!(TxStatus::from_byte(status.byte()), Some(status));
                assert_eq!(&build::ready_for_query(status)[..], bytes);
            }
        }
        // Sync (frontend, empty body) / ParameterStatus (backend).
        tag::backend::PARAMETER_STATUS => {
            if let Ok((name, value)) = fields::parameter_status(body) {
                assert_eq!(starts_with_cstrs(body, &[name, value]), body.len());
                assert_eq!(&build::parameter_status(name, value)[..], bytes);
            }
        }
        tag::backend::BACKEND_KEY_DATA => {
            if let Ok((pid, key)) = fields::backend_key_data(body) {
                assert_eq!(body.len(), 8);
                assert_eq!(&build::backend_key_data(pid, &key.to_be_bytes())[..], bytes);
            }
        }
        tag::backend::AUTHENTICATION => {
            if let Ok((code, rest)) = fields::authentication(body) {
                assert_eq!(code.to_be_bytes(), body[..4]);
                assert_eq!(rest, &body[4..]);
            }
        }
        _ => {}
    }
}

fn check_target(body: &[u8], what: &'static str) {
    match fields::target(body, what) {
        Ok((kind, name)) => {
            assert!(kind == b'S' || kind == b'P');
            assert_eq!(body[0], kind);
            assert_eq!(1 + starts_with_cstrs(&body[1..], &[name]), body.len());
            if kind == b'S' && what == "Close" {
                assert_eq!(&build::close_statement(name)[HEADER_LEN..], body);
            }
        }
        Err(e) => assert_eq!(e, ProtocolError::Malformed(what)),
    }
}

fn check_error_fields(body: &[u8]) {
    if let Ok(e) = fields::error_fields(body) {
        no_nul(e.severity);
        no_nul(e.code);
        no_nul(e.message);
        assert_eq!(body.last(), Some(&0));
        let _ = e.code_str();
        let _ = e.message_lossy();
    }
}
