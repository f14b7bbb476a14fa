//! Client authentication for the proxy's server role.
//!
//! The proxy terminates the client connection itself, so it has to play the
//! part of PostgreSQL during authentication: it holds the plaintext password
//! of the configured user and checks what the client proves against it.
//! Everything here is pure computation over message bodies; the connection
//! code owns the sockets, the framing and the choice of method.
//!
//! Two methods are supported:
//!
//! * SCRAM-SHA-256 (RFC 5802 / RFC 7677) in the dialect PostgreSQL speaks:
//!   the user name inside the SCRAM messages is ignored (the startup packet's
//!   user is authoritative). On TLS connections SCRAM-SHA-256-PLUS is offered
//!   too, with `tls-server-end-point` channel binding (RFC 5929): the hash of
//!   the certificate pgsplit presented is part of what the client proves, so a
//!   relay that terminated TLS with another certificate fails.
//! * md5, for old clients that cannot do SCRAM.
//!
//! Every byte handled here comes from an unauthenticated peer, so parsing
//! never panics: all slicing goes through checked accessors and every failure
//! becomes an [`AuthError`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::Md5;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};

use crate::sqlstate;

/// The credentials clients log in with (those of the primary URL).
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub scram: ScramSecret,
}

impl Credentials {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let password = config.primary.password.clone().unwrap_or_default();
        Credentials {
            user: config.user().to_owned(),
            scram: ScramSecret::generate(&password),
            password,
        }
    }
}

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
enum Gs2<'a> {
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
const MAX_MECHANISM_ECHO: usize = 64;

/// SHA-256 output length, which is also the length of every SCRAM key.
const KEY_LEN: usize = 32;

/// SHA-256 block length; HMAC keys shorter than this are zero-padded.
const SHA256_BLOCK_LEN: usize = 64;

/// Why authentication of a client failed.
///
/// The `Display` text is meant to be sent to the client in an ErrorResponse
/// together with [`AuthError::sqlstate`]; it never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client's proof (SCRAM) or hash (md5) did not match the password.
    #[error("password authentication failed")]
    WrongPassword,
    /// The client sent bytes that do not follow the protocol.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The client picked a SASL mechanism we did not offer.
    #[error("unsupported SASL authentication mechanism {0:?}")]
    UnsupportedMechanism(String),
}

impl AuthError {
    /// The SQLSTATE to put into the ErrorResponse for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // invalid_password: what PostgreSQL reports for a bad password.
            AuthError::WrongPassword => sqlstate::INVALID_PASSWORD,
            // invalid_authorization_specification.
            AuthError::UnsupportedMechanism(_) => sqlstate::INVALID_AUTHORIZATION,
            // protocol_violation.
            AuthError::Malformed(_) => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

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

/// Parses the body of a PasswordMessage (after the type byte and length): a
/// single NUL-terminated string filling the whole body. Returns the bytes
/// before the NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], AuthError> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Ok(password),
        _ => Err(AuthError::Malformed(
            "password message must be one NUL-terminated string",
        )),
    }
}

/// Checks an md5 PasswordMessage payload (without its NUL) against the
/// plaintext password: the client sends
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
pub fn md5_verify(user: &str, password: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let inner = hex_lower(
        &Md5::new()
            .chain_update(password)
            .chain_update(user)
            .finalize(),
    );
    let outer = Md5::new().chain_update(inner).chain_update(salt).finalize();
    let expected = format!("md5{}", hex_lower(&outer));
    constant_time_eq(expected.as_bytes(), client_response)
}

/// Equality that takes the same time wherever the first difference is, so a
/// client cannot learn a secret byte by byte from response timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The lengths are public (fixed key sizes, fixed md5 response format),
    // so an early return on mismatch leaks nothing.
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an
    // early-exit comparison.
    std::hint::black_box(diff) == 0
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
fn split_gs2_header(message: &str) -> Result<(Gs2<'_>, &str, &str), AuthError> {
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

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 over the concatenation of `parts`.
///
/// All our keys are 32-byte SCRAM keys. HMAC zero-pads keys shorter than the
/// block size, so padding them ourselves yields the same MAC while letting
/// us use the infallible fixed-size constructor instead of handling an
/// "invalid length" error that cannot occur.
fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut block = [0u8; SHA256_BLOCK_LEN];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = Hmac::<Sha256>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
// Tests fail by panicking; keep that working even if the crate denies these.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
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
            let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
                password.as_bytes(),
                b"0123456789abcdef",
                16,
            );
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
}
