use thiserror::Error;

use super::auth::AuthError;
use crate::backend::{BackendError, CheckoutError};
use crate::protocol::ProtocolError;

/// Why a client session failed or a unit could not run. Each variant knows its
/// SQLSTATE and whether the session can go on after telling the client.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The client went away (EOF or I/O error): nobody to tell.
    #[error("client connection lost: {0}")]
    Gone(std::io::Error),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    /// Refused for a reason pgsplit states itself.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("client did not complete the startup handshake in time")]
    HandshakeTimeout,
}

impl ClientError {
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        ClientError::Refused {
            code,
            message: message.into(),
        }
    }

    pub fn sqlstate(&self) -> &str {
        match self {
            ClientError::Protocol(e) => e.sqlstate(),
            ClientError::Gone(_) => "08006",
            ClientError::Auth(e) => e.sqlstate(),
            ClientError::Backend(e) => e.sqlstate(),
            ClientError::Checkout(e) => e.sqlstate(),
            ClientError::Refused { code, .. } => code,
            ClientError::HandshakeTimeout => "08006",
        }
    }

    /// The text sent to the client, prefixed so it is clear pgsplit (not the
    /// server) said it.
    pub fn client_message(&self) -> String {
        match self {
            // Server errors already carry the server's own words.
            ClientError::Backend(BackendError::Server { message, .. }) => message.clone(),
            other => format!("pgsplit: {other}"),
        }
    }

    /// Errors after which the connection must close (FATAL).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ClientError::Checkout(_) | ClientError::Refused { code: "57P03", .. }
        )
    }
}
