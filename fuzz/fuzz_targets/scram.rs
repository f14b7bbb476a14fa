//! Client authentication parsing: SASLInitialResponse, PasswordMessage and the
//! server side of a SCRAM-SHA-256 exchange, all fed by an unauthenticated peer.
//!
//! Input layout: byte 0 is a mode byte, bytes 1..3 (big-endian u16, reduced modulo
//! the remaining length + 1) say how long the first part is; the first part is a
//! SASLInitialResponse body or a client-first-message, the rest is the
//! client-final-message (or, in mode bit 0x01, extensions spliced into a correct
//! one). The secret is fixed: password "pencil", a fixed salt, 16 iterations.
//! Mode bits 0x06 pick the channel binding the server side runs with: none
//! offered, SCRAM-SHA-256-PLUS offered but declined, or PLUS chosen with a fixed
//! `tls-server-end-point` hash (then only `p=tls-server-end-point,,` headers may
//! start an exchange, and the correct client-final binds to that hash).
//!
//! Checked, beyond "never panics":
//! - `parse_password` accepts exactly one NUL-terminated string;
//! - `parse_sasl_initial_response` returns data whose length matches the length
//!   field, and `parse_scram_initial_response` only ever returns SCRAM-SHA-256 data;
//! - `ScramExchange::start` answers `r=<client nonce><server nonce>,s=<salt>,i=16`;
//! - `ScramExchange::finish` never accepts arbitrary bytes as a proof (an accepted
//!   client-final must carry the correct proof, recomputed here), accepts a correct
//!   client-final (with any well-formed extensions) and returns the right server
//!   signature, and answers a correct message with one proof bit flipped with
//!   `WrongPassword`.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use libfuzzer_sys::fuzz_target;
use pgsplit::client::auth::{
    AuthError, Binding, SCRAM_SHA_256, ScramExchange, ScramSecret, parse_password, parse_sasl_initial_response,
    parse_scram_initial_response,
};
use sha2::{Digest as _, Sha256};

const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"pgsplit-fuzz-salt";
const ITERATIONS: u32 = 16;
const NONCE: [u8; 18] = [0x5a; 18];
/// The certificate hash of the PLUS mode.
const END_POINT: [u8; 32] = [0x42; 32];

fn binding(mode: u8) -> Binding<'static> {
    match mode & 0x06 {
        0x02 | 0x06 => Binding::EndPoint(&END_POINT),
        0x04 => Binding::Declined,
        _ => Binding::NotOffered,
    }
}

struct Fixture {
    secret: ScramSecret,
    salted_password: [u8; 32],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        secret: ScramSecret::from_password(PASSWORD, SALT, ITERATIONS),
        // "pencil" is unchanged by SASLprep.
        salted_password: pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(PASSWORD.as_bytes(), SALT, ITERATIONS),
    })
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fuzz_target!(|data: &[u8]| {
    let [mode, hi, lo, rest @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_be_bytes([*hi, *lo])) % (rest.len() + 1);
    let (first, second) = rest.split_at(split);

    check_password(data);
    check_password(first);

    // The full path: a SASLInitialResponse body, then the exchange.
    if let Ok((mechanism, client_first)) = parse_sasl_initial_response(first) {
        check_initial(first, mechanism, client_first);
        exchange(*mode, client_first, second);
    }
    // And the exchange directly on the first part, so the fuzzer need not build a
    // valid SASLInitialResponse around every client-first-message.
    exchange(*mode, first, second);
});

fn check_password(body: &[u8]) {
    match parse_password(body) {
        Ok(password) => {
            assert_eq!(body.len(), password.len() + 1);
            assert_eq!(body.last(), Some(&0));
            assert!(!password.contains(&0));
        }
        Err(e) => {
            assert!(matches!(e, AuthError::Malformed(_)));
            assert!(body.last() != Some(&0) || body[..body.len() - 1].contains(&0));
        }
    }
}

fn check_initial(body: &[u8], mechanism: &str, client_first: &[u8]) {
    let nul = body.iter().position(|&b| b == 0).expect("accepted without a NUL");
    assert_eq!(mechanism.as_bytes(), &body[..nul]);
    let len = i32::from_be_bytes(body[nul + 1..nul + 5].try_into().expect("4 bytes"));
    assert_eq!(&body[nul + 5..], client_first);
    assert!(len == -1 && client_first.is_empty() || usize::try_from(len) == Ok(client_first.len()));
    match parse_scram_initial_response(body) {
        Ok(data) => {
            assert_eq!(mechanism, SCRAM_SHA_256);
            assert_eq!(data, client_first);
        }
        Err(AuthError::UnsupportedMechanism(echo)) => {
            assert_ne!(mechanism, SCRAM_SHA_256);
            assert!(echo.chars().count() <= 64);
            assert!(mechanism.starts_with(&echo));
        }
        Err(e) => panic!("parse_scram_initial_response failed ({e:?}) where parse_sasl_initial_response did not"),
    }
}

fn exchange(mode: u8, client_first: &[u8], second: &[u8]) {
    let fx = fixture();
    let bind = binding(mode);
    let start = || ScramExchange::start(&fx.secret, client_first, NONCE, bind);
    let Ok((exchange, server_first)) = start() else {
        return;
    };
    // What start accepted: "<gs2 header>n=...,r=<nonce>[,ext...]" in UTF-8.
    let text = std::str::from_utf8(client_first).expect("start accepted non-UTF-8");
    let header_len = text
        .match_indices(',')
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("start accepted a message without a GS2 header");
    let (gs2, bare) = text.split_at(header_len);
    let allowed: &[&str] = match bind {
        Binding::NotOffered => &["n,,", "y,,"],
        Binding::Declined => &["n,,"],
        Binding::EndPoint(_) => &["p=tls-server-end-point,,"],
    };
    assert!(allowed.contains(&gs2), "start accepted GS2 header {gs2:?} under {bind:?}");
    let mut cbind = gs2.as_bytes().to_vec();
    if let Binding::EndPoint(hash) = bind {
        cbind.extend_from_slice(hash);
    }
    let client_nonce = bare
        .split(',')
        .nth(1)
        .and_then(|a| a.strip_prefix("r="))
        .expect("start accepted a message without a nonce");
    let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
    let combined = format!("{client_nonce}{}", BASE64.encode(NONCE));
    assert_eq!(
        server_first,
        format!("r={combined},s={},i={ITERATIONS}", BASE64.encode(SALT))
    );

    // 1. Arbitrary bytes as the client-final-message: must not authenticate unless
    //    they carry the right proof for what they say.
    if let Ok(server_final) = exchange.finish(second) {
        let text = std::str::from_utf8(second).expect("finish accepted non-UTF-8");
        let (without_proof, proof) = text.rsplit_once(",p=").expect("accepted without a proof");
        let expected = proof_for(bare, &server_first, without_proof);
        assert_eq!(proof, expected.0, "finish accepted a wrong proof");
        assert_eq!(server_final, expected.1);
    }

    // 2. A correct client-final, with the fuzzer's bytes as extensions when mode bit
    //    0x01 is set: must authenticate (or, for ill-formed extensions, be refused as
    //    malformed, never as a wrong password).
    let Ok((exchange, _)) = start() else {
        panic!("start is not deterministic");
    };
    let mut without_proof = format!("c={},r={combined}", BASE64.encode(&cbind));
    let extensions = if mode & 1 == 1 {
        std::str::from_utf8(second).ok().filter(|s| !s.is_empty())
    } else {
        None
    };
    if let Some(ext) = extensions {
        without_proof.push(',');
        without_proof.push_str(ext);
    }
    let (proof, server_final) = proof_for(bare, &server_first, &without_proof);
    let message = format!("{without_proof},p={proof}");
    match exchange.finish(message.as_bytes()) {
        Ok(got) => assert_eq!(got, server_final),
        Err(AuthError::Malformed(why)) if extensions.is_some() || message.len() > 1024 => {
            let _ = why;
        }
        Err(e) => panic!("a correct client-final {message:?} was refused: {e:?}"),
    }

    // 3. The same without extensions and with one proof bit flipped.
    let Ok((exchange, _)) = start() else {
        panic!("start is not deterministic");
    };
    let without_proof = format!("c={},r={combined}", BASE64.encode(&cbind));
    let (proof, _) = proof_for(bare, &server_first, &without_proof);
    let mut raw = BASE64.decode(&proof).expect("own proof decodes");
    raw[usize::from(mode >> 3) % 32] ^= 1 << (mode & 7);
    let message = format!("{without_proof},p={}", BASE64.encode(raw));
    match exchange.finish(message.as_bytes()) {
        Err(AuthError::WrongPassword) => {}
        Err(AuthError::Malformed(_)) if message.len() > 1024 => {}
        other => panic!("a flipped proof was answered with {other:?}"),
    }
}

/// The correct client proof (base64) and server-final-message for an exchange.
fn proof_for(bare: &str, server_first: &str, without_proof: &str) -> (String, Vec<u8>) {
    let fx = fixture();
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_key = hmac(&fx.salted_password, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    let server_key = hmac(&fx.salted_password, b"Server Key");
    let server_signature = hmac(&server_key, auth_message.as_bytes());
    (
        BASE64.encode(proof),
        format!("v={}", BASE64.encode(server_signature)).into_bytes(),
    )
}
