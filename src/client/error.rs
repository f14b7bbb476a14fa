use std::time::Duration;

use thiserror::Error;

use super::auth::AuthError;
use crate::backend::{BackendError, CheckoutError};
use crate::protocol::ProtocolError;
use crate::sqlstate;

/// Why a client session failed or a unit could not run. Each variant knows
/// its SQLSTATE, a bounded kind (the metric label) and the text the client
/// may see, which never names a server.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The client went away (EOF or I/O error): nobody to tell.
    #[error("client connection lost: {0}")]
    Gone(std::io::Error),
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The password (or SCRAM proof) did not match.
    #[error("password authentication failed for user \"{0}\"")]
    WrongPassword(String),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    #[error("client did not complete the startup handshake in time")]
    HandshakeTimeout,
    /// `[tls] mode = "require"` and the client did not ask for TLS.
    #[error("TLS is required: connect with sslmode=require (or stricter)")]
    TlsRequired,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("replication connections are not supported through pgsplit")]
    Replication,
    /// A startup option pgsplit cannot take (a malformed `options`, an
    /// unknown `pgsplit.route` value).
    #[error("{0}")]
    BadOption(String),
    /// A startup parameter name that is no setting name.
    #[error("invalid parameter name {0:?}")]
    BadParameterName(String),
    /// pgsplit is shutting down (between the client's statements).
    #[error("terminating connection due to administrator command (pgsplit is shutting down)")]
    ShuttingDown,
    /// No server is primary (or more than one claims to be) after
    /// `primary_wait`.
    #[error("{}", no_primary_text(*.fenced, *.waited))]
    NoPrimary { fenced: bool, waited: Duration },
    /// The server connection a transaction (or a unit) runs on is gone.
    #[error("the server connection running this transaction was lost")]
    TransactionLost,
    /// A server the session used was removed from the configuration.
    #[error("the server for this statement is no longer configured")]
    ServerRemoved,
    /// An optimistic transaction moved from a replica to the primary, and a
    /// read it had made answered differently there: nothing was written.
    #[error(
        "could not serialize access: a read earlier in this transaction (run on a replica) answers differently on the primary now; nothing was written, roll back and retry"
    )]
    ReadChanged,
    /// A statement in a transaction that already failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    /// A user not listed in `[admin] users` asked for the console.
    #[error("user {0:?} may not open the pgsplit console (see [admin] users)")]
    NotAdmin(String),
}

fn no_primary_text(fenced: bool, waited: Duration) -> String {
    if fenced {
        format!(
            "more than one server claims to be primary; writes are refused until that is resolved (waited {waited:?})"
        )
    } else {
        format!("no primary server is available (waited {waited:?})")
    }
}

impl ClientError {
    pub fn sqlstate(&self) -> &str {
        match self {
            ClientError::Protocol(e) => e.sqlstate(),
            ClientError::Gone(_)
            | ClientError::HandshakeTimeout
            | ClientError::TransactionLost
            | ClientError::ServerRemoved => sqlstate::CONNECTION_FAILURE,
            ClientError::Auth(e) => e.sqlstate(),
            ClientError::WrongPassword(_) => sqlstate::INVALID_PASSWORD,
            ClientError::Backend(e) => e.sqlstate(),
            ClientError::Checkout(e) => e.sqlstate(),
            ClientError::TlsRequired | ClientError::NoUser | ClientError::NotAdmin(_) => {
                sqlstate::INVALID_AUTHORIZATION
            }
            ClientError::Replication => sqlstate::FEATURE_NOT_SUPPORTED,
            ClientError::BadOption(_) => sqlstate::INVALID_PARAMETER_VALUE,
            ClientError::BadParameterName(_) => sqlstate::UNDEFINED_OBJECT,
            ClientError::ShuttingDown => sqlstate::ADMIN_SHUTDOWN,
            ClientError::NoPrimary { .. } => sqlstate::CANNOT_CONNECT_NOW,
            ClientError::ReadChanged => sqlstate::SERIALIZATION_FAILURE,
            ClientError::InFailedTransaction => sqlstate::IN_FAILED_TRANSACTION,
        }
    }

    /// What went wrong, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Protocol(_) => "client_protocol",
            ClientError::Gone(_) => "client_gone",
            ClientError::Auth(_) | ClientError::WrongPassword(_) => "auth",
            ClientError::Backend(e) => e.kind(),
            ClientError::Checkout(e) => e.kind(),
            ClientError::HandshakeTimeout => "handshake_timeout",
            ClientError::TlsRequired => "tls_required",
            ClientError::NoUser
            | ClientError::Replication
            | ClientError::BadOption(_)
            | ClientError::BadParameterName(_) => "startup",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::NoPrimary { .. } => "no_primary",
            ClientError::TransactionLost | ClientError::ServerRemoved => "server_lost",
            ClientError::NotAdmin(_) => "not_admin",
            ClientError::ReadChanged => "read_changed",
            ClientError::InFailedTransaction => "in_failed_transaction",
        }
    }

    /// The ErrorResponse (FATAL) that tells the client why its connection
    /// ends.
    pub fn fatal_response(&self) -> bytes::Bytes {
        crate::protocol::build::error_response(
            crate::protocol::build::Severity::Fatal,
            self.sqlstate(),
            &self.client_message(),
        )
    }

    /// The text sent to the client, prefixed so it is clear pgsplit (not the
    /// server) said it. Server names and addresses stay in pgsplit's log.
    pub fn client_message(&self) -> String {
        match self {
            // Server errors already carry the server's own words.
            ClientError::Backend(BackendError::Server { message, .. }) => message.clone(),
            ClientError::Backend(e) => format!("pgsplit: {}", e.client_text()),
            ClientError::Checkout(e) => format!("pgsplit: {}", e.client_text()),
            other => format!("pgsplit: {other}"),
        }
    }
}
