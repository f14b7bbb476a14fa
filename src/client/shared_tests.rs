//! Staging under transaction pooling: clients' named statements become the
//! connection's shared statements (see `backend::statements`). Each case
//! stages what sessions send onto one server connection and reads back the
//! exact messages the server would get.

use bytes::{Bytes, BytesMut};

use super::relay::{self, Expect};
use super::state::SessionState;
use super::unit::Unit;
use crate::backend::{ServerConn, ServerId, ServerTarget};
use crate::config::ServerUrl;
use crate::protocol::{Frame, decode_frame, fields, tag};
use crate::route::catalog::FunctionCatalog;
use crate::route::class::RouteMode;
use crate::route::classify::Classifier;

fn conn() -> ServerConn {
    let url = ServerUrl::parse("postgres://u@127.0.0.1:5432/db?sslmode=disable")
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, _b) = tokio::io::duplex(64);
    ServerConn::over(
        crate::net::Stream::Memory(Box::new(a)),
        ServerTarget::new(ServerId(0), url, crate::config::NetConfig::default()),
    )
}

fn session(capacity: usize, settings: &[(&str, &str)]) -> SessionState {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut st = SessionState::new(RouteMode::Auto, &settings);
    st.statement_cache = Some(capacity);
    st
}

fn frame(t: u8, body: &[u8]) -> Frame {
    let mut v = vec![t];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(body);
    Frame {
        tag: t,
        bytes: Bytes::from(v),
    }
}

fn parse(name: &str, sql: &str) -> Frame {
    frame(tag::PARSE, format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(stmt: &str) -> Frame {
    frame(tag::BIND, format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes())
}

fn describe(stmt: &str) -> Frame {
    frame(tag::DESCRIBE, format!("S{stmt}\0").as_bytes())
}

fn close(stmt: &str) -> Frame {
    frame(tag::CLOSE, format!("S{stmt}\0").as_bytes())
}

/// What the server gets for `frames`, sent by `st` as one unit on `conn`,
/// as (tag, statement name) pairs (Bind: the statement, not the portal);
/// and what is owed.
fn stage(
    st: &mut SessionState,
    conn: &mut ServerConn,
    frames: &[Frame],
) -> (Vec<(char, String)>, Expect) {
    let classifier = Classifier::new(FunctionCatalog::builtin(), 0);
    let mut unit = Unit::default();
    for f in frames {
        unit.push(f.clone(), st, &classifier)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut out = BytesMut::new();
    let mut exp = Expect::default();
    relay::begin_unit(conn, &mut out, &mut exp);
    for f in frames {
        relay::stage(f, st, conn, &mut out, &mut exp).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut sent = Vec::new();
    while let Some(f) = decode_frame(&mut out, 1 << 20).unwrap_or_else(|e| panic!("{e}")) {
        let name = match f.tag {
            tag::PARSE => fields::parse(f.body()).map(|(n, _)| n),
            tag::BIND => fields::bind(f.body()).map(|(_, s)| s),
            tag::DESCRIBE => fields::target(f.body(), "Describe").map(|(_, n)| n),
            tag::CLOSE => fields::target(f.body(), "Close").map(|(_, n)| n),
            _ => Ok(&b""[..]),
        }
        .unwrap_or_else(|e| panic!("malformed staged message: {e}"));
        sent.push((
            char::from(f.tag),
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    (sent, exp)
}

fn shared(name: &str) -> bool {
    name.len() == 24 && name.starts_with("pgsplit_")
}

#[test]
fn one_name_for_two_texts_runs_as_two_shared_statements() {
    let mut conn = conn();
    let (mut a, mut b) = (session(10, &[]), session(10, &[]));
    let (sent_a, _) = stage(&mut a, &mut conn, &[parse("s1", "SELECT 1"), bind("s1")]);
    let (sent_b, _) = stage(&mut b, &mut conn, &[parse("s1", "SELECT 2"), bind("s1")]);
    for sent in [&sent_a, &sent_b] {
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(shared(&sent[0].1), "{sent:?}");
        assert_eq!(sent[0].1, sent[1].1, "the Bind names the Parse's statement");
    }
    assert_ne!(
        sent_a[0].1, sent_b[0].1,
        "different texts, different statements"
    );
    assert_eq!(conn.statements().shared_len(), 2);
    assert!(
        conn.statements().is_empty(),
        "shared statements belong to no client"
    );
}

#[test]
fn a_text_ready_on_the_connection_serves_a_client_that_calls_it_otherwise() {
    let mut conn = conn();
    let (mut a, mut b) = (session(10, &[]), session(10, &[]));
    let (sent_a, _) = stage(
        &mut a,
        &mut conn,
        &[parse("a_1", "SELECT $1::int"), bind("a_1")],
    );
    // B's own Parse is answered by parsing the unnamed statement (no Close,
    // no second copy); its Bind runs A's statement.
    let (sent_b, mut exp) = stage(
        &mut b,
        &mut conn,
        &[parse("b_7", "SELECT $1::int"), describe("b_7"), bind("b_7")],
    );
    assert_eq!(sent_b[0], ('P', String::new()));
    assert_eq!(sent_b[1], ('D', sent_a[0].1.clone()));
    assert_eq!(sent_b[2], ('B', sent_a[0].1.clone()));
    assert!(
        !exp.parse_complete(),
        "the client's ParseComplete reaches it"
    );
    // Once prepared, a unit of only Bind adds nothing.
    let (sent_b, _) = stage(&mut b, &mut conn, &[bind("b_7")]);
    assert_eq!(sent_b, vec![('B', sent_a[0].1.clone())]);
}

#[test]
fn a_connection_that_lacks_the_statement_gets_it_prepared_first() {
    let (mut one, mut two) = (conn(), conn());
    let mut a = session(10, &[]);
    let (first, _) = stage(&mut a, &mut one, &[parse("s", "SELECT 1")]);
    let (sent, mut exp) = stage(&mut a, &mut two, &[bind("s"), describe("s")]);
    assert_eq!(
        sent,
        vec![
            ('P', first[0].1.clone()),
            ('B', first[0].1.clone()),
            ('D', first[0].1.clone())
        ]
    );
    assert!(exp.parse_complete(), "the added Parse's reply is swallowed");
}

#[test]
fn settings_are_part_of_the_key() {
    let mut conn = conn();
    let mut a = session(10, &[("search_path", "a")]);
    let mut b = session(10, &[("search_path", "b")]);
    let mut c = session(10, &[("search_path", "a")]);
    let (sa, _) = stage(&mut a, &mut conn, &[parse("s", "SELECT * FROM t")]);
    let (sb, _) = stage(&mut b, &mut conn, &[parse("s", "SELECT * FROM t")]);
    let (sc, _) = stage(
        &mut c,
        &mut conn,
        &[parse("s", "SELECT * FROM t"), bind("s")],
    );
    assert!(shared(&sa[0].1) && shared(&sb[0].1) && sa[0].1 != sb[0].1);
    assert_eq!(sc[1].1, sa[0].1, "same settings, same statement");
}

#[test]
fn the_least_recently_used_statement_is_closed_to_make_room() {
    let mut conn = conn();
    let mut a = session(2, &[]);
    let (s1, _) = stage(&mut a, &mut conn, &[parse("s1", "SELECT 1")]);
    let (s2, _) = stage(&mut a, &mut conn, &[parse("s2", "SELECT 2")]);
    stage(&mut a, &mut conn, &[bind("s1")]);
    let (s3, mut exp) = stage(&mut a, &mut conn, &[parse("s3", "SELECT 3")]);
    assert_eq!(
        s3[0],
        ('C', s2[0].1.clone()),
        "s2 is the least recently used"
    );
    assert!(exp.close_complete(), "the eviction's reply is swallowed");
    assert_eq!(conn.statements().shared_len(), 2);
    // s2 comes back when needed, evicting s1 (s3 was used since).
    let (again, _) = stage(&mut a, &mut conn, &[bind("s2")]);
    assert_eq!(
        again,
        vec![
            ('C', s1[0].1.clone()),
            ('P', s2[0].1.clone()),
            ('B', s2[0].1.clone())
        ]
    );
}

#[test]
fn a_unit_that_needs_more_than_the_cache_keeps_them_all_until_it_ends() {
    let mut conn = conn();
    let mut a = session(1, &[]);
    let (sent, _) = stage(
        &mut a,
        &mut conn,
        &[
            parse("s1", "SELECT 1"),
            parse("s2", "SELECT 2"),
            bind("s1"),
            bind("s2"),
        ],
    );
    assert!(sent.iter().all(|(t, _)| *t != 'C'), "{sent:?}");
    assert_eq!(conn.statements().shared_len(), 2);
}

#[test]
fn closes_that_never_ran_keep_the_statement_and_unrun_parses_drop_it() {
    let mut conn = conn();
    let mut a = session(1, &[]);
    let (s1, _) = stage(&mut a, &mut conn, &[parse("s1", "SELECT 1")]);
    let (_, mut exp) = stage(&mut a, &mut conn, &[parse("s2", "SELECT 2")]);
    // An error ended the unit before the Close and the Parse ran.
    relay::settle(&mut exp, &mut a, &mut conn, true);
    let (again, _) = stage(&mut a, &mut conn, &[bind("s1")]);
    assert_eq!(again, vec![('B', s1[0].1.clone())], "s1 is still there");
    assert!(
        a.statement(b"s2").is_none(),
        "the client's failed Parse is gone"
    );
}

#[test]
fn a_client_close_leaves_the_shared_statement_for_others() {
    let mut conn = conn();
    let (mut a, mut b) = (session(10, &[]), session(10, &[]));
    let (sa, _) = stage(&mut a, &mut conn, &[parse("s", "SELECT 1")]);
    let (closed, mut exp) = stage(&mut a, &mut conn, &[close("s")]);
    assert_eq!(closed, vec![('C', "pgsplit_none".to_owned())]);
    assert!(!exp.close_complete(), "the client gets its CloseComplete");
    assert!(a.statement(b"s").is_none());
    let (sb, _) = stage(&mut b, &mut conn, &[parse("x", "SELECT 1"), bind("x")]);
    assert_eq!(sb[1].1, sa[0].1);
}

#[test]
fn no_client_reaches_a_shared_statement_by_its_name() {
    let mut conn = conn();
    let (mut a, mut b) = (session(10, &[]), session(10, &[]));
    let (sa, _) = stage(&mut a, &mut conn, &[parse("s", "SELECT 1")]);
    let (sb, _) = stage(&mut b, &mut conn, &[bind(&sa[0].1)]);
    assert_eq!(sb.len(), 1);
    assert_ne!(sb[0].1, sa[0].1);
    assert!(sb[0].1.starts_with("pgsplit_none"), "{sb:?}");
    // An unknown name of any other form goes as it is: the server says it
    // does not exist.
    let (sb, _) = stage(&mut b, &mut conn, &[bind("nope")]);
    assert_eq!(sb, vec![('B', "nope".to_owned())]);
}
