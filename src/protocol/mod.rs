//! The PostgreSQL v3 wire protocol, as pgsplit needs it: framing with length limits,
//! the startup packet, the few fields routing reads, and the messages pgsplit
//! composes itself. Pure: no sockets, no async, nothing here can panic on input.
//!
//! Forwarded traffic is never re-encoded: [`frame`] finds message boundaries and the
//! session forwards the original bytes. Reference: PostgreSQL docs, "Frontend/Backend
//! Protocol", chapter 55 (message formats).

pub mod build;
pub mod error;
pub mod fields;
pub mod frame;
pub mod startup;

pub use error::ProtocolError;
pub use frame::{Frame, FrameHeader, decode_frame, peek_frame};

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until rollback).
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Frontend (client → server) message type bytes used by pgsplit.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';

    /// Backend (server → client) message type bytes.
    pub mod backend {
        pub const AUTHENTICATION: u8 = b'R';
        pub const BACKEND_KEY_DATA: u8 = b'K';
        pub const PARAMETER_STATUS: u8 = b'S';
        pub const READY_FOR_QUERY: u8 = b'Z';
        pub const ERROR_RESPONSE: u8 = b'E';
        pub const NOTICE_RESPONSE: u8 = b'N';
        pub const COMMAND_COMPLETE: u8 = b'C';
        pub const PARSE_COMPLETE: u8 = b'1';
        pub const BIND_COMPLETE: u8 = b'2';
        pub const NO_DATA: u8 = b'n';
        pub const PARAMETER_DESCRIPTION: u8 = b't';
        pub const ROW_DESCRIPTION: u8 = b'T';
        pub const CLOSE_COMPLETE: u8 = b'3';
        pub const COPY_IN_RESPONSE: u8 = b'G';
        pub const COPY_OUT_RESPONSE: u8 = b'H';
        pub const COPY_BOTH_RESPONSE: u8 = b'W';
        pub const DATA_ROW: u8 = b'D';
        pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
        pub const PORTAL_SUSPENDED: u8 = b's';
        pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    }
}
