use thiserror::Error;

use crate::protocol::ProtocolError;
use crate::sqlstate;

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
        /// The failure as the client may read it (no server names).
        client_text: String,
    },
    #[error("TLS to {server}: {message}")]
    Tls { server: String, message: String },
    #[error("authentication to {server} failed: {message}")]
    Auth { server: String, message: String },
    /// An ErrorResponse during startup (e.g. unknown database) or from a query
    /// pgsplit ran itself. `message` is the server's own words.
    #[error("server {server}: {message}")]
    Server {
        server: String,
        code: String,
        message: String,
    },
}

impl BackendError {
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Connect { .. }
            | BackendError::ConnectTimeout(_)
            | BackendError::Tls { .. } => sqlstate::UNABLE_TO_CONNECT,
            BackendError::Io { .. } | BackendError::Closed(_) => sqlstate::CONNECTION_FAILURE,
            BackendError::Protocol { .. } => sqlstate::PROTOCOL_VIOLATION,
            BackendError::Auth { .. } => sqlstate::INVALID_AUTHORIZATION,
            BackendError::Server { code, .. } | BackendError::Unavailable { code, .. } => code,
        }
    }

    /// What went wrong, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Connect { .. }
            | BackendError::ConnectTimeout(_)
            | BackendError::Tls { .. }
            | BackendError::Unavailable { .. } => "server_unreachable",
            BackendError::Io { .. } | BackendError::Closed(_) => "server_lost",
            BackendError::Protocol { .. } => "server_protocol",
            BackendError::Auth { .. } => "server_auth",
            BackendError::Server { .. } => "server_error",
        }
    }

    /// The failure in words a client may read: a server's own error text,
    /// else pgsplit's, never naming the server (its address is for the log).
    pub fn client_text(&self) -> String {
        match self {
            BackendError::Connect { .. } => "cannot connect to the server".into(),
            BackendError::ConnectTimeout(_) => "timed out connecting to the server".into(),
            BackendError::Io { .. } => "the connection to the server was lost".into(),
            BackendError::Closed(_) => "the server closed the connection".into(),
            BackendError::Protocol { .. } => "the server broke the protocol".into(),
            BackendError::Tls { .. } => "TLS to the server failed".into(),
            BackendError::Auth { .. } => "pgsplit could not log in to the server".into(),
            BackendError::Unavailable { client_text, .. } => client_text.clone(),
            BackendError::Server { message, .. } => message.clone(),
        }
    }
}
