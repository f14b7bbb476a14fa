//! What a client session remembers so that every server connection it uses
//! behaves like the one connection the application thinks it has: session
//! settings to replay, prepared statements to re-create, the open transaction.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::settings::{Settings, push_setting_name};
use crate::protocol::TxStatus;
use crate::route::class::{Class, ConnState, Kind, PinReason, RouteMode};
use crate::route::classify::{SettingEffect, setting_effect};
use crate::server::{Lsn, ServerId};

/// Session log entries beyond which the session is pinned to the primary rather
/// than replaying an ever-growing log onto each new connection.
pub(crate) const MAX_REPLAY: usize = 256;

/// One session-level change to replay on other server connections.
#[derive(Debug, Clone)]
pub(crate) struct ReplayEntry {
    pub sql: Bytes,
    /// For startup parameters: (name, value), so the replay can be skipped when
    /// the connection already reports that value.
    pub startup: Option<(String, String)>,
    /// `DISCARD ALL` / `DEALLOCATE ALL`: clears the connection's prepared statements.
    pub drops_prepared: bool,
    /// `RESET ALL` / `DISCARD ALL`: back to session defaults, which for the
    /// client are its startup parameters; they are re-applied right after.
    pub resets_all: bool,
}

/// Whether `sql` is `RESET ALL` or `DISCARD ALL` (one statement, any case).
pub(crate) fn is_reset_all(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(words.as_slice(), ["reset", "all"] | ["discard", "all"])
}

/// A portal's class and, for a session-level statement, its text to replay.
#[derive(Debug, Clone)]
pub(crate) struct Portal {
    pub class: Class,
    pub text: Option<Bytes>,
}

/// A client's prepared statement: its original Parse message, re-sent to any
/// server connection that lacks it.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub parse: Bytes,
    pub text: Bytes,
    /// Of its text and parameter types (not its name): see
    /// `relay::statement_hash`.
    pub hash: u64,
    pub class: Class,
    /// The classifier generation `class` was computed under.
    pub generation: u64,
}

/// Two hashes combined into one, order mattering.
fn chain_hash(a: u64, b: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub(crate) struct SessionState {
    /// The server running the open transaction.
    pub txn: Option<ServerId>,
    pub pinned: Option<PinReason>,
    /// State left on the session's server connections that cannot move:
    /// under transaction pooling the session keeps them while any is held.
    pub conn_state: ConnState,
    pub mode: RouteMode,
    /// Committed session changes, in order.
    pub replay: Vec<ReplayEntry>,
    /// Session changes made inside the open transaction: kept on COMMIT,
    /// dropped on ROLLBACK.
    pub pending: Vec<ReplayEntry>,
    pub statements: HashMap<Bytes, Statement>,
    pub unnamed: Option<Statement>,
    /// Portals of the open transaction (or of the current unit), by name.
    pub portals: HashMap<Bytes, Portal>,
    /// This session's read-your-writes floor.
    pub floor: Option<Lsn>,
    /// The client's startup parameters as SET entries (the session defaults).
    pub startup: Vec<ReplayEntry>,
    /// The routing mode from the startup packet (what `RESET pgsplit.route` restores).
    pub default_mode: RouteMode,
    /// `SET pgsplit.route` inside the open transaction: applied on commit.
    pub pending_mode: Option<RouteMode>,
    /// The server whose connection ran this session's LISTEN: notifications
    /// arrive there only.
    pub listen: Option<ServerId>,
    /// The open transaction ran something that may have written.
    pub txn_wrote: bool,
    /// Transaction pooling: how many shared statements each server
    /// connection keeps (`None`: session pooling, statements keep the
    /// client's names).
    pub statement_cache: Option<usize>,
    /// A hash of the committed session settings (the replay log), part of
    /// a shared statement's key: clients whose settings differ (a
    /// `search_path` above all) never share a statement, as its meaning may
    /// differ.
    settings_hash: u64,
    /// The settings the committed log leads to: what a server connection
    /// must have to serve this session (see `backend::settings`). Shared
    /// with the connections that have them.
    pub desired: Arc<Settings>,
    /// Some committed change is more than a setting (`SET ROLE`, a string of
    /// several statements): only replaying the log in order reproduces the
    /// session, and `desired` is not used.
    pub opaque: bool,
}

/// A unit the server finished, as the session's memory needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished<'a> {
    /// Where it ran.
    pub server: ServerId,
    /// The transaction status its ReadyForQuery reported.
    pub status: TxStatus,
    /// No statement failed.
    pub ok: bool,
    /// It ended as ROLLBACK (a COMMIT of a failed transaction included).
    pub rolled_back: bool,
    /// Its session-level changes, to replay once committed.
    pub changes: &'a [ReplayEntry],
}

/// What the connection that ran the unit must apply too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Learned {
    /// The transaction (if any) ended with this unit.
    pub txn_ended: bool,
    /// `DISCARD ALL`/`DEALLOCATE ALL` ran: the connection has no prepared
    /// statements left.
    pub drops_prepared: bool,
}

impl SessionState {
    pub(crate) fn new(mode: RouteMode, settings: &[(String, String)]) -> Self {
        let replay = settings
            .iter()
            .map(|(k, v)| ReplayEntry {
                sql: Bytes::from(set_statement(k, v)),
                startup: Some((k.clone(), v.clone())),
                drops_prepared: false,
                resets_all: false,
            })
            .collect::<Vec<_>>();
        SessionState {
            txn: None,
            pinned: None,
            conn_state: ConnState::NONE,
            mode,
            default_mode: mode,
            pending_mode: None,
            startup: replay.clone(),
            replay,
            pending: Vec::new(),
            statements: HashMap::new(),
            unnamed: None,
            portals: HashMap::new(),
            floor: None,
            listen: None,
            txn_wrote: false,
            statement_cache: None,
            settings_hash: 0,
            desired: Arc::default(),
            opaque: false,
        }
        .absorbing(0)
    }

    fn absorbing(mut self, from: usize) -> Self {
        self.absorb(from);
        self
    }

    /// Takes the log's entries from `from` on into `settings_hash` and
    /// `desired`.
    fn absorb(&mut self, from: usize) {
        let Some(new) = self.replay.get(from..) else {
            return;
        };
        let mut desired = (*self.desired).clone();
        for entry in new {
            self.settings_hash = chain_hash(self.settings_hash, hash_bytes(&entry.sql));
            if self.opaque {
                continue;
            }
            if let Some((name, value)) = &entry.startup {
                desired.set(&name.to_ascii_lowercase(), entry.sql.clone(), Some(value));
                continue;
            }
            match setting_effect(&String::from_utf8_lossy(&entry.sql)) {
                SettingEffect::Set(name) => desired.set(&name, entry.sql.clone(), None),
                SettingEffect::Reset(name) => desired.reset(&name),
                SettingEffect::ResetAll => desired.clear(),
                SettingEffect::Nothing => {}
                SettingEffect::Other => self.opaque = true,
            }
        }
        self.desired = if self.opaque {
            Arc::default()
        } else {
            Arc::new(desired)
        };
    }

    /// The key of the shared statement for a text hashing to `hash` under
    /// this session's settings.
    #[inline]
    pub(crate) fn shared_key(&self, hash: u64) -> u64 {
        chain_hash(self.settings_hash, hash)
    }

    /// Updates the session from a finished unit of class `class`: the open
    /// transaction, session changes, pins, the routing mode, prepared
    /// statements dropped.
    #[inline]
    pub(crate) fn learn(&mut self, class: &Class, done: Finished<'_>) -> Learned {
        if done.ok {
            self.pending.extend(done.changes.iter().cloned());
        }
        let txn_ended = done.status == TxStatus::Idle;
        if txn_ended {
            self.txn = None;
            self.portals.clear();
            self.end_transaction(!done.rolled_back);
        } else {
            self.txn = Some(done.server);
        }
        // Released only by a unit that succeeded; left even by one that
        // failed (a session advisory lock taken before a later error is not
        // released by the rollback). A string that does both stays pinned.
        if done.ok {
            self.conn_state = self.conn_state.without(class.clears);
            if class.clears.contains(ConnState::LISTEN) {
                self.listen = None;
            }
        }
        let mut leaves = class.leaves;
        if class.session_effect && class.kind != Kind::Session {
            // A SET sharing its string with other statements, set_config():
            // not in the replay log.
            leaves = leaves.with(ConnState::SESSION_CHANGE);
        }
        if !class.parsed {
            leaves = leaves.with(ConnState::UNPARSED);
        }
        self.conn_state = self.conn_state.with(leaves);
        let mut drops_prepared = false;
        if done.ok {
            if class.pin == Some(PinReason::Listen) {
                self.listen = Some(done.server);
            }
            if let Some(pin) = class.pin
                && pin != PinReason::Hint
                && self.pinned.is_none()
            {
                tracing::debug!(reason = pin.as_str(), "session pinned to the primary");
                self.pinned = Some(pin);
            }
            if class.session_effect && class.kind != Kind::Session && self.pinned.is_none() {
                self.pinned = Some(PinReason::SessionChange);
            }
            if let Some(mode) = class.set_route {
                self.mode = mode;
            }
            if class.drops_prepared {
                self.statements.clear();
                self.unnamed = None;
                drops_prepared = true;
            }
        }
        Learned {
            txn_ended,
            drops_prepared,
        }
    }

    /// Drops the statement `name` if the Parse `parse` made it (a Parse that
    /// never reached a server).
    pub(crate) fn forget_parse(&mut self, name: &[u8], parse: &[u8]) {
        if self.statement(name).is_some_and(|s| s.parse == parse) {
            if name.is_empty() {
                self.unnamed = None;
            } else {
                self.statements.remove(name);
            }
        }
    }

    pub(crate) fn statement(&self, name: &[u8]) -> Option<&Statement> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.statements.get(name)
        }
    }

    /// Moves pending changes into the log at transaction end.
    pub(crate) fn end_transaction(&mut self, committed: bool) {
        if committed {
            let from = self.replay.len();
            for entry in std::mem::take(&mut self.pending) {
                let resets = entry.resets_all;
                self.replay.push(entry);
                if resets {
                    self.replay.extend(self.startup.iter().cloned());
                }
            }
            if self.replay.len() > from {
                self.absorb(from);
            }
            if let Some(m) = self.pending_mode.take() {
                self.mode = m;
            }
        } else {
            self.pending.clear();
            self.pending_mode = None;
        }
        if self.replay.len() > MAX_REPLAY {
            self.conn_state = self.conn_state.with(ConnState::SESSION_CHANGE);
        }
        if self.replay.len() > MAX_REPLAY && self.pinned.is_none() {
            self.pinned = Some(PinReason::SessionChange);
        }
    }
}

/// `SET "name" TO 'value'`, quoted so that any value is taken literally.
/// Names were validated at startup to `[A-Za-z0-9_.]`.
pub(crate) fn set_statement(name: &str, value: &str) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + 16);
    s.push_str("SET ");
    push_setting_name(&mut s, name);
    s.push_str(" TO '");
    // standard_conforming_strings is on in every supported PostgreSQL, so only
    // the quote needs doubling.
    s.push_str(&value.replace('\'', "''"));
    s.push('\'');
    s
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod learn_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::settings::reset_statement;

    #[test]
    fn reset_all_is_recognised() {
        assert!(is_reset_all(b"RESET ALL"));
        assert!(is_reset_all(b"  discard   all ;"));
        assert!(!is_reset_all(b"RESET search_path"));
        assert!(!is_reset_all(b"DISCARD PLANS"));
    }

    #[test]
    fn set_statement_quotes() {
        assert_eq!(
            set_statement("TimeZone", "UTC"),
            "SET \"TimeZone\" TO 'UTC'"
        );
        assert_eq!(
            set_statement("search_path", "a, 'b'"),
            "SET \"search_path\" TO 'a, ''b'''"
        );
        assert_eq!(set_statement("my.opt", "x"), "SET \"my\".\"opt\" TO 'x'");
        assert_eq!(reset_statement("TimeZone"), "RESET \"TimeZone\"");
        assert_eq!(reset_statement("a\"b.c"), "RESET \"a\"\"b\".\"c\"");
    }
}
