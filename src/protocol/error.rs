use thiserror::Error;

/// A violation of the wire protocol by whoever sent the bytes. Always SQLSTATE
/// 08P01 (protocol_violation); the text is safe to show to the client because it
/// describes only the shape of the bytes, never their content.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
}

impl ProtocolError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedVersion { .. } => crate::sqlstate::FEATURE_NOT_SUPPORTED,
            _ => crate::sqlstate::PROTOCOL_VIOLATION,
        }
    }
}
