//! Session settings as a state, not a log: for each setting pgsplit changed
//! on a server connection, the statement that gave it its current value.
//!
//! A connection carries its settings from one client to the next. A client
//! about to use it needs only the difference between what the connection
//! has and what the client's session has ([`Settings::diff`]): nothing at
//! all when both are the same, as they are for the clients of one
//! application. That spares the `DISCARD ALL` when a connection changes
//! hands and the replay of the client's whole log when it gets one.

use std::cmp::Ordering;

use bytes::Bytes;

/// One setting: its name (lower case) and the statement that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    name: Box<str>,
    sql: Bytes,
    /// For a client's startup parameter: its value, so that a connection
    /// that already reports it needs no statement.
    startup: Option<Box<str>>,
}

/// Settings by name, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(Vec<Setting>);

impl Settings {
    /// `name` (lower case) is now set by `sql`; `startup` is its value when it
    /// is a startup parameter.
    pub fn set(&mut self, name: &str, sql: Bytes, startup: Option<&str>) {
        let setting = Setting {
            name: name.into(),
            sql,
            startup: startup.map(Into::into),
        };
        match self.find(name) {
            Ok(i) => self.0[i] = setting,
            Err(i) => self.0.insert(i, setting),
        }
    }

    /// `name` is back to the connection's default.
    pub fn reset(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    /// Every setting is back to its default.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| (*s.name).cmp(name))
    }

    /// Appends to `out` the statements (`; `-separated) that take a
    /// connection from `self` to `want`: `RESET` for what `want` does not
    /// set, the setting statement for what differs. `reported` gives the
    /// value a connection reports for a parameter, if it does: a startup
    /// parameter already at its value needs nothing.
    pub fn diff<'a>(
        &self,
        want: &Settings,
        reported: impl Fn(&str) -> Option<&'a [u8]>,
        out: &mut Vec<u8>,
    ) {
        let mut push = |sql: &[u8]| {
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(sql);
        };
        let (mut have, mut need) = (self.0.iter().peekable(), want.0.iter().peekable());
        loop {
            let order = match (have.peek(), need.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(h), Some(n)) => h.name.cmp(&n.name),
            };
            match order {
                Ordering::Less => {
                    if let Some(h) = have.next() {
                        push(reset_statement(&h.name).as_bytes());
                    }
                }
                Ordering::Equal => {
                    if let (Some(h), Some(n)) = (have.next(), need.next())
                        && h.sql != n.sql
                    {
                        push(&n.sql);
                    }
                }
                Ordering::Greater => {
                    if let Some(n) = need.next() {
                        let at_value = n
                            .startup
                            .as_deref()
                            .is_some_and(|v| reported(&n.name) == Some(v.as_bytes()));
                        if !at_value {
                            push(&n.sql);
                        }
                    }
                }
            }
        }
    }
}

/// `RESET name`, with the name quoted as in [`push_setting_name`].
pub(crate) fn reset_statement(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 10);
    s.push_str("RESET ");
    push_setting_name(&mut s, name);
    s
}

/// A setting name as quoted identifiers (`"my"."opt"`), whatever it contains.
pub(crate) fn push_setting_name(s: &mut String, name: &str) {
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push('"');
        s.push_str(&part.replace('"', "\"\""));
        s.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(&str, &str, Option<&str>)]) -> Settings {
        let mut s = Settings::default();
        for (name, sql, startup) in entries {
            s.set(name, Bytes::copy_from_slice(sql.as_bytes()), *startup);
        }
        s
    }

    fn diff(have: &Settings, want: &Settings, reported: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        have.diff(
            want,
            |name| {
                reported
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_bytes())
            },
            &mut out,
        );
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn the_difference_between_two_states() {
        let have = settings(&[
            ("application_name", "SET application_name = 'a'", Some("a")),
            ("search_path", "SET search_path = x", None),
            ("work_mem", "SET work_mem = '8MB'", None),
        ]);
        let want = settings(&[
            ("application_name", "SET application_name = 'b'", Some("b")),
            ("search_path", "SET search_path = x", None),
            ("timezone", "SET timezone = 'UTC'", None),
        ]);
        assert_eq!(
            diff(&have, &want, &[]),
            "SET application_name = 'b'; SET timezone = 'UTC'; RESET \"work_mem\""
        );
        assert_eq!(diff(&want, &want, &[]), "", "the same state needs nothing");
        assert_eq!(
            diff(&want, &Settings::default(), &[]),
            "RESET \"application_name\"; RESET \"search_path\"; RESET \"timezone\""
        );
        // A startup parameter the fresh connection already reports.
        let fresh = Settings::default();
        let want = settings(&[("datestyle", "SET datestyle TO 'ISO, MDY'", Some("ISO, MDY"))]);
        assert_eq!(diff(&fresh, &want, &[("datestyle", "ISO, MDY")]), "");
        assert_eq!(
            diff(&fresh, &want, &[("datestyle", "ISO, DMY")]),
            "SET datestyle TO 'ISO, MDY'"
        );
    }

    #[test]
    fn set_replaces_and_reset_removes() {
        let mut s = settings(&[("b", "SET b = 1", None), ("a", "SET a = 1", None)]);
        s.set("b", Bytes::from_static(b"SET b = 2"), None);
        s.reset("a");
        s.reset("nope");
        assert_eq!(s, settings(&[("b", "SET b = 2", None)]));
        s.clear();
        assert!(s.is_empty());
        assert_eq!(reset_statement("my.o\"pt"), "RESET \"my\".\"o\"\"pt\"");
    }
}
