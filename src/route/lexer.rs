//! A cheap, hand-written SQL lexer that turns statement text into a cache key.
//!
//! The classifier caches one decision per statement *shape*: the text with every
//! literal replaced by `?`, comments dropped and whitespace collapsed. The lexer
//! follows PostgreSQL's own lexical rules (scan.l) closely enough that a region it
//! masks is exactly one literal token for the server and for sqlparser:
//!
//! - `'...'` with `''` escapes (standard_conforming_strings = on, the default since
//!   PostgreSQL 9.1), `E'...'` with backslash escapes, `B'...'`, `X'...'`, `N'...'`,
//!   `U&'...'`;
//! - dollar quotes `$$...$$` and `$tag$...$tag$`;
//! - numbers: `42`, `4.2`, `.5`, `1e-3`, `1_000`, `0x1F` (never digits inside an
//!   identifier such as `t1`, nor positional parameters `$1`);
//! - `--` comments and nested `/* */` comments become one space;
//! - quoted identifiers `"..."` are kept verbatim.
//!
//! Unterminated strings and dollar quotes mask the rest of the input; an unterminated
//! comment drops it. The lexer never panics: every index is checked, and it only cuts
//! the input at ASCII bytes, which are always `char` boundaries in UTF-8.
//!
//! # The cache invariant
//!
//! **Two texts with the same `key` and `cacheable == true` MUST classify to the same
//! [`Class`](super::class::Class) (apart from `hint`, which is applied per call).**
//!
//! Why it holds: the key keeps every keyword, identifier (so every function name),
//! operator and parenthesis, in PostgreSQL's own tokenization, and drops only literal
//! values. Classification of a query or DML statement depends on those, never on a
//! literal's value: the catalog already answers for every overload of a name. It
//! does not hold for statements whose class depends on a literal
//! (`SET default_transaction_isolation = 'serializable'`, `SET pgsplit.route = 'x'`,
//! `COPY t TO 'file'` versus `TO STDOUT`, `BEGIN`...), so a text is cacheable only
//! when *every* statement in it starts with SELECT, WITH, VALUES, TABLE, INSERT,
//! UPDATE, DELETE or MERGE, and only when every literal, quoted identifier and
//! comment in it is terminated.
//!
//! One known edge: all literal kinds mask to the same `?`, and sqlparser may accept
//! one kind where it refuses another (`numeric(10)` versus `numeric('10')`). Such a
//! pair shares a key while one is unparsed; the server reads both as the same
//! statement with another literal, so sending either where the other's class says
//! is harmless (a literal cannot turn a read into a write).
//!
//! The lexer assumes `standard_conforming_strings = on` (the default since
//! PostgreSQL 9.1), as sqlparser does: in `'a\'` the backslash is a plain character.

use super::class::RouteMode;

/// The result of [`mask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    /// The statement text with literals replaced by `?`, comments dropped and runs of
    /// whitespace collapsed to one space (none at either end).
    pub key: String,
    /// A `pgsplit:primary` / `pgsplit:replica` hint found in a comment before the
    /// first token.
    pub hint: Option<RouteMode>,
    /// True when `key` may be used as a cache key (see the module docs).
    pub cacheable: bool,
}

/// First keywords of the statements whose class never depends on a literal.
const CACHEABLE_FIRST_WORDS: [&str; 8] = [
    "select", "with", "values", "table", "insert", "update", "delete", "merge",
];

/// Bytes that make (part of) an infix or postfix operator; see [`operator_count`].
const OPERATOR_BYTES: &[u8] = b"+-*/<>=~!@#%^&|`?:[";

/// Keywords that are infix operators in sqlparser's expression or query grammar.
const OPERATOR_WORDS: [&str; 16] = [
    "and",
    "or",
    "not",
    "is",
    "like",
    "ilike",
    "similar",
    "between",
    "in",
    "union",
    "intersect",
    "except",
    "at",
    "collate",
    "overlaps",
    "escape",
];

/// Masks `sql` into a cache key; see the module docs.
pub fn mask(sql: &str) -> Masked {
    let mut lx = Lexer::new(sql, true);
    lx.run();
    Masked {
        key: lx.key,
        hint: lx.hint,
        cacheable: lx.cacheable && lx.saw_statement,
    }
}

/// How many operator tokens `sql` has (symbols such as `+` or `::`, subscripts, and
/// keywords such as AND, OR, LIKE, UNION), counted without building a key.
///
/// sqlparser turns a chain of N infix operators into a tree N levels deep, and
/// dropping or walking that tree recurses once per level: a long enough chain
/// overflows the stack and aborts the process. The classifier refuses to parse text
/// with more operators than it can safely handle; this count bounds the depth from
/// above (nesting by parentheses is bounded by sqlparser's own recursion limit).
pub fn operator_count(sql: &str) -> usize {
    let mut lx = Lexer::new(sql, false);
    lx.run();
    lx.operators
}

/// Whether some statement of `sql` starts with SET, RESET or DISCARD: used for text
/// the parser cannot read, which may still change the session.
pub fn may_change_session(sql: &str) -> bool {
    let mut lx = Lexer::new(sql, false);
    lx.run();
    lx.session_head
}

/// Only the leading-comment hint of `sql`, without building a key.
pub fn leading_hint(sql: &str) -> Option<RouteMode> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut hint = None;
    loop {
        i = skip_whitespace(bytes, i);
        let start = i;
        match comment_end(bytes, i) {
            Some((end, _)) => {
                if hint.is_none() {
                    hint = hint_in(bytes.get(start..end).unwrap_or_default());
                }
                i = end;
            }
            None => return hint,
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// False when only counting: nothing is written to `key`.
    keyed: bool,
    key: String,
    /// Source bytes `span.0..span.1` belong in the key but are not copied yet:
    /// consecutive verbatim tokens (and single spaces between them) are copied
    /// with one `push_str`, which is most of a typical statement.
    span: (usize, usize),
    operators: usize,
    /// A space is owed before the next token (whitespace or a comment was skipped).
    space: bool,
    hint: Option<RouteMode>,
    /// Still before the first token: comments here may carry a hint.
    leading: bool,
    /// At the start of a statement: the next token decides cacheability.
    statement_start: bool,
    saw_statement: bool,
    cacheable: bool,
    /// Some statement starts with SET, RESET or DISCARD.
    session_head: bool,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, keyed: bool) -> Self {
        Lexer {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            keyed,
            key: String::with_capacity(if keyed { src.len() } else { 0 }),
            span: (0, 0),
            operators: 0,
            space: false,
            hint: None,
            leading: true,
            statement_start: true,
            saw_statement: false,
            cacheable: true,
            session_head: false,
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn run(&mut self) {
        while let Some(b) = self.peek(0) {
            if is_space(b) {
                self.pos += 1;
                self.space = true;
                continue;
            }
            if let Some((end, closed)) = comment_end(self.bytes, self.pos) {
                self.unterminated(closed);
                if self.leading && self.hint.is_none() {
                    self.hint = hint_in(self.bytes.get(self.pos..end).unwrap_or_default());
                }
                self.pos = end;
                self.space = true;
                continue;
            }
            self.token(b);
        }
        self.flush();
    }

    /// Writes the owed space (if any) before a token's text.
    fn begin_token(&mut self) {
        if self.space && (!self.key.is_empty() || self.span.1 > self.span.0) {
            // One plain space right after the pending span is already the
            // collapsed form: keep it in the span instead of writing it.
            if self.span.1 > self.span.0
                && self.span.1 + 1 == self.pos
                && self.bytes.get(self.span.1) == Some(&b' ')
            {
                self.span.1 = self.pos;
            } else {
                self.push(" ");
            }
        }
        self.space = false;
        self.leading = false;
    }

    /// Records the first token of a statement for the cacheability decision.
    fn first_token(&mut self, word: Option<&str>) {
        if !self.statement_start {
            return;
        }
        self.statement_start = false;
        self.saw_statement = true;
        let ok = word.is_some_and(|w| {
            CACHEABLE_FIRST_WORDS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(w))
        });
        if !ok {
            self.cacheable = false;
        }
        if word.is_some_and(|w| {
            ["set", "reset", "discard"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(w))
        }) {
            self.session_head = true;
        }
    }

    fn literal(&mut self, (end, closed): (usize, bool)) {
        self.unterminated(closed);
        self.first_token(None);
        self.begin_token();
        self.push("?");
        self.pos = end;
    }

    /// Unterminated text is an error for the server, but its key could equal that
    /// of a valid text (`SELECT 'x` and `SELECT 1` are both `SELECT ?`), so it is
    /// never cacheable.
    fn unterminated(&mut self, closed: bool) {
        if !closed {
            self.cacheable = false;
        }
    }

    fn push(&mut self, text: &str) {
        if self.keyed {
            self.flush();
            self.key.push_str(text);
        }
    }

    /// Writes the pending span into the key.
    fn flush(&mut self) {
        let (start, end) = std::mem::take(&mut self.span);
        if self.keyed
            && end > start
            && let Some(text) = self.src.get(start..end)
        {
            self.key.push_str(text);
        }
    }

    /// Copies `self.src[self.pos..end]` into the key. `end` is at an ASCII byte or the
    /// end of input, so the slice is on `char` boundaries.
    fn copy(&mut self, end: usize) {
        self.begin_token();
        if self.keyed {
            if self.span.1 != self.pos || self.span.1 == self.span.0 {
                self.flush();
                self.span.0 = self.pos;
            }
            self.span.1 = end;
        }
        self.pos = end;
    }

    fn token(&mut self, b: u8) {
        let i = self.pos;
        match b {
            b'\'' => {
                let end = quoted_end(self.bytes, i + 1, false);
                self.literal(end);
            }
            b'"' => {
                self.first_token(None);
                let (end, closed) = identifier_end(self.bytes, i + 1);
                self.unterminated(closed);
                self.copy(end);
            }
            b'$' => {
                if let Some(end) = dollar_quote_end(self.bytes, i) {
                    self.literal(end);
                } else {
                    // A positional parameter `$1` or a stray `$`: kept verbatim.
                    self.first_token(None);
                    let mut end = i + 1;
                    while self.bytes.get(end).is_some_and(u8::is_ascii_digit) {
                        end += 1;
                    }
                    self.copy(end);
                }
            }
            b'0'..=b'9' => {
                let end = number_end(self.bytes, i);
                self.literal((end, true));
            }
            b'.' if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => {
                let end = number_end(self.bytes, i);
                self.literal((end, true));
            }
            _ if is_ident_start(b) => self.word(),
            b';' => {
                let end = self.pos + 1;
                self.copy(end);
                self.statement_start = true;
            }
            _ => {
                // Any other ASCII byte (operators, punctuation). Non-ASCII bytes are
                // identifier characters and handled above.
                self.first_token(None);
                if !self.keyed && OPERATOR_BYTES.contains(&b) {
                    self.operators += 1;
                }
                let end = self.pos + 1;
                self.copy(end);
            }
        }
    }

    /// An identifier or keyword, or the prefix of a prefixed string literal.
    fn word(&mut self) {
        let start = self.pos;
        // Identifier bytes are most of a statement: one table lookup each.
        let rest = self.bytes.get(start + 1..).unwrap_or_default();
        let end = start + 1 + rest.iter().take_while(|&&c| is_ident_cont(c)).count();
        let word = self.src.get(start..end).unwrap_or_default();
        let next = self.bytes.get(end).copied();
        if word.len() == 1 && next == Some(b'\'') {
            match word.as_bytes().first().map(u8::to_ascii_lowercase) {
                Some(b'e') => {
                    let lit_end = quoted_end(self.bytes, end + 1, true);
                    self.literal(lit_end);
                    return;
                }
                Some(b'b' | b'x' | b'n') => {
                    let lit_end = quoted_end(self.bytes, end + 1, false);
                    self.literal(lit_end);
                    return;
                }
                _ => {}
            }
        }
        if word.eq_ignore_ascii_case("u") && next == Some(b'&') {
            match self.bytes.get(end + 1) {
                Some(b'\'') => {
                    let lit_end = quoted_end(self.bytes, end + 2, false);
                    self.literal(lit_end);
                    return;
                }
                Some(b'"') => {
                    // U&"ident": a quoted identifier, kept verbatim.
                    self.first_token(None);
                    let (id_end, closed) = identifier_end(self.bytes, end + 2);
                    self.unterminated(closed);
                    self.copy(id_end);
                    return;
                }
                _ => {}
            }
        }
        self.first_token(Some(word));
        // Only `operator_count` (an unkeyed run) needs the count.
        if !self.keyed && OPERATOR_WORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
            self.operators += 1;
        }
        self.copy(end);
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    IDENT_CONT[usize::from(b)]
}

/// [`is_ident_cont`] as a table: letters, digits, `_`, `$` and every non-ASCII byte.
const IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        i += 1;
    }
    table
};

fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|&b| is_space(b)) {
        i += 1;
    }
    i
}

/// If a comment starts at `i`, the index just past it (the end of input when it is
/// unterminated) and whether it was terminated.
fn comment_end(bytes: &[u8], i: usize) -> Option<(usize, bool)> {
    match (bytes.get(i), bytes.get(i + 1)) {
        (Some(b'-'), Some(b'-')) => {
            let mut j = i + 2;
            while let Some(&b) = bytes.get(j) {
                j += 1;
                if b == b'\n' || b == b'\r' {
                    break;
                }
            }
            Some((j, true))
        }
        (Some(b'/'), Some(b'*')) => {
            // PostgreSQL block comments nest.
            let mut depth = 1usize;
            let mut j = i + 2;
            while j < bytes.len() {
                match (bytes.get(j), bytes.get(j + 1)) {
                    (Some(b'/'), Some(b'*')) => {
                        depth += 1;
                        j += 2;
                    }
                    (Some(b'*'), Some(b'/')) => {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            return Some((j, true));
                        }
                    }
                    _ => j += 1,
                }
            }
            Some((bytes.len(), false))
        }
        _ => None,
    }
}

/// The routing hint carried by a comment's text, if any.
fn hint_in(comment: &[u8]) -> Option<RouteMode> {
    const PRIMARY: &[u8] = b"pgsplit:primary";
    const REPLICA: &[u8] = b"pgsplit:replica";
    let found = |needle: &[u8]| {
        comment
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if found(PRIMARY) {
        Some(RouteMode::Primary)
    } else if found(REPLICA) {
        Some(RouteMode::Replica)
    } else {
        None
    }
}

/// The end of a single-quoted string whose body starts at `i` (just past the opening
/// quote), and whether it was terminated. `''` is an escaped quote; with
/// `backslash`, so is `\'` (E'' strings).
fn quoted_end(bytes: &[u8], mut i: usize, backslash: bool) -> (usize, bool) {
    while let Some(&b) = bytes.get(i) {
        if backslash && b == b'\\' {
            i += 2;
            continue;
        }
        if b == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return (i + 1, true);
        }
        i += 1;
    }
    (bytes.len(), false)
}

/// The end of a quoted identifier whose body starts at `i`, and whether it was
/// terminated; `""` is an escaped quote.
fn identifier_end(bytes: &[u8], mut i: usize) -> (usize, bool) {
    while let Some(&b) = bytes.get(i) {
        if b == b'"' {
            if bytes.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return (i + 1, true);
        }
        i += 1;
    }
    (bytes.len(), false)
}

/// If a dollar quote opens at `i` (`$$` or `$tag$`), the index just past its closing
/// delimiter (the end of input when unterminated), and whether it was terminated.
fn dollar_quote_end(bytes: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    // The tag: an identifier without `$`, not starting with a digit (so `$1` is a
    // parameter, not a tag).
    if bytes.get(j).is_some_and(|&b| is_ident_start(b)) {
        j += 1;
        while bytes
            .get(j)
            .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
        {
            j += 1;
        }
    }
    if bytes.get(j) != Some(&b'$') {
        return None;
    }
    let delim = bytes.get(i..=j)?;
    let body = j + 1;
    let rest = bytes.get(body..)?;
    Some(
        rest.windows(delim.len())
            .position(|w| w == delim)
            .map_or((bytes.len(), false), |p| (body + p + delim.len(), true)),
    )
}

/// The end of a numeric literal starting at `i` (a digit, or `.` before a digit).
fn number_end(bytes: &[u8], i: usize) -> usize {
    let digits = |mut j: usize| {
        while bytes
            .get(j)
            .is_some_and(|&b| b.is_ascii_digit() || b == b'_')
        {
            j += 1;
        }
        j
    };
    // 0x1F, 0o17, 0b101 (PostgreSQL 16).
    if bytes.get(i) == Some(&b'0')
        && bytes
            .get(i + 1)
            .is_some_and(|b| matches!(b.to_ascii_lowercase(), b'x' | b'o' | b'b'))
        && bytes.get(i + 2).is_some_and(u8::is_ascii_alphanumeric)
    {
        let mut j = i + 2;
        while bytes
            .get(j)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
        {
            j += 1;
        }
        return j;
    }
    let mut j = digits(i);
    if bytes.get(j) == Some(&b'.') && bytes.get(j + 1) != Some(&b'.') {
        j = digits(j + 1);
    }
    if bytes.get(j).is_some_and(|b| b.eq_ignore_ascii_case(&b'e')) {
        let mut k = j + 1;
        if bytes.get(k).is_some_and(|&b| b == b'+' || b == b'-') {
            k += 1;
        }
        if bytes.get(k).is_some_and(u8::is_ascii_digit) {
            j = digits(k);
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        mask(sql).key
    }

    #[test]
    fn masks_literals() {
        assert_eq!(
            key("SELECT * FROM t WHERE a = 'x''y' AND b = 42"),
            "SELECT * FROM t WHERE a = ? AND b = ?"
        );
        assert_eq!(key("SELECT E'a\\'b', 'c'"), "SELECT ?, ?");
        assert_eq!(key("SELECT e'\\\\', 1"), "SELECT ?, ?");
        assert_eq!(
            key("SELECT B'101', X'1F', N'n', U&'d\\0061t'"),
            "SELECT ?, ?, ?, ?"
        );
        assert_eq!(key("SELECT $$a'b$$, $tag$ $$ $tag$"), "SELECT ?, ?");
        assert_eq!(
            key("SELECT 1.5, .5, 1e10, 2.5E-3, 1_000, 0x1F"),
            "SELECT ?, ?, ?, ?, ?, ?"
        );
        assert_eq!(key("SELECT 1::int, -2"), "SELECT ?::int, -?");
        assert_eq!(
            key("SELECT a FROM t LIMIT 10 OFFSET 20"),
            "SELECT a FROM t LIMIT ? OFFSET ?"
        );
    }

    #[test]
    fn keeps_identifiers_and_parameters() {
        assert_eq!(key("SELECT t1.c2 FROM t1"), "SELECT t1.c2 FROM t1");
        assert_eq!(
            key("SELECT a$1 FROM t WHERE x = $1"),
            "SELECT a$1 FROM t WHERE x = $1"
        );
        assert_eq!(
            key(r#"SELECT "it's 42" FROM "T""x""#),
            r#"SELECT "it's 42" FROM "T""x""#
        );
        assert_eq!(
            key(r#"SELECT U&"d\0061t" FROM e"#),
            r#"SELECT U&"d\0061t" FROM e"#
        );
        assert_eq!(key("SELECT e, b, x, u FROM t"), "SELECT e, b, x, u FROM t");
        assert_eq!(key("SELECT é1, 名前 FROM t"), "SELECT é1, 名前 FROM t");
    }

    #[test]
    fn drops_comments_and_collapses_whitespace() {
        assert_eq!(
            key("  SELECT\t1 -- one\n ,  /* a /* nested */ b */ 2  ;  "),
            "SELECT ? , ? ;"
        );
        assert_eq!(key("SELECT 1--x"), "SELECT ?");
        assert_eq!(key("SELECT a/**/FROM t"), "SELECT a FROM t");
        // Verbatim runs are copied in spans: every kind of gap between two tokens
        // still collapses to exactly one space, and none is added between
        // adjacent tokens.
        assert_eq!(
            key("SELECT  a,b\tFROM\n\nt ; SELECT 1"),
            "SELECT a,b FROM t ; SELECT ?"
        );
        assert_eq!(key(" a =1 "), "a =?");
        assert_eq!(key("a= 'x' b"), "a= ? b");
        assert_eq!(key("a /* c */ b"), "a b");
        assert_eq!(key("a-- c\n b"), "a b");
        assert_eq!(key("1 a"), "? a");
        assert_eq!(key("a;b ;c"), "a;b ;c");
        assert_eq!(key("\"x\" \"y\"\"z\""), "\"x\" \"y\"\"z\"");
    }

    #[test]
    fn unterminated_input_masks_or_drops_the_rest() {
        assert_eq!(key("SELECT 'abc"), "SELECT ?");
        assert_eq!(key("SELECT E'abc\\"), "SELECT ?");
        assert_eq!(key("SELECT $x$abc"), "SELECT ?");
        assert_eq!(key("SELECT \"abc"), "SELECT \"abc");
        assert_eq!(key("SELECT 1 /* abc /* x */"), "SELECT ?");
        assert_eq!(key("SELECT $"), "SELECT $");
        assert_eq!(key("U&"), "U&");
        assert_eq!(key("E"), "E");
        assert_eq!(key("1e"), "?e");
        assert_eq!(key(""), "");
        for sql in [
            "SELECT 'abc",
            "SELECT E'abc\\'",
            "SELECT $x$abc",
            "SELECT \"abc",
            "SELECT 1 /* abc",
        ] {
            assert!(!mask(sql).cacheable, "{sql}");
        }
        assert!(mask("SELECT 1 -- no newline").cacheable);
        // Every prefix of a tricky text, cut at char boundaries: no panic.
        let tricky = "SELECT E'\\'', U&'x' UESCAPE '!', $a$ $ $a$, \"q\"\"\", 1.e+5, é /* /* */";
        for (i, _) in tricky.char_indices() {
            let _ = mask(tricky.get(..i).unwrap_or_default());
        }
    }

    #[test]
    fn leading_hints() {
        let m = mask("/* pgsplit:replica */ SELECT 1");
        assert_eq!(m.hint, Some(RouteMode::Replica));
        assert_eq!(m.key, "SELECT ?");
        assert_eq!(
            mask("-- PGSPLIT:PRIMARY\nSELECT 1").hint,
            Some(RouteMode::Primary)
        );
        assert_eq!(
            mask("/* app */ /* pgsplit:primary */ SELECT 1").hint,
            Some(RouteMode::Primary)
        );
        assert_eq!(mask("SELECT 1 /* pgsplit:primary */").hint, None);
        assert_eq!(mask("SELECT '/* pgsplit:primary */'").hint, None);
        assert_eq!(leading_hint("/* pgsplit:replica"), Some(RouteMode::Replica));
        assert_eq!(leading_hint("SELECT 1"), None);
    }

    #[test]
    fn cacheable_only_when_every_statement_is_literal_independent() {
        for sql in [
            "SELECT 1",
            "select 1",
            "/* c */ with x as (select 1) select * from x",
            "VALUES (1)",
            "TABLE t",
            "INSERT INTO t VALUES (1)",
            "update t set a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "SELECT 1; SELECT 2;",
        ] {
            assert!(mask(sql).cacheable, "{sql}");
        }
        for sql in [
            "",
            "  ;  ",
            "-- only a comment",
            "SET default_transaction_isolation = 'serializable'",
            "BEGIN",
            "EXPLAIN SELECT 1",
            "COPY t TO STDOUT",
            "SHOW x",
            "(SELECT 1)",
            "SELECT 1; SET x = 'y'",
            "selectx 1",
        ] {
            assert!(!mask(sql).cacheable, "{sql}");
        }
    }
}
