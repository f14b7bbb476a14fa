use thiserror::Error;

use crate::protocol::ProtocolError;

/// Failures talking to a PostgreSQL server. Texts never contain passwords.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("connection to server {server} lost: {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("server {0} closed the connection")]
    Closed(String),
    #[error("server {server} broke the protocol: {source}")]
    Protocol {
        server: String,
        source: ProtocolError,
    },
    /// A pooled connection could not be opened (the pool's last failure).
    #[error("{message}")]
    Unavailable {
        server: String,
        code: String,
        message: String,
    },
    #[error("TLS to {server}: {message}")]
    Tls { server: String, message: String },
    #[error("authentication to {server} failed: {message}")]
    Auth { server: String, message: String },
    /// An ErrorResponse during startup (e.g. unknown database) or from a query
    /// pgsplit ran itself.
    #[error("{message}")]
    Server { code: String, message: String },
}

impl BackendError {
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Connect { .. }
            | BackendError::ConnectTimeout(_)
            | BackendError::Tls { .. } => "08001",
            BackendError::Io { .. } | BackendError::Closed(_) => "08006",
            BackendError::Protocol { .. } => "08P01",
            BackendError::Auth { .. } => "28000",
            BackendError::Server { code, .. } | BackendError::Unavailable { code, .. } => code,
        }
    }
}
