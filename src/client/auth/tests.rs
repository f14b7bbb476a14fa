//! SCRAM and md5 against real client implementations (postgres-protocol's)
//! and against hostile input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::scram::{Gs2, MAX_MECHANISM_ECHO, split_gs2_header};
use super::*;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::{RngExt as _, SeedableRng as _};

const NONCE: [u8; 18] = [7; 18];

fn secret(password: &str) -> ScramSecret {
    // Few iterations keep the many exchanges below fast; the count is
    // still sent to and honoured by the real client.
    ScramSecret::from_password(password, b"0123456789abcdef", 16)
}

/// Runs a full exchange with postgres-protocol's client: the server uses
/// `server_password`, the client `client_password`.
fn run_real_client(
    server_password: &str,
    client_password: &[u8],
    binding: ChannelBinding,
) -> Result<(), AuthError> {
    run_bound_client(
        server_password,
        client_password,
        binding,
        Binding::NotOffered,
    )
}

/// As [`run_real_client`], with the server's side of channel binding.
fn run_bound_client(
    server_password: &str,
    client_password: &[u8],
    binding: ChannelBinding,
    server_binding: Binding<'_>,
) -> Result<(), AuthError> {
    let secret = secret(server_password);
    let mut client = ScramSha256::new(client_password, binding);
    let (exchange, server_first) =
        ScramExchange::start(&secret, client.message(), NONCE, server_binding)?;
    client
        .update(&server_first)
        .expect("client accepts server-first");
    let server_final = exchange.finish(client.message())?;
    // The client checks our signature: proves the server side derived
    // the same ServerKey and AuthMessage.
    client
        .finish(&server_final)
        .expect("client accepts server signature");
    Ok(())
}

/// A valid (client-first, client-final) pair for `password`, built by a
/// minimal hand-rolled client so tests can tamper with single fields
/// while keeping a correct proof.
struct Handmade {
    gs2: &'static str,
    cbind: String,
    nonce_suffix: &'static str,
    extension: &'static str,
}

impl Handmade {
    fn new() -> Self {
        Handmade {
            gs2: "n,,",
            cbind: BASE64.encode("n,,"),
            nonce_suffix: "",
            extension: "",
        }
    }

    fn run(&self, password: &str) -> Result<Vec<u8>, AuthError> {
        let secret = secret(password);
        let bare = "n=ignored,r=clientnonce";
        let client_first = format!("{}{bare}", self.gs2);
        let (exchange, server_first) =
            ScramExchange::start(&secret, client_first.as_bytes(), NONCE, Binding::NotOffered)?;
        let server_first = String::from_utf8(server_first).unwrap();
        let nonce = server_first
            .strip_prefix("r=")
            .and_then(|s| s.split(',').next())
            .unwrap();
        let without_proof = format!(
            "c={},r={nonce}{}{}",
            self.cbind, self.nonce_suffix, self.extension
        );
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let salted =
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), b"0123456789abcdef", 16);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let signature = hmac_sha256(&sha256(&client_key), &[auth_message.as_bytes()]);
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        exchange.finish(client_final.as_bytes())
    }
}

#[test]
fn round_trip_with_real_client() {
    run_real_client("s3cret", b"s3cret", ChannelBinding::unsupported()).unwrap();
    run_real_client("s3cret", b"s3cret", ChannelBinding::unrequested()).unwrap();
    run_real_client("", b"", ChannelBinding::unsupported()).unwrap();
}

#[test]
fn generated_secret_works_with_real_client() {
    let secret = ScramSecret::generate("pw");
    assert_eq!(secret.iterations(), 4096);
    assert_eq!(secret.salt().len(), 16);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let (exchange, server_first) = ScramExchange::start(
        &secret,
        client.message(),
        random_server_nonce(),
        Binding::NotOffered,
    )
    .unwrap();
    client.update(&server_first).unwrap();
    let server_final = exchange.finish(client.message()).unwrap();
    client.finish(&server_final).unwrap();
}

#[test]
fn wrong_password_with_real_client() {
    let err = run_real_client("right", b"wrong", ChannelBinding::unsupported()).unwrap_err();
    assert_eq!(err, AuthError::WrongPassword);
    assert_eq!(err.sqlstate(), "28P01");
}

#[test]
fn saslprep_password_with_real_client() {
    // U+00A0 is mapped to an ASCII space by SASLprep on both sides.
    run_real_client(
        "pass\u{a0}word",
        "pass\u{a0}word".as_bytes(),
        ChannelBinding::unsupported(),
    )
    .unwrap();
    // ...which makes the mapped form equivalent too.
    run_real_client(
        "pass\u{a0}word",
        b"pass word",
        ChannelBinding::unsupported(),
    )
    .unwrap();
    // U+00AD (soft hyphen) is mapped to nothing.
    run_real_client("a\u{ad}b", b"ab", ChannelBinding::unsupported()).unwrap();
    // A control character makes SASLprep fail; both sides use raw bytes.
    run_real_client("a\u{7}b", b"a\x07b", ChannelBinding::unsupported()).unwrap();
    assert_eq!(
        run_real_client("a\u{7}b", b"ab", ChannelBinding::unsupported()),
        Err(AuthError::WrongPassword)
    );
}

#[test]
fn handmade_client_baseline_and_extensions() {
    assert!(Handmade::new().run("pw").unwrap().starts_with(b"v="));
    let with_ext = Handmade {
        extension: ",x=whatever",
        ..Handmade::new()
    };
    with_ext.run("pw").unwrap();
    let y = Handmade {
        gs2: "y,,",
        cbind: BASE64.encode("y,,"),
        ..Handmade::new()
    };
    y.run("pw").unwrap();
}

#[test]
fn tampered_nonce_rejected() {
    let t = Handmade {
        nonce_suffix: "x",
        ..Handmade::new()
    };
    assert!(matches!(t.run("pw"), Err(AuthError::Malformed(_))));
}

#[test]
fn channel_binding_mismatch_rejected() {
    // Header said `n` but the final message claims `y`.
    let t = Handmade {
        cbind: BASE64.encode("y,,"),
        ..Handmade::new()
    };
    assert!(matches!(t.run("pw"), Err(AuthError::Malformed(_))));
    let t = Handmade {
        cbind: "garbage".into(),
        ..Handmade::new()
    };
    assert!(matches!(t.run("pw"), Err(AuthError::Malformed(_))));
}

#[test]
fn duplicate_proof_rejected() {
    let t = Handmade {
        extension: ",p=AAAA",
        ..Handmade::new()
    };
    assert!(matches!(t.run("pw"), Err(AuthError::Malformed(_))));
}

#[test]
fn client_first_rejections() {
    let secret = secret("pw");
    let bad: &[&[u8]] = &[
        b"p=tls-server-end-point,,n=,r=abc",
        b"n,a=someone,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=ab\x7fc",
        b"n,,n=,r=ab c",
        b"n,,r=abc",
        b"n,,n=,r=abc,",
        b"n,,n=,r=abc,bogus",
        b"n,,n=,r=abc,1=x",
        b"n,,n=\xff,r=abc",
        b"x,,n=,r=abc",
        b"n,,",
        b"",
    ];
    for msg in bad {
        match ScramExchange::start(&secret, msg, NONCE, Binding::NotOffered) {
            Err(e) => assert_eq!(e.sqlstate(), "08P01", "{msg:?}"),
            Ok(_) => panic!("accepted {msg:?}"),
        }
    }
    let mut long = b"n,,n=,r=".to_vec();
    long.resize(2000, b'a');
    assert!(ScramExchange::start(&secret, &long, NONCE, Binding::NotOffered).is_err());
    // A well-formed optional extension after the nonce is ignored.
    ScramExchange::start(&secret, b"n,,n=u,r=abc,x=1", NONCE, Binding::NotOffered).unwrap();
}

#[test]
fn server_first_format() {
    let secret = ScramSecret::from_password("pw", b"salt", 4096);
    let (_, server_first) =
        ScramExchange::start(&secret, b"n,,n=,r=abc", NONCE, Binding::NotOffered).unwrap();
    let expected = format!(
        "r=abc{},s={},i=4096",
        BASE64.encode(NONCE),
        BASE64.encode(b"salt")
    );
    assert_eq!(server_first, expected.as_bytes());
}

#[test]
fn zero_iterations_clamped() {
    let secret = ScramSecret::from_password("pw", b"salt", 0);
    assert_eq!(secret.iterations(), 1);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let (exchange, server_first) =
        ScramExchange::start(&secret, client.message(), NONCE, Binding::NotOffered).unwrap();
    client.update(&server_first).unwrap();
    let server_final = exchange.finish(client.message()).unwrap();
    client.finish(&server_final).unwrap();
}

#[test]
fn debug_hides_keys() {
    let secret = secret("pw");
    let text = format!("{secret:?}");
    assert!(
        !text.contains("stored_key") && !text.contains("server_key"),
        "{text}"
    );
    let (exchange, _) =
        ScramExchange::start(&secret, b"n,,n=,r=abc", NONCE, Binding::NotOffered).unwrap();
    let text = format!("{exchange:?}");
    assert!(!text.contains("key"), "{text}");
}

#[test]
fn truncations_never_panic() {
    let secret = secret("pw");
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let client_first = client.message().to_vec();
    // Cutting into the nonce leaves a shorter but valid nonce; any cut
    // before its first character must fail. None may panic.
    let nonce_start = client_first.windows(2).position(|w| w == b"r=").unwrap() + 2;
    for end in 0..client_first.len() {
        let result =
            ScramExchange::start(&secret, &client_first[..end], NONCE, Binding::NotOffered);
        assert_eq!(result.is_ok(), end > nonce_start, "{end}");
    }
    let (_, server_first) =
        ScramExchange::start(&secret, &client_first, NONCE, Binding::NotOffered).unwrap();
    client.update(&server_first).unwrap();
    let client_final = client.message().to_vec();
    for end in 0..client_final.len() {
        let (exchange, _) =
            ScramExchange::start(&secret, &client_first, NONCE, Binding::NotOffered).unwrap();
        assert!(exchange.finish(&client_final[..end]).is_err(), "{end}");
    }
    let (exchange, _) =
        ScramExchange::start(&secret, &client_first, NONCE, Binding::NotOffered).unwrap();
    exchange.finish(&client_final).unwrap();
}

#[test]
fn random_garbage_never_panics() {
    let secret = secret("pw");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let alphabet = b"nyp,=rcmsia0123456789+/abcXYZ\x00\xff";
    for i in 0..4000 {
        let len = rng.random_range(0..80);
        // Half fully random, half drawn from SCRAM-ish characters so the
        // parser gets past the first checks more often.
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if i % 2 == 0 {
                    rng.random()
                } else {
                    alphabet[rng.random_range(0..alphabet.len())]
                }
            })
            .collect();
        let _ = ScramExchange::start(&secret, &bytes, NONCE, Binding::NotOffered);
        let (exchange, _) =
            ScramExchange::start(&secret, b"n,,n=,r=abc", NONCE, Binding::NotOffered).unwrap();
        let _ = exchange.finish(&bytes);
        let _ = parse_sasl_initial_response(&bytes);
        let _ = parse_scram_initial_response(&bytes);
        let _ = parse_password(&bytes);
        let _ = md5_verify("u", "p", [1, 2, 3, 4], &bytes);
    }
}

#[test]
fn md5_matches_real_client() {
    let salt = [0x2a, 0x3d, 0x8f, 0xe0];
    for (user, password) in [("md5_user", "password"), ("", ""), ("üser", "pässword")] {
        let response = md5_hash(user.as_bytes(), password.as_bytes(), salt);
        assert!(md5_verify(user, password, salt, response.as_bytes()));
        assert!(!md5_verify(user, "other", salt, response.as_bytes()));
        assert!(!md5_verify(
            user,
            password,
            [0, 0, 0, 0],
            response.as_bytes()
        ));
        assert!(!md5_verify(
            user,
            password,
            salt,
            &response.as_bytes()[..34]
        ));
        assert!(!md5_verify(
            user,
            password,
            salt,
            response.to_uppercase().as_bytes()
        ));
    }
}

fn initial_response(mechanism: &[u8], len: i32, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.to_vec();
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(data);
    body
}

#[test]
fn sasl_initial_response_parsing() {
    let body = initial_response(b"SCRAM-SHA-256", 3, b"abc");
    assert_eq!(
        parse_sasl_initial_response(&body),
        Ok(("SCRAM-SHA-256", &b"abc"[..]))
    );
    assert_eq!(parse_scram_initial_response(&body), Ok(&b"abc"[..]));

    let body = initial_response(b"SCRAM-SHA-256", -1, b"");
    assert_eq!(
        parse_sasl_initial_response(&body),
        Ok(("SCRAM-SHA-256", &b""[..]))
    );
    let body = initial_response(b"SCRAM-SHA-256", 0, b"");
    assert_eq!(
        parse_sasl_initial_response(&body),
        Ok(("SCRAM-SHA-256", &b""[..]))
    );

    let bad = [
        initial_response(b"SCRAM-SHA-256", -1, b"x"),
        initial_response(b"SCRAM-SHA-256", -2, b""),
        initial_response(b"SCRAM-SHA-256", 4, b"abc"),
        initial_response(b"SCRAM-SHA-256", i32::MAX, b"abc"),
        initial_response(b"SCRAM-SHA-256", 2, b"abc"),
        initial_response(b"\xff", 0, b""),
        b"SCRAM-SHA-256".to_vec(),
        b"SCRAM-SHA-256\0\0\0".to_vec(),
        Vec::new(),
    ];
    for body in &bad {
        assert!(
            matches!(
                parse_sasl_initial_response(body),
                Err(AuthError::Malformed(_))
            ),
            "{body:?}"
        );
    }

    let body = initial_response(b"SCRAM-SHA-256-PLUS", 0, b"");
    let err = parse_scram_initial_response(&body).unwrap_err();
    assert_eq!(
        err,
        AuthError::UnsupportedMechanism("SCRAM-SHA-256-PLUS".into())
    );
    assert_eq!(err.sqlstate(), "28000");
    let long = vec![b'A'; 500];
    match parse_scram_initial_response(&initial_response(&long, 0, b"")) {
        Err(AuthError::UnsupportedMechanism(m)) => assert_eq!(m.len(), MAX_MECHANISM_ECHO),
        other => panic!("{other:?}"),
    }
}

#[test]
fn password_message_parsing() {
    assert_eq!(parse_password(b"secret\0"), Ok(&b"secret"[..]));
    assert_eq!(parse_password(b"\0"), Ok(&b""[..]));
    for bad in [&b""[..], b"secret", b"sec\0ret\0", b"secret\0x", b"\0\0"] {
        assert!(
            matches!(parse_password(bad), Err(AuthError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn messages_fit_for_clients() {
    assert_eq!(
        AuthError::WrongPassword.to_string(),
        "password authentication failed"
    );
    assert_eq!(AuthError::Malformed("x").sqlstate(), "08P01");
    assert!(AuthError::Malformed("x").to_string().contains('x'));
}

#[test]
fn constant_time_eq_basics() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}

/// SCRAM-SHA-256-PLUS with postgres-protocol's client, as libpq and
/// tokio-postgres run it: the hash of the certificate pgsplit presented is
/// what both sides must agree on.
#[test]
fn channel_binding_with_real_client() {
    let ours = [0x11u8; 32];
    let theirs = [0x22u8; 32];
    let bound = |h: &[u8]| ChannelBinding::tls_server_end_point(h.to_vec());
    run_bound_client("pw", b"pw", bound(&ours), Binding::EndPoint(&ours)).unwrap();
    // A relay that terminated TLS: the client hashed another certificate.
    assert_eq!(
        run_bound_client("pw", b"pw", bound(&theirs), Binding::EndPoint(&ours)),
        Err(AuthError::Malformed("channel binding data does not match"))
    );
    // The wrong password still fails as a wrong password.
    assert_eq!(
        run_bound_client("pw", b"nope", bound(&ours), Binding::EndPoint(&ours)),
        Err(AuthError::WrongPassword)
    );
}

#[test]
fn channel_binding_negotiation_is_checked() {
    let hash = [0x33u8; 32];
    let cases = [
        // (client binding, server side, accepted)
        (ChannelBinding::unsupported(), Binding::Declined, true),
        (ChannelBinding::unsupported(), Binding::NotOffered, true),
        (ChannelBinding::unrequested(), Binding::NotOffered, true),
        // `y` although PLUS was offered: a downgrade.
        (ChannelBinding::unrequested(), Binding::Declined, false),
        // PLUS chosen but no binding data, and the reverse.
        (
            ChannelBinding::unsupported(),
            Binding::EndPoint(&hash),
            false,
        ),
        (
            ChannelBinding::unrequested(),
            Binding::EndPoint(&hash),
            false,
        ),
        (
            ChannelBinding::tls_server_end_point(hash.to_vec()),
            Binding::NotOffered,
            false,
        ),
        (
            ChannelBinding::tls_server_end_point(hash.to_vec()),
            Binding::Declined,
            false,
        ),
    ];
    for (i, (client, server, ok)) in cases.into_iter().enumerate() {
        let got = run_bound_client("pw", b"pw", client, server);
        assert_eq!(got.is_ok(), ok, "case {i}: {got:?}");
    }
}

#[test]
fn gs2_headers() {
    assert_eq!(
        split_gs2_header("n,,n=,r=x").unwrap(),
        (Gs2::No, "n,,", "n=,r=x")
    );
    assert_eq!(
        split_gs2_header("p=tls-server-end-point,,n=,r=x").unwrap(),
        (
            Gs2::Bound("tls-server-end-point"),
            "p=tls-server-end-point,,",
            "n=,r=x"
        )
    );
    for bad in ["p=,,n=", "p,,n=", "x,,n=", "n,a=bob,n=", "n,b,n=", "n,", ""] {
        assert!(split_gs2_header(bad).is_err(), "{bad:?}");
    }
    // An unknown binding type is refused when binding is in use.
    let secret = secret("pw");
    assert_eq!(
        ScramExchange::start(
            &secret,
            b"p=tls-unique,,n=,r=abc",
            NONCE,
            Binding::EndPoint(&[1; 32])
        )
        .err(),
        Some(AuthError::Malformed(
            "unsupported SCRAM channel-binding type"
        ))
    );
}
