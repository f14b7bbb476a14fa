//! Classification of representative statements, with the shape cache hit
//! (`Classifier::classify` on a text whose shape is cached, with other literals
//! than the text that filled the cache) and missed (the uncached `classify`:
//! lexer guard + sqlparser + tree walk), and the masking lexer alone.
//!
//! Targets (issue 7): a cached decision under 300 ns; an uncached 2 KB
//! statement under 50 us.
//!
//! Run: `cargo bench --bench classify`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgsplit::route::catalog::FunctionCatalog;
use pgsplit::route::class::Kind;
use pgsplit::route::classify::{Classifier, classify};
use pgsplit::route::lexer::mask;

/// Distinct literal sets per statement, cycled through by the cached benches so
/// that each call masks a text the cache has not seen verbatim.
const VARIANTS: usize = 256;

/// A point SELECT as pgbench -S sends it.
fn point_select(i: usize) -> String {
    format!(
        "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
        1 + (i * 7919) % 1_000_000
    )
}

/// An ORM-style listing query of about 2 KB: quoted, qualified column lists,
/// inner and outer joins, IN lists, string and numeric literals, ORDER BY,
/// LIMIT/OFFSET, one scalar subquery with an aggregate.
fn orm_select(i: usize) -> String {
    let customer = 1000 + i;
    let since = format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28);
    let offset = (i % 10) * 25;
    format!(
        concat!(
            "SELECT \"orders\".\"id\", \"orders\".\"customer_id\", \"orders\".\"status\", ",
            "\"orders\".\"total_cents\", \"orders\".\"currency\", \"orders\".\"created_at\", ",
            "\"orders\".\"updated_at\", \"orders\".\"shipping_address_id\", ",
            "\"orders\".\"billing_address_id\", \"orders\".\"coupon_code\", ",
            "\"customers\".\"id\" AS \"customer__id\", \"customers\".\"email\" AS \"customer__email\", ",
            "\"customers\".\"first_name\" AS \"customer__first_name\", ",
            "\"customers\".\"last_name\" AS \"customer__last_name\", ",
            "\"customers\".\"tier\" AS \"customer__tier\", ",
            "\"addresses\".\"id\" AS \"address__id\", \"addresses\".\"line1\" AS \"address__line1\", ",
            "\"addresses\".\"city\" AS \"address__city\", \"addresses\".\"postcode\" AS \"address__postcode\", ",
            "\"addresses\".\"country\" AS \"address__country\", ",
            "\"shipments\".\"id\" AS \"shipment__id\", \"shipments\".\"carrier\" AS \"shipment__carrier\", ",
            "\"shipments\".\"tracking_number\" AS \"shipment__tracking_number\", ",
            "\"shipments\".\"shipped_at\" AS \"shipment__shipped_at\", ",
            "(SELECT COUNT(*) FROM \"order_items\" U0 WHERE U0.\"order_id\" = \"orders\".\"id\") AS \"item_count\", ",
            "COALESCE(\"refunds\".\"amount_cents\", 0) AS \"refunded_cents\" ",
            "FROM \"orders\" ",
            "INNER JOIN \"customers\" ON (\"orders\".\"customer_id\" = \"customers\".\"id\") ",
            "LEFT OUTER JOIN \"addresses\" ON (\"orders\".\"shipping_address_id\" = \"addresses\".\"id\") ",
            "LEFT OUTER JOIN \"shipments\" ON (\"shipments\".\"order_id\" = \"orders\".\"id\" ",
            "AND \"shipments\".\"voided\" = false) ",
            "LEFT OUTER JOIN \"refunds\" ON (\"refunds\".\"order_id\" = \"orders\".\"id\") ",
            "WHERE (\"orders\".\"customer_id\" = {customer} ",
            "AND \"orders\".\"status\" IN ('paid', 'shipped', 'delivered', 'refund_requested') ",
            "AND \"orders\".\"created_at\" >= '{since} 00:00:00+00:00'::timestamptz ",
            "AND \"orders\".\"total_cents\" BETWEEN {low} AND {high} ",
            "AND NOT (\"customers\".\"email\" LIKE '%@example.invalid') ",
            "AND \"addresses\".\"country\" IN ('FR', 'DE', 'NL', 'BE', 'LU', 'IT', 'ES') ",
            "AND (\"orders\".\"coupon_code\" IS NULL OR UPPER(\"orders\".\"coupon_code\") <> 'STAFF')) ",
            "ORDER BY \"orders\".\"created_at\" DESC, \"orders\".\"id\" DESC ",
            "LIMIT 25 OFFSET {offset}"
        ),
        customer = customer,
        since = since,
        low = 100 + i,
        high = 500_000 + i,
        offset = offset,
    )
}

/// An INSERT ... RETURNING as ORMs send it.
fn insert_returning(i: usize) -> String {
    format!(
        "INSERT INTO \"orders\" (\"customer_id\", \"status\", \"total_cents\", \"currency\", \"created_at\") \
         VALUES ({}, 'new', {}, 'EUR', '2025-03-0{} 12:00:00+00') RETURNING \"orders\".\"id\", \"orders\".\"created_at\"",
        1000 + i,
        1999 + i,
        1 + i % 9
    )
}

fn begin(_: usize) -> String {
    "BEGIN".to_owned()
}

fn commit(_: usize) -> String {
    "COMMIT".to_owned()
}

type Make = fn(usize) -> String;

const STATEMENTS: [(&str, Make, Kind); 5] = [
    ("point_select", point_select, Kind::Read),
    ("orm_select_2kb", orm_select, Kind::Read),
    ("insert_returning", insert_returning, Kind::Write),
    ("begin", begin, Kind::Begin { replica_ok: false }),
    ("commit", commit, Kind::TxnControl),
];

fn bench_classify(c: &mut Criterion) {
    let catalog = FunctionCatalog::builtin();
    for (name, make, kind) in STATEMENTS {
        let texts: Vec<String> = (0..VARIANTS).map(make).collect();
        // Sanity: the bench measures the answer pgsplit relies on.
        for t in &texts {
            assert_eq!(classify(t, &catalog).kind, kind, "{name}: {t}");
        }
        if name == "orm_select_2kb" {
            let len = texts[0].len();
            assert!((1800..=2400).contains(&len), "ORM statement is {len} bytes");
        }
        let classifier = Classifier::new(catalog.clone(), 10_000);
        // Fill the cache with the first variant only; the bench then classifies
        // the others (same shape, other literals).
        classifier.classify(&texts[0]);

        let mut group = c.benchmark_group(format!("classify/{name}"));
        group.throughput(Throughput::Bytes(texts[1].len() as u64));
        let mut i = 0;
        group.bench_function("cached", |b| {
            b.iter(|| {
                i = (i + 1) % VARIANTS;
                black_box(classifier.classify(black_box(&texts[i])))
            })
        });
        let mut i = 0;
        group.bench_function("uncached", |b| {
            b.iter(|| {
                i = (i + 1) % VARIANTS;
                black_box(classify(black_box(&texts[i]), &catalog))
            })
        });
        let mut i = 0;
        group.bench_function("mask", |b| {
            b.iter(|| {
                i = (i + 1) % VARIANTS;
                black_box(mask(black_box(&texts[i])))
            })
        });
        group.finish();
        eprintln!(
            "{name}: {} bytes, cacheable shape: {}, cached shapes: {}",
            texts[1].len(),
            mask(&texts[1]).cacheable,
            classifier.cached()
        );
    }
}

criterion_group!(benches, bench_classify);
criterion_main!(benches);
