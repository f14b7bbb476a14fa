//! Framing and field decoding of the messages on pgsplit's hot path.
//!
//! Client side: what `ClientIo::read_frame` + `Unit::push` do per message
//! (`decode_frame`, then the field readers). Server side: what the relay does per
//! reply (`peek_frame` over the connection's read buffer, plus the few fields it
//! reads: ReadyForQuery status, CommandComplete tag).
//!
//! Run: `cargo bench --bench codec`.

// A bench that meets something unexpected stops there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pgsplit::protocol::{decode_frame, fields, peek_frame};

/// Largest message accepted (pgsplit's default `max_message_size`, 64 MB).
const MAX: usize = 64 << 20;

/// One tagged message: type byte, Int32 length (counting itself), body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(i32::try_from(body.len() + 4).unwrap()).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Simple-protocol Query.
fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    message(b'Q', &body)
}

/// The batch pgbench -M extended sends per statement: Parse, Bind, Describe
/// portal, Execute, Sync. `statement` "" is the unnamed statement (-M
/// extended); a name is what -M prepared sends the first time.
fn extended_batch(statement: &str, sql: &str, param: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Parse: name, text, one parameter type OID (int4).
    let mut parse = Vec::new();
    cstr(&mut parse, statement);
    cstr(&mut parse, sql);
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&23i32.to_be_bytes());
    out.extend(message(b'P', &parse));
    // Bind: portal, statement, 0 format codes, 1 text parameter, 0 result formats.
    let mut bind = Vec::new();
    cstr(&mut bind, "");
    cstr(&mut bind, statement);
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(i32::try_from(param.len()).unwrap()).to_be_bytes());
    bind.extend_from_slice(param.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    out.extend(message(b'B', &bind));
    // Describe portal "".
    out.extend(message(b'D', b"P\0"));
    // Execute portal "", no row limit.
    let mut exec = Vec::new();
    cstr(&mut exec, "");
    exec.extend_from_slice(&0i32.to_be_bytes());
    out.extend(message(b'E', &exec));
    out.extend(message(b'S', b""));
    out
}

/// RowDescription for `columns` int4/text columns of a table.
fn row_description(columns: &[(&str, i32)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(i16::try_from(columns.len()).unwrap()).to_be_bytes());
    for (i, (name, oid)) in columns.iter().enumerate() {
        cstr(&mut body, name);
        body.extend_from_slice(&16_384i32.to_be_bytes()); // table OID
        body.extend_from_slice(&(i16::try_from(i + 1).unwrap()).to_be_bytes()); // attnum
        body.extend_from_slice(&oid.to_be_bytes()); // type OID
        body.extend_from_slice(&(if *oid == 23 { 4i16 } else { -1i16 }).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
        body.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    message(b'T', &body)
}

/// DataRow with the given text values.
fn data_row(values: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(i16::try_from(values.len()).unwrap()).to_be_bytes());
    for v in values {
        body.extend_from_slice(&(i32::try_from(v.len()).unwrap()).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    message(b'D', &body)
}

fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    message(b'C', &body)
}

fn ready_for_query(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

/// A server reply to a SELECT of `rows` rows: RowDescription, DataRows,
/// CommandComplete, ReadyForQuery.
fn select_reply(rows: usize) -> Vec<u8> {
    let mut out = row_description(&[("aid", 23), ("bid", 23), ("abalance", 23), ("filler", 25)]);
    for i in 0..rows {
        let aid = (100_000 + i).to_string();
        out.extend(data_row(&[&aid, "1", "-4213", "                    x"]));
    }
    out.extend(command_complete(&format!("SELECT {rows}")));
    out.extend(ready_for_query(b'I'));
    out
}

/// Decodes every frame of `wire` the way the client side does; returns a
/// checksum so nothing is optimised away.
fn decode_all(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = decode_frame(buf, MAX).expect("valid wire") {
        n += usize::from(frame.tag) + frame.bytes.len();
    }
    n
}

/// What `Unit::push` reads out of each client message.
fn read_client_fields(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = decode_frame(buf, MAX).expect("valid wire") {
        let body = frame.body();
        n += match frame.tag {
            b'Q' => fields::query_text(body).unwrap().len(),
            b'P' => fields::parse(body).unwrap().1.len(),
            b'B' => fields::bind(body).unwrap().0.len() + 1,
            b'D' => fields::target(body, "Describe").unwrap().1.len() + 1,
            b'E' => fields::execute(body).unwrap().len() + 1,
            _ => 1,
        };
    }
    n
}

/// What the relay does over a server read buffer: walk headers with
/// `peek_frame`, read ReadyForQuery and CommandComplete.
fn relay_scan(buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while let Some(h) = peek_frame(&buf[pos..], MAX).expect("valid wire") {
        if buf.len() - pos < h.total {
            break;
        }
        let body = &buf[pos + 5..pos + h.total];
        match h.tag {
            b'Z' => n += fields::ready_for_query(body).unwrap().byte() as usize,
            b'C' => n += fields::command_tag(body).unwrap().len(),
            _ => n += 1,
        }
        pos += h.total;
    }
    n
}

fn bench_client(c: &mut Criterion) {
    let point = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    let param_sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("query_point_select", query(point)),
        (
            "extended_batch_unnamed",
            extended_batch("", param_sql, "48213"),
        ),
        (
            "extended_batch_named",
            extended_batch("P0_1", param_sql, "48213"),
        ),
    ];
    let mut group = c.benchmark_group("client");
    for (name, wire) in &inputs {
        let template = BytesMut::from(&wire[..]);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(format!("decode_frame/{name}"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |buf| black_box(decode_all(buf)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("decode_and_fields/{name}"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |buf| black_box(read_client_fields(buf)),
                BatchSize::SmallInput,
            )
        });
    }
    // A message arriving in two reads: the first decode reserves, the second
    // completes.
    let wire = query(point);
    let (head, tail) = wire.split_at(9);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode_frame/query_split_in_two_reads", |b| {
        b.iter_batched_ref(
            || BytesMut::from(head),
            |buf| {
                assert!(decode_frame(buf, MAX).unwrap().is_none());
                buf.put_slice(tail);
                black_box(decode_frame(buf, MAX).unwrap().unwrap().bytes.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_server(c: &mut Criterion) {
    let mut group = c.benchmark_group("server");
    let single = [
        (
            "row_description_4_columns",
            row_description(&[("aid", 23), ("bid", 23), ("abalance", 23), ("filler", 25)]),
        ),
        (
            "data_row_4_columns",
            data_row(&["148213", "1", "-4213", "x"]),
        ),
        ("command_complete", command_complete("SELECT 1")),
        ("ready_for_query", ready_for_query(b'I')),
    ];
    for (name, wire) in &single {
        let template = BytesMut::from(&wire[..]);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("decode_frame/{name}"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |buf| black_box(decode_all(buf)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("relay_scan/{name}"), |b| {
            b.iter(|| black_box(relay_scan(black_box(wire))))
        });
    }
    for rows in [1usize, 100, 1000] {
        let wire = select_reply(rows);
        let template = BytesMut::from(&wire[..]);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(format!("decode_frame/select_reply_{rows}_rows"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |buf| black_box(decode_all(buf)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("relay_scan/select_reply_{rows}_rows"), |b| {
            b.iter(|| black_box(relay_scan(black_box(&wire))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_client, bench_server);
criterion_main!(benches);
