//! The reply filter, message by message: server messages as bytes in, the
//! verdicts and the outcome out.

use std::collections::HashMap;

use bytes::Bytes;

use super::*;
use crate::protocol::build;

/// A server message: tag, then its body (the length is the filter's
/// caller's business).
fn body(message: &Bytes) -> &[u8] {
    &message[5..]
}

fn raw(tag: u8, payload: &[u8]) -> Bytes {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(payload.len() + 4).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(payload);
    Bytes::from(v)
}

fn data_row(value: &str) -> Bytes {
    let mut p = 1u16.to_be_bytes().to_vec();
    p.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
    p.extend_from_slice(value.as_bytes());
    raw(tag::backend::DATA_ROW, &p)
}

fn ready(status: TxStatus) -> Bytes {
    build::ready_for_query(status)
}

fn error(code: &str) -> Bytes {
    build::error_response(build::Severity::Error, code, "boom")
}

const F: Action = Action::Forward;
const S: Action = Action::Swallow;
const H: Action = Action::HoldReady;

type Params = HashMap<Vec<u8>, Vec<u8>>;

/// Feeds `messages` in order; returns each verdict as (action, done), the
/// filter, and the connection's parameters after.
fn run(
    mode: RelayMode,
    exp: &mut Expect,
    messages: &[Bytes],
) -> (Vec<(Action, bool)>, Replies, Params) {
    let mut replies = Replies::new(mode);
    let mut params = HashMap::new();
    let steps = messages
        .iter()
        .map(|m| {
            let step = replies
                .on_message(m[0], body(m), exp, &mut params)
                .unwrap_or_else(|e| panic!("message {:?}: {e}", char::from(m[0])));
            (step.action, step.done)
        })
        .collect();
    (steps, replies, params)
}

#[test]
fn a_plain_query_is_forwarded_and_ends_at_ready_for_query() {
    let msgs = [
        raw(tag::backend::ROW_DESCRIPTION, &[0, 0]),
        data_row("1"),
        build::command_complete("SELECT 1"),
        ready(TxStatus::InTransaction),
    ];
    let (steps, r, _) = run(RelayMode::default(), &mut Expect::default(), &msgs);
    assert_eq!(steps, vec![(F, false), (F, false), (F, false), (F, true)]);
    assert_eq!(r.out.status, TxStatus::InTransaction);
    assert!(
        r.out.wrote,
        "a SELECT on the primary may have called a writing function"
    );
    assert!(r.out.error.is_none() && !r.out.rolled_back && r.replied);
}

#[test]
fn the_session_keeps_ready_for_query_when_it_records_the_floor() {
    let mode = RelayMode {
        hold_ready: true,
        ..RelayMode::default()
    };
    let msgs = [build::command_complete("INSERT 0 1"), ready(TxStatus::Idle)];
    let (steps, r, _) = run(mode, &mut Expect::default(), &msgs);
    assert_eq!(steps, vec![(F, false), (H, true)]);
    assert!(r.out.wrote);
}

#[test]
fn the_pipelined_floor_query_is_read_and_swallowed() {
    let mode = RelayMode {
        hold_ready: true,
        floor_probe: true,
        ..RelayMode::default()
    };
    let msgs = [
        build::command_complete("UPDATE 1"),
        ready(TxStatus::Idle),
        raw(tag::backend::ROW_DESCRIPTION, &[0, 0]),
        data_row("0/3000060"),
        build::command_complete("SELECT 1"),
        ready(TxStatus::Idle),
    ];
    let (steps, r, _) = run(mode, &mut Expect::default(), &msgs);
    assert_eq!(
        steps,
        vec![
            (F, false),
            (H, false),
            (S, false),
            (S, false),
            (S, false),
            (S, true)
        ]
    );
    assert_eq!(r.out.probe, crate::server::Lsn::parse("0/3000060"));
    // The probe's own CommandComplete says nothing about the unit.
    let read_only = [
        build::command_complete("SHOW"),
        ready(TxStatus::Idle),
        data_row("0/1"),
        build::command_complete("SELECT 1"),
        ready(TxStatus::Idle),
    ];
    let (_, r, _) = run(mode, &mut Expect::default(), &read_only);
    assert!(!r.out.wrote);
}

#[test]
fn a_recovery_conflict_before_any_reply_is_discarded_for_a_retry() {
    let mode = RelayMode {
        retry_conflict: true,
        ..RelayMode::default()
    };
    let msgs = [
        raw(tag::backend::PARSE_COMPLETE, &[]),
        raw(tag::backend::BIND_COMPLETE, &[]),
        build::notice_response("01000", "hello"),
        error("40001"),
        ready(TxStatus::Idle),
    ];
    let (steps, r, _) = run(mode, &mut Expect::owing(&[false], &[]), &msgs);
    assert_eq!(
        steps,
        vec![(F, false), (F, false), (F, false), (S, false), (S, true)]
    );
    assert!(r.out.retry_conflict && r.discarding() && !r.replied);
    assert_eq!(r.out.error.as_deref(), Some("40001"));
}

#[test]
fn a_replica_shutting_down_is_discarded_but_is_no_conflict() {
    let mode = RelayMode {
        retry_conflict: true,
        ..RelayMode::default()
    };
    let (steps, r, _) = run(mode, &mut Expect::default(), &[error("57P01")]);
    assert_eq!(steps, vec![(S, false)]);
    assert!(r.discarding() && !r.out.retry_conflict);
}

#[test]
fn after_a_real_reply_an_error_goes_to_the_client() {
    let mode = RelayMode {
        retry_conflict: true,
        ..RelayMode::default()
    };
    let msgs = [data_row("1"), error("40001"), ready(TxStatus::Idle)];
    let (steps, r, _) = run(mode, &mut Expect::default(), &msgs);
    assert_eq!(steps, vec![(F, false), (F, false), (F, true)]);
    assert!(r.replied && !r.out.retry_conflict && !r.discarding());
    // Without retry, a conflict is the client's error like any other.
    let (steps, r, _) = run(
        RelayMode::default(),
        &mut Expect::default(),
        &[error("40001")],
    );
    assert_eq!(steps, vec![(F, false)]);
    assert!(!r.out.retry_conflict);
}

#[test]
fn replies_to_messages_pgsplit_added_are_swallowed() {
    // pgsplit added the first Parse and the first Close; the client sent the others.
    let mut exp = Expect::owing(&[true, false], &[true, false]);
    let msgs = [
        raw(tag::backend::CLOSE_COMPLETE, &[]),
        raw(tag::backend::PARSE_COMPLETE, &[]),
        raw(tag::backend::PARSE_COMPLETE, &[]),
        raw(tag::backend::CLOSE_COMPLETE, &[]),
        // More than owed: the client's, forwarded.
        raw(tag::backend::PARSE_COMPLETE, &[]),
    ];
    let (steps, _, _) = run(RelayMode::default(), &mut exp, &msgs);
    assert_eq!(
        steps,
        vec![(S, false), (S, false), (F, false), (F, false), (F, false)]
    );
}

#[test]
fn parameters_are_noted_and_server_facts_kept_from_the_client() {
    let msgs = [
        build::parameter_status(b"in_hot_standby", b"on"),
        build::parameter_status(b"application_name", b"app"),
    ];
    let (steps, r, params) = run(RelayMode::default(), &mut Expect::default(), &msgs);
    assert_eq!(steps, vec![(S, false), (F, false)]);
    assert_eq!(
        params.get(&b"in_hot_standby"[..]).map(Vec::as_slice),
        Some(&b"on"[..])
    );
    assert_eq!(
        params.get(&b"application_name"[..]).map(Vec::as_slice),
        Some(&b"app"[..])
    );
    assert!(!r.replied, "parameter changes are no answer");
}

#[test]
fn copy_in_and_its_end() {
    let extended = RelayMode {
        extended: true,
        ..RelayMode::default()
    };
    let copy_in = raw(tag::backend::COPY_IN_RESPONSE, &[0, 0, 0]);
    let (_, r, _) = run(
        extended,
        &mut Expect::default(),
        std::slice::from_ref(&copy_in),
    );
    assert!(
        r.copy_in && !r.complete,
        "an extended COPY waits for another Sync"
    );
    let (_, r, _) = run(
        RelayMode::default(),
        &mut Expect::default(),
        std::slice::from_ref(&copy_in),
    );
    assert!(r.copy_in && r.complete);
    let (_, r, _) = run(
        RelayMode::default(),
        &mut Expect::default(),
        &[copy_in, error("22P02")],
    );
    assert!(!r.copy_in, "an error ends the copy");
    assert_eq!(r.out.error.as_deref(), Some("22P02"));
}

#[test]
fn rollback_and_the_first_error_are_noted() {
    let msgs = [
        error("23505"),
        error("25P02"),
        build::command_complete("ROLLBACK"),
        ready(TxStatus::Idle),
    ];
    let (_, r, _) = run(RelayMode::default(), &mut Expect::default(), &msgs);
    assert_eq!(r.out.error.as_deref(), Some("23505"));
    assert!(r.out.rolled_back && !r.out.wrote);
}

#[test]
fn a_malformed_ready_for_query_is_a_protocol_error() {
    let mut replies = Replies::new(RelayMode::default());
    let bad = raw(tag::backend::READY_FOR_QUERY, b"X");
    let r = replies.on_message(
        bad[0],
        body(&bad),
        &mut Expect::default(),
        &mut HashMap::new(),
    );
    assert!(r.is_err());
    let short = raw(tag::backend::READY_FOR_QUERY, b"");
    let r = replies.on_message(
        short[0],
        body(&short),
        &mut Expect::default(),
        &mut HashMap::new(),
    );
    assert!(r.is_err());
}

/// The settings query pgsplit sends ahead of a read (`Expect::setup`): its
/// replies never reach the client; when it fails, the read's answer is
/// thrown away too and the read may run elsewhere.
#[test]
fn a_settings_query_ahead_of_a_read_is_pgsplits_own() {
    let retryable = RelayMode {
        retry_conflict: true,
        ..RelayMode::default()
    };
    let param = raw(tag::backend::PARAMETER_STATUS, b"application_name\0app\0");
    let read = [
        raw(tag::backend::ROW_DESCRIPTION, &[0, 0]),
        data_row("1"),
        build::command_complete("SELECT 1"),
        ready(TxStatus::Idle),
    ];
    // It succeeds: swallowed up to its ReadyForQuery, then the read as usual.
    let mut msgs = vec![
        build::command_complete("SET"),
        param.clone(),
        ready(TxStatus::Idle),
    ];
    msgs.extend(read.iter().cloned());
    let mut exp = Expect::default();
    exp.setup = 1;
    let (steps, r, params) = run(retryable, &mut exp, &msgs);
    assert_eq!(
        steps,
        vec![
            (S, false),
            (S, false),
            (S, false),
            (F, false),
            (F, false),
            (F, false),
            (F, true)
        ]
    );
    assert!(!r.out.setup_failed && exp.setup == 0);
    assert_eq!(
        params.get(&b"application_name"[..]).map(Vec::as_slice),
        Some(&b"app"[..]),
        "the connection's parameters follow the settings"
    );
    // It fails: nothing of the read reaches the client.
    let mut msgs = vec![error("22023"), ready(TxStatus::Idle)];
    msgs.extend(read.iter().cloned());
    let mut exp = Expect::default();
    exp.setup = 1;
    let (steps, r, _) = run(retryable, &mut exp, &msgs);
    assert!(
        steps[..steps.len() - 1].iter().all(|s| *s == (S, false)),
        "{steps:?}"
    );
    assert_eq!(steps.last(), Some(&(S, true)));
    assert!(r.out.setup_failed && r.out.retry_conflict);
}
