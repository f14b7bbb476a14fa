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

use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::sqlstate;

mod scram;

pub use scram::*;
use scram::{KEY_LEN, SHA256_BLOCK_LEN};

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
mod tests;
