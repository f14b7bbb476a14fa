//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side: the verifier derived
//! once per password, the per-connection exchange, and the parsing of the
//! client's messages (GS2 header, attributes, channel binding).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng as _;

use sha2::Sha256;

use super::{AuthError, constant_time_eq, hmac_sha256, sha256};

/// The SASL mechanism offered on every connection.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding, offered (first) over TLS.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The only channel-binding type PostgreSQL defines.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// What channel binding means for one SCRAM exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// Not a TLS connection: only SCRAM-SHA-256 was offered.
    NotOffered,
    /// SCRAM-SHA-256-PLUS was offered and the client chose SCRAM-SHA-256.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: the `tls-server-end-point`
    /// value of the certificate pgsplit presented on this connection.
    EndPoint(&'a [u8]),
}

/// The channel-binding flag of a GS2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gs2<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=<type>`: the client binds to the channel with this type.
    Bound(&'a str),
}

/// Iteration count used by [`ScramSecret::generate`]; PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length used by [`ScramSecret::generate`]; PostgreSQL's default.
const DEFAULT_SALT_LEN: usize = 16;

/// Upper bound for any SCRAM message we accept from a client. Legitimate
/// messages are around a hundred bytes; the cap keeps a hostile peer from
/// making us hash or copy large buffers before it has authenticated.
const MAX_SCRAM_MESSAGE_LEN: usize = 1024;

/// Longest mechanism name echoed back inside an error, so a client cannot
/// make us reflect an arbitrarily large string into logs or error messages.
pub(super) const MAX_MECHANISM_ECHO: usize = 64;

/// SHA-256 output length, which is also the length of every SCRAM key.
pub(super) const KEY_LEN: usize = 32;

/// SHA-256 block length; HMAC keys shorter than this are zero-padded.
pub(super) const SHA256_BLOCK_LEN: usize = 64;

/// The server-side SCRAM-SHA-256 verifier for one password.
///
/// Deriving it costs `iterations` HMAC rounds, so it is meant to be computed
/// once (at configuration load) and reused for every client; per-connection
/// work is then a handful of hashes.
#[derive(Clone)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramSecret {
    // Hand-written so that logging a config never reveals the keys: with the
    // stored key an attacker could impersonate the server, and both keys
    // allow an offline dictionary attack on the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Derives the verifier for `password` with the given salt and iteration
    /// count.
    ///
    /// The password is normalised with SASLprep first, exactly like
    /// PostgreSQL and its clients do; if SASLprep rejects it (prohibited
    /// characters, bidi rules) the raw bytes are used, again matching
    /// PostgreSQL, so that such passwords still work with every client.
    ///
    /// An iteration count of 0 is treated as 1: PBKDF2 always performs at
    /// least one round, and advertising `i=0` while computing one round would
    /// make every client fail.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = iterations.max(1);
        let prepared = match stringprep::saslprep(password) {
            Ok(prepared) => prepared,
            Err(_) => std::borrow::Cow::Borrowed(password),
        };
        let salted_password =
            pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(prepared.as_bytes(), salt, iterations);
        let client_key = hmac_sha256(&salted_password, &[b"Client Key"]);
        let server_key = hmac_sha256(&salted_password, &[b"Server Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// Derives a verifier with a fresh random 16-byte salt and 4096
    /// iterations (PostgreSQL's defaults).
    pub fn generate(password: &str) -> ScramSecret {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        ScramSecret::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// The PBKDF2 iteration count advertised to clients.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt advertised to clients.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

/// Fresh random bytes for [`ScramExchange::start`]. 18 bytes encode to 24
/// base64 characters without padding, the same nonce size PostgreSQL uses.
pub fn random_server_nonce() -> [u8; 18] {
    let mut nonce = [0u8; 18];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// An in-progress SCRAM-SHA-256 exchange, between the server-first and the
/// client-final message.
///
/// [`ScramExchange::finish`] consumes it: a SCRAM exchange is single-use, and
/// allowing a second `finish` would hand a client unlimited guesses against
/// one server nonce.
pub struct ScramExchange {
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// `c=` value the client must echo: base64 of the GS2 header it sent,
    /// followed by the channel-binding data when it bound to the channel.
    expected_cbind: String,
    /// Client nonce followed by our nonce; the client must echo it verbatim.
    combined_nonce: String,
    /// `client-first-message-bare "," server-first-message ","`: the part of
    /// the AuthMessage known before the client-final message arrives.
    auth_message_prefix: String,
}

impl std::fmt::Debug for ScramExchange {
    // Keys omitted for the same reason as in `ScramSecret`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramExchange")
            .field("combined_nonce", &self.combined_nonce)
            .finish_non_exhaustive()
    }
}

impl ScramExchange {
    /// Parses the client-first-message (the data of SASLInitialResponse) and
    /// produces the server-first-message to send in AuthenticationSASLContinue.
    ///
    /// `server_nonce_raw` should come from [`random_server_nonce`]; it is a
    /// parameter so that tests can be deterministic.
    pub fn start(
        secret: &ScramSecret,
        client_first: &[u8],
        server_nonce_raw: [u8; 18],
        binding: Binding<'_>,
    ) -> Result<(ScramExchange, Vec<u8>), AuthError> {
        let message = scram_text(client_first)?;
        let (flag, gs2_header, bare) = split_gs2_header(message)?;
        // The same checks, and the same downgrade detection, as PostgreSQL's
        // read_client_first_message.
        let cbind_data: &[u8] = match (binding, flag) {
            (Binding::EndPoint(hash), Gs2::Bound(TLS_SERVER_END_POINT)) => hash,
            (Binding::EndPoint(_), Gs2::Bound(_)) => {
                return Err(AuthError::Malformed(
                    "unsupported SCRAM channel-binding type",
                ));
            }
            (Binding::EndPoint(_), _) => {
                return Err(AuthError::Malformed(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
                ));
            }
            // The client could bind but believes we cannot, while we offered
            // it: something between us removed the offer.
            (Binding::Declined, Gs2::ClientOnly) => {
                return Err(AuthError::Malformed(
                    "SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not, yet this server offered it",
                ));
            }
            (_, Gs2::Bound(_)) => {
                return Err(AuthError::Malformed(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
                ));
            }
            (_, Gs2::No | Gs2::ClientOnly) => &[],
        };
        let mut cbind = gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(cbind_data);

        let mut attrs = bare.split(',');
        let first = parse_attr(attrs.next())?;
        if first.0 == b'm' {
            // A mandatory extension means the client requires something we
            // do not implement; RFC 5802 says the server must then fail.
            return Err(AuthError::Malformed("SCRAM extensions are not supported"));
        }
        if first.0 != b'n' {
            return Err(AuthError::Malformed("expected user name attribute"));
        }
        // The user name is deliberately ignored: like PostgreSQL, the user
        // from the startup packet is the one being authenticated, and
        // clients commonly send an empty `n=`.

        let (name, client_nonce) = parse_attr(attrs.next())?;
        if name != b'r' {
            return Err(AuthError::Malformed("expected nonce attribute"));
        }
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(AuthError::Malformed("invalid client nonce"));
        }
        // Optional extensions may follow the nonce. PostgreSQL skips them and
        // we do the same, but they must at least be well-formed attributes.
        for attr in attrs {
            parse_attr(Some(attr))?;
        }

        let combined_nonce = format!("{client_nonce}{}", BASE64.encode(server_nonce_raw));
        let server_first = format!(
            "r={combined_nonce},s={},i={}",
            BASE64.encode(&secret.salt),
            secret.iterations
        );
        let exchange = ScramExchange {
            stored_key: secret.stored_key,
            server_key: secret.server_key,
            expected_cbind: BASE64.encode(cbind),
            combined_nonce,
            auth_message_prefix: format!("{bare},{server_first},"),
        };
        Ok((exchange, server_first.into_bytes()))
    }

    /// Verifies the client-final-message (the data of SASLResponse) and, on
    /// success, returns the server-final-message (`v=...`) to send in
    /// AuthenticationSASLFinal.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let message = scram_text(client_final)?;

        // The proof must be the last attribute, and the AuthMessage covers
        // everything before the comma that introduces it.
        let (without_proof, proof_attr) = message
            .rsplit_once(',')
            .ok_or(AuthError::Malformed("client-final-message is incomplete"))?;
        let (name, proof_b64) = parse_attr(Some(proof_attr))?;
        if name != b'p' {
            return Err(AuthError::Malformed("expected proof attribute"));
        }

        let mut attrs = without_proof.split(',');
        let (name, cbind) = parse_attr(attrs.next())?;
        if name != b'c' {
            return Err(AuthError::Malformed("expected channel binding attribute"));
        }
        // The GS2 header from the first message and, with channel binding,
        // the certificate hash, re-encoded. The header is not part of the
        // AuthMessage, so this echo is what ties it to the proof; a mismatch
        // (`n` switched to `y`, or a hash of another certificate: a relay
        // that terminated TLS) means a tampered or confused exchange. The
        // encoded text is compared directly, as PostgreSQL does.
        if cbind != self.expected_cbind {
            return Err(AuthError::Malformed("channel binding data does not match"));
        }
        let (name, nonce) = parse_attr(attrs.next())?;
        if name != b'r' {
            return Err(AuthError::Malformed("expected nonce attribute"));
        }
        if nonce != self.combined_nonce {
            return Err(AuthError::Malformed("nonce does not match"));
        }
        for attr in attrs {
            // Extensions are skipped like in the first message, but a second
            // proof would make "which one counts" ambiguous.
            if parse_attr(Some(attr))?.0 == b'p' {
                return Err(AuthError::Malformed("duplicate proof attribute"));
            }
        }

        let proof: [u8; KEY_LEN] = BASE64
            .decode(proof_b64)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(AuthError::Malformed("invalid client proof"))?;

        let mut auth_message = self.auth_message_prefix;
        auth_message.push_str(without_proof);

        // ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage), so XOR-ing
        // the signature back out recovers the ClientKey the client claims to
        // have; it is genuine iff it hashes to our StoredKey.
        let client_signature = hmac_sha256(&self.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (key_byte, sig_byte) in client_key.iter_mut().zip(client_signature) {
            *key_byte ^= sig_byte;
        }
        if !constant_time_eq(&sha256(&client_key), &self.stored_key) {
            return Err(AuthError::WrongPassword);
        }

        let server_signature = hmac_sha256(&self.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// Parses the body of a SASLInitialResponse message (after the type byte and
/// length): the mechanism name as a C string, then an Int32 data length
/// (-1 for "no data", returned as an empty slice), then exactly that many
/// bytes.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), AuthError> {
    // splitn(2) yields the name and, only if a NUL exists, everything after it.
    let mut parts = body.splitn(2, |&b| b == 0);
    let (Some(name), Some(rest)) = (parts.next(), parts.next()) else {
        return Err(AuthError::Malformed(
            "SASL mechanism name is not terminated",
        ));
    };
    let mechanism = std::str::from_utf8(name)
        .map_err(|_| AuthError::Malformed("SASL mechanism name is not valid UTF-8"))?;
    let (len_bytes, data) = rest
        .split_first_chunk::<4>()
        .ok_or(AuthError::Malformed("SASLInitialResponse is truncated"))?;
    match i32::from_be_bytes(*len_bytes) {
        -1 if data.is_empty() => Ok((mechanism, &[])),
        len => match usize::try_from(len) {
            Ok(len) if len == data.len() => Ok((mechanism, data)),
            _ => Err(AuthError::Malformed(
                "SASLInitialResponse length does not match its data",
            )),
        },
    }
}

/// Like [`parse_sasl_initial_response`], but also insists on the one
/// mechanism we offer and returns just the SCRAM client-first-message.
pub fn parse_scram_initial_response(body: &[u8]) -> Result<&[u8], AuthError> {
    let (mechanism, data) = parse_sasl_initial_response(body)?;
    if mechanism != SCRAM_SHA_256 {
        let echoed: String = mechanism.chars().take(MAX_MECHANISM_ECHO).collect();
        return Err(AuthError::UnsupportedMechanism(echoed));
    }
    Ok(data)
}

/// Applies the size limit and UTF-8 check shared by both client messages.
fn scram_text(message: &[u8]) -> Result<&str, AuthError> {
    if message.len() > MAX_SCRAM_MESSAGE_LEN {
        return Err(AuthError::Malformed("SCRAM message is too long"));
    }
    std::str::from_utf8(message).map_err(|_| AuthError::Malformed("SCRAM message is not UTF-8"))
}

/// Splits a client-first-message into its channel-binding flag, its GS2
/// header (`n,,`, `y,,` or `p=<type>,,`) and the client-first-message-bare.
pub(super) fn split_gs2_header(message: &str) -> Result<(Gs2<'_>, &str, &str), AuthError> {
    let invalid = AuthError::Malformed("invalid GS2 header");
    let (flag, rest) = message.split_once(',').ok_or(invalid.clone())?;
    let flag = match flag {
        "n" => Gs2::No,
        "y" => Gs2::ClientOnly,
        other => match other.strip_prefix("p=") {
            Some(name) if !name.is_empty() && name.bytes().all(is_printable) => Gs2::Bound(name),
            _ => return Err(invalid),
        },
    };
    let (authzid, bare) = rest.split_once(',').ok_or(invalid.clone())?;
    if !authzid.is_empty() {
        // PostgreSQL authenticates exactly the startup user, so there is no
        // way to honour a request to act as someone else.
        return Err(if authzid.starts_with("a=") {
            AuthError::Malformed("authorization identity is not supported")
        } else {
            invalid
        });
    }
    // Both commas are ASCII, so these are char boundaries.
    let header_len = message.len() - bare.len();
    let header = message.get(..header_len).ok_or(invalid)?;
    Ok((flag, header, bare))
}

/// Splits one `x=value` SCRAM attribute into its name byte and value. `None`
/// (no attribute where one was required) is an error too, so callers can
/// pass `iter.next()` straight in.
fn parse_attr(attr: Option<&str>) -> Result<(u8, &str), AuthError> {
    let attr = attr.ok_or(AuthError::Malformed("SCRAM message is incomplete"))?;
    match attr.as_bytes() {
        [name, b'=', ..] if name.is_ascii_alphabetic() => attr
            .get(2..)
            .map(|value| (*name, value))
            .ok_or(AuthError::Malformed("malformed SCRAM attribute")),
        _ => Err(AuthError::Malformed("malformed SCRAM attribute")),
    }
}

/// RFC 5802 `printable`: visible ASCII except the attribute separator.
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}
