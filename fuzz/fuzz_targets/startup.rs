//! The untagged first packet: `peek_startup_len` and `parse_startup`.
//!
//! The input is the start of a connection. Checked, beyond "never panics":
//! - `peek_startup_len` waits only while fewer than 4 bytes are there, and any
//!   length it accepts lies in 8..=MAX_STARTUP_LEN and equals the length field;
//! - `parse_startup` is run on the packet as the server would cut it (when the
//!   input holds that many bytes) and on the raw input; whatever it accepts has
//!   the shape it claims: SSL/GSSENC requests are exactly 8 bytes, a cancel
//!   request 16, a StartupMessage has major version 3, non-empty parameter names
//!   and no NUL inside names or values;
//! - a protocol 3.0 StartupMessage it accepts is rebuilt byte for byte by
//!   `protocol::build::startup_message` from the parameters it returned.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::protocol::ProtocolError;
use pgsplit::protocol::build;
use pgsplit::protocol::startup::{MAX_STARTUP_LEN, Startup, parse_startup, peek_startup_len};

fuzz_target!(|data: &[u8]| {
    match peek_startup_len(data) {
        Ok(None) => assert!(data.len() < 4),
        Ok(Some(len)) => {
            assert!((8..=MAX_STARTUP_LEN).contains(&len), "accepted length {len}");
            assert_eq!(u32::try_from(len).map(u32::to_be_bytes), Ok([data[0], data[1], data[2], data[3]]));
            if let Some(packet) = data.get(..len) {
                check(packet);
            }
        }
        Err(e) => {
            assert!(
                matches!(e, ProtocolError::BadLength(_) | ProtocolError::TooLong { .. }),
                "unexpected error {e:?}"
            );
            let _ = e.to_string();
        }
    }
    check(data);
});

fn check(packet: &[u8]) {
    let parsed = parse_startup(packet);
    match parsed {
        Ok(Startup::SslRequest) | Ok(Startup::GssEncRequest) => assert_eq!(packet.len(), 8),
        Ok(Startup::Cancel { pid, ref secret }) => {
            assert!((16..=12 + 256).contains(&packet.len()));
            assert_eq!(pid.to_be_bytes(), packet[8..12]);
            assert_eq!(secret[..], packet[12..]);
        }
        Ok(Startup::Message { minor, ref params }) => {
            assert_eq!(packet[4..6], [0, 3], "accepted a major version other than 3");
            assert_eq!(minor.to_be_bytes(), packet[6..8]);
            for (name, value) in params {
                assert!(!name.is_empty());
                assert!(!name.contains('\0') && !value.contains('\0'));
            }
            if let Some((name, _)) = params.last() {
                assert!(Startup::param(params, name).is_some());
            }
            if minor == 0 {
                let pairs: Vec<(&str, &str)> =
                    params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let rebuilt = build::startup_message(&pairs);
                // The length field is not checked by parse_startup (the caller cut the
                // packet by it), so compare everything after it.
                assert_eq!(&rebuilt[4..], &packet[4..], "rebuilt StartupMessage differs");
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.sqlstate();
        }
    }
}
