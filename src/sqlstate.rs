//! The SQLSTATE codes pgsplit sends or reads, by name, in one place
//! (PostgreSQL documentation, appendix A). Every error enum maps its
//! variants onto these; nothing else spells a code out.

/// A five-character SQLSTATE.
pub type SqlState = &'static str;

/// `sqlclient_unable_to_establish_sqlconnection`: a server could not be reached.
pub const UNABLE_TO_CONNECT: SqlState = "08001";
/// `connection_failure`: a connection was lost or cannot go on.
pub const CONNECTION_FAILURE: SqlState = "08006";
/// `protocol_violation`.
pub const PROTOCOL_VIOLATION: SqlState = "08P01";
/// `feature_not_supported`.
pub const FEATURE_NOT_SUPPORTED: SqlState = "0A000";
/// `invalid_parameter_value`.
pub const INVALID_PARAMETER_VALUE: SqlState = "22023";
/// `in_failed_sql_transaction`.
pub const IN_FAILED_TRANSACTION: SqlState = "25P02";
/// `invalid_authorization_specification`.
pub const INVALID_AUTHORIZATION: SqlState = "28000";
/// `invalid_password`.
pub const INVALID_PASSWORD: SqlState = "28P01";
/// `serialization_failure`; on a hot standby also "canceling statement due
/// to conflict with recovery".
pub const SERIALIZATION_FAILURE: SqlState = "40001";
/// A standby cancels a query whose locks block replay with this code too.
pub const DEADLOCK_DETECTED: SqlState = "40P01";
/// "cannot execute ... in a read-only transaction": a standby refusing what
/// only a primary can run.
pub const READ_ONLY_SQL_TRANSACTION: SqlState = "25006";
/// `syntax_error` (an unknown console command).
pub const SYNTAX_ERROR: SqlState = "42601";
/// `undefined_object` (an unknown setting name).
pub const UNDEFINED_OBJECT: SqlState = "42704";
/// `too_many_connections`.
pub const TOO_MANY_CONNECTIONS: SqlState = "53300";
/// `admin_shutdown`.
pub const ADMIN_SHUTDOWN: SqlState = "57P01";
/// `crash_shutdown`.
pub const CRASH_SHUTDOWN: SqlState = "57P02";
/// `cannot_connect_now`.
pub const CANNOT_CONNECT_NOW: SqlState = "57P03";
/// `internal_error`: what an ErrorResponse without a code is taken for.
pub const INTERNAL_ERROR: SqlState = "XX000";

/// The class of a code (its first two characters), a bounded metric label.
pub fn class(code: &str) -> &str {
    code.get(..2).unwrap_or("XX")
}

#[cfg(test)]
mod tests {
    #[test]
    fn classes() {
        assert_eq!(super::class(super::CANNOT_CONNECT_NOW), "57");
        assert_eq!(super::class("4"), "XX");
        assert_eq!(super::class(""), "XX");
    }
}
