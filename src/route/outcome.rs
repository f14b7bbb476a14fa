//! What a server's answers mean for routing: which command tags may mean a
//! write (and so leave a read-your-writes floor), and which errors let a read
//! run again elsewhere. The relay reads the answers; these tables decide.

/// Command tags of statements that never write, so a unit made only of them
/// leaves no read-your-writes floor. SELECT is not here: a SELECT sent to the
/// primary may call a function that writes.
pub fn tag_never_writes(tag: &[u8]) -> bool {
    const NEVER: &[&[u8]] = &[
        b"SHOW",
        b"SET",
        b"RESET",
        b"BEGIN",
        b"START TRANSACTION",
        b"COMMIT",
        b"ROLLBACK",
        b"SAVEPOINT",
        b"RELEASE",
        b"LISTEN",
        b"UNLISTEN",
        b"DECLARE CURSOR",
        b"FETCH",
        b"MOVE",
        b"CLOSE CURSOR",
        b"CLOSE CURSOR ALL",
        b"DEALLOCATE",
        b"DEALLOCATE ALL",
        b"PREPARE",
        b"DISCARD ALL",
        b"DISCARD PLANS",
        b"DISCARD SEQUENCES",
        b"DISCARD TEMP",
    ];
    // "FETCH 5", "MOVE 2": compare the words before a trailing count.
    let words = match tag.iter().rposition(|b| *b == b' ') {
        Some(i) if tag[i + 1..].iter().all(u8::is_ascii_digit) && i + 1 < tag.len() => &tag[..i],
        _ => tag,
    };
    NEVER.contains(&words)
}

/// What an error a replica sends before any reply reached the client means
/// for a read that may run again elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The read's own failure: the client gets it.
    No,
    /// "canceling statement due to conflict with recovery" (40001, or
    /// 40P01 for a lock that blocked replay), or "cannot execute ... in a
    /// read-only transaction" (25006, a statement the classifier could not
    /// tell needs the primary): the replica's doing, not the read's, and
    /// nothing happened; it runs again on the primary.
    Conflict,
    /// The replica is shutting down or restarting (57P01-57P03): its
    /// connection closes next, and the read runs again elsewhere.
    ServerEnding,
}

pub fn retry_on(sqlstate: &str) -> Retry {
    use crate::sqlstate::*;
    match sqlstate {
        SERIALIZATION_FAILURE | DEADLOCK_DETECTED | READ_ONLY_SQL_TRANSACTION => Retry::Conflict,
        ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW => Retry::ServerEnding,
        _ => Retry::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_writing_tags() {
        for t in [
            "SHOW",
            "SET",
            "FETCH 10",
            "MOVE 0",
            "COMMIT",
            "LISTEN",
            "DISCARD ALL",
        ] {
            assert!(tag_never_writes(t.as_bytes()), "{t}");
        }
        for t in [
            "INSERT 0 1",
            "UPDATE 3",
            "SELECT 1",
            "CREATE TABLE",
            "COPY 5",
            "EXPLAIN",
            "",
        ] {
            assert!(!tag_never_writes(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn retryable_errors() {
        for (code, want) in [
            ("40001", Retry::Conflict),
            ("57P01", Retry::ServerEnding),
            ("57P02", Retry::ServerEnding),
            ("57P03", Retry::ServerEnding),
            // On a standby, a lock that blocked replay ("buffer deadlock
            // with recovery"); a read cannot deadlock otherwise.
            ("40P01", Retry::Conflict),
            ("25006", Retry::Conflict),
            ("22012", Retry::No),
            ("25P02", Retry::No),
            ("42P01", Retry::No),
            ("", Retry::No),
        ] {
            assert_eq!(retry_on(code), want, "{code}");
        }
    }
}
