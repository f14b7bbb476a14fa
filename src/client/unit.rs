//! A routing unit: one Query, one FunctionCall, or the extended-protocol messages
//! up to and including Sync. Collecting a unit reads the fields routing needs,
//! keeps the session's statement registry current, and folds the classes of
//! everything the unit runs into one.

use bytes::Bytes;

use super::relay::statement_hash;
use super::state::{Portal, ReplayEntry, SessionState, Statement, is_reset_all};
use crate::protocol::{Frame, ProtocolError, fields, tag};
use crate::route::class::{Class, Kind, merge};
use crate::route::classify::Classifier;

/// A unit larger than this is sent before its Sync arrives (and therefore to the
/// primary: its remaining statements are not known yet).
pub(crate) const MAX_BUFFERED_UNIT: usize = 1 << 20;

#[derive(Debug, Default)]
pub(crate) struct Unit {
    pub frames: Vec<Frame>,
    pub class: Option<Class>,
    /// Ends with Sync, Query or FunctionCall: a ReadyForQuery will close it.
    pub complete: bool,
    /// Session changes this unit makes, to replay elsewhere once committed.
    pub session_changes: Vec<ReplayEntry>,
    pub bytes: usize,
    /// Runs `RESET ALL` or `DISCARD ALL`.
    pub resets_all: bool,
    /// Some statement of it is transaction control (COMMIT, ROLLBACK,
    /// SAVEPOINT...).
    pub txn_control: bool,
    /// Some text of it is several statements or could not be parsed: its
    /// class does not say what each statement is.
    pub opaque: bool,
}

impl Unit {
    fn add_class(&mut self, c: Class) {
        self.txn_control |= c.kind == Kind::TxnControl;
        self.opaque |= c.statements > 1 || !c.parsed;
        self.class = Some(match self.class {
            Some(prev) => merge(prev, c),
            None => c,
        });
    }

    /// The unit's class; a unit that names no statement (a bare Sync) follows
    /// the open transaction or goes to the primary.
    #[inline]
    pub(crate) fn class(&self) -> Class {
        match self.class {
            Some(c) => c,
            None => Class::of(Kind::TxnControl),
        }
    }

    fn note_session_change(&mut self, class: &Class, text: &Bytes) {
        if class.kind == Kind::Session {
            let resets_all = is_reset_all(text);
            self.resets_all |= resets_all;
            self.session_changes.push(ReplayEntry {
                sql: text.clone(),
                startup: None,
                drops_prepared: class.drops_prepared,
                resets_all,
            });
        }
    }

    /// Records one client message: updates `st` and the unit's class. Returns
    /// whether the unit is now complete (or must be sent now).
    pub(crate) fn push(
        &mut self,
        frame: Frame,
        st: &mut SessionState,
        classifier: &Classifier,
    ) -> Result<bool, ProtocolError> {
        let body = frame.body();
        let mut ends = false;
        match frame.tag {
            tag::QUERY => {
                let text = fields::query_text(body)?;
                let class = classify_bytes(classifier, text);
                let text = frame.bytes.slice_ref(text);
                // A simple Query destroys the unnamed prepared statement.
                st.unnamed = None;
                self.note_session_change(&class, &text);
                self.add_class(class);
                self.complete = true;
                ends = true;
            }
            tag::PARSE => {
                let (name, text) = fields::parse(body)?;
                let generation = classifier.generation();
                // Drivers re-send the same Parse for every execution (the
                // unnamed statement especially): its hash and class are known.
                let known = if name.is_empty() {
                    st.unnamed.as_ref()
                } else {
                    st.statements.get(name)
                };
                let (hash, class) = match known {
                    Some(s) if s.generation == generation && s.parse == frame.bytes => {
                        (s.hash, s.class)
                    }
                    _ => (statement_hash(body, name), classify_bytes(classifier, text)),
                };
                let stmt = Statement {
                    parse: frame.bytes.clone(),
                    text: frame.bytes.slice_ref(text),
                    hash,
                    class,
                    generation,
                };
                if name.is_empty() {
                    st.unnamed = Some(stmt);
                } else {
                    st.statements.insert(frame.bytes.slice_ref(name), stmt);
                }
                self.add_class(class);
            }
            tag::BIND => {
                let (portal, stmt) = fields::bind(body)?;
                let (class, text) = match st.statement(stmt) {
                    Some(s) => (s.class, Some(s.text.clone())),
                    // Unknown statement: the server will say so; send it where
                    // errors cost nothing.
                    None => (Class::of(Kind::Write), None),
                };
                st.portals.insert(
                    frame.bytes.slice_ref(portal),
                    Portal {
                        class,
                        text: if class.kind == Kind::Session {
                            text
                        } else {
                            None
                        },
                    },
                );
                self.add_class(class);
            }
            tag::DESCRIBE => {
                let (kind, name) = fields::target(body, "Describe")?;
                let class = if kind == b'S' {
                    st.statement(name).map(|s| s.class)
                } else {
                    st.portals.get(name).map(|p| p.class)
                };
                self.add_class(class.unwrap_or(Class::of(Kind::Write)));
            }
            tag::EXECUTE => {
                let portal = fields::execute(body)?;
                match st.portals.get(portal).cloned() {
                    Some(p) => {
                        if let Some(text) = &p.text {
                            self.note_session_change(&p.class, text);
                        }
                        self.add_class(p.class);
                    }
                    None => self.add_class(Class::of(Kind::Write)),
                }
            }
            tag::CLOSE => {
                let (kind, name) = fields::target(body, "Close")?;
                if kind == b'S' {
                    if name.is_empty() {
                        st.unnamed = None;
                    } else {
                        st.statements.remove(name);
                    }
                } else {
                    st.portals.remove(name);
                }
            }
            tag::FUNCTION_CALL => {
                self.add_class(Class::of(Kind::Write));
                self.complete = true;
                ends = true;
            }
            tag::SYNC => {
                self.complete = true;
                ends = true;
            }
            tag::FLUSH => ends = true,
            other => return Err(ProtocolError::UnexpectedTag(char::from(other))),
        }
        self.bytes = self.bytes.saturating_add(frame.bytes.len());
        self.frames.push(frame);
        Ok(ends || self.bytes > MAX_BUFFERED_UNIT)
    }
}

/// SQL arrives as bytes in the client's encoding; text that is not UTF-8 cannot
/// be parsed and goes to the primary.
fn classify_bytes(classifier: &Classifier, text: &[u8]) -> Class {
    match std::str::from_utf8(text) {
        Ok(s) => classifier.classify(s),
        Err(_) => Class::unparsed(),
    }
}

/// Whether a message type may appear inside a unit.
pub(crate) fn is_unit_message(t: u8) -> bool {
    matches!(
        t,
        tag::QUERY
            | tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::CLOSE
            | tag::SYNC
            | tag::FLUSH
            | tag::FUNCTION_CALL
    )
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::route::catalog::FunctionCatalog;
    use crate::route::class::RouteMode;

    fn parse_frame(name: &str, sql: &str) -> Frame {
        let mut b = BytesMut::new();
        b.put_u8(tag::PARSE);
        let len = 4 + name.len() + 1 + sql.len() + 1 + 2;
        b.put_u32(u32::try_from(len).unwrap());
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
        b.put_u16(0);
        Frame {
            tag: tag::PARSE,
            bytes: b.freeze(),
        }
    }

    fn parse_class(st: &mut SessionState, c: &Classifier, name: &str, sql: &str) -> Kind {
        let mut unit = Unit::default();
        unit.push(parse_frame(name, sql), st, c).unwrap();
        unit.class().kind
    }

    #[test]
    fn a_repeated_parse_reuses_its_class_until_the_catalog_changes() {
        let catalog = |safe: bool| {
            FunctionCatalog::from_rows([("public".to_owned(), "f".to_owned(), safe)], &[], &[])
        };
        // No cache: every classification the session does not reuse is fresh.
        let c = Classifier::new(catalog(true), 0);
        let mut st = SessionState::new(RouteMode::Auto, &[]);
        for name in ["", "s1"] {
            assert_eq!(parse_class(&mut st, &c, name, "SELECT f()"), Kind::Read);
            assert_eq!(parse_class(&mut st, &c, name, "SELECT f()"), Kind::Read);
        }
        // f turns volatile: the same Parse must be classified again.
        assert!(c.set_catalog(catalog(false)));
        for name in ["", "s1"] {
            assert_eq!(parse_class(&mut st, &c, name, "SELECT f()"), Kind::Write);
        }
        // Another text under the same name is classified on its own.
        assert_eq!(parse_class(&mut st, &c, "s1", "SELECT 1"), Kind::Read);
    }
}
