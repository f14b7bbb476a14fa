//! The routing table: SQL → (kind, pin, parsed), one group per rule family of
//! DESIGN.md section 3. The counts at the end make any change of decision visible.

use pgsplit::route::catalog::FunctionCatalog;
use pgsplit::route::class::{Class, Kind, PinReason, RouteMode};
use pgsplit::route::classify::{Classifier, classify};
use pgsplit::route::lexer::mask;

struct Case {
    sql: &'static str,
    kind: Kind,
    pin: Option<PinReason>,
    parsed: bool,
}

const fn case(sql: &'static str, kind: Kind, pin: Option<PinReason>, parsed: bool) -> Case {
    Case {
        sql,
        kind,
        pin,
        parsed,
    }
}
/// Read: may go to a replica.
const fn r(sql: &'static str) -> Case {
    case(sql, Kind::Read, None, true)
}
/// Write: the primary.
const fn w(sql: &'static str) -> Case {
    case(sql, Kind::Write, None, true)
}
/// Write that pins the session to the primary.
const fn wp(sql: &'static str, pin: PinReason) -> Case {
    case(sql, Kind::Write, Some(pin), true)
}
/// sqlparser 0.64 cannot read it: Write, parsed = false.
const fn u(sql: &'static str) -> Case {
    case(sql, Kind::Write, None, false)
}
/// Session-level SET/RESET/DISCARD.
const fn s(sql: &'static str) -> Case {
    case(sql, Kind::Session, None, true)
}
const fn sp(sql: &'static str, pin: PinReason) -> Case {
    case(sql, Kind::Session, Some(pin), true)
}
/// Transaction control.
const fn t(sql: &'static str) -> Case {
    case(sql, Kind::TxnControl, None, true)
}
/// BEGIN / START TRANSACTION.
const fn b(sql: &'static str, replica_ok: bool) -> Case {
    case(sql, Kind::Begin { replica_ok }, None, true)
}

use PinReason::{AdvisoryLock, Hint, HoldCursor, Listen, Serializable, TempObject};

/// A 2 KB ORM-style SELECT (SQLAlchemy/Django shape: aliased columns, joins,
/// bound parameters, IN list, ORDER BY, LIMIT/OFFSET).
const ORM_SELECT: &str = concat!(
    "SELECT orders.id AS orders_id, orders.created_at AS orders_created_at, ",
    "orders.updated_at AS orders_updated_at, orders.status AS orders_status, ",
    "orders.total_cents AS orders_total_cents, orders.currency AS orders_currency, ",
    "orders.customer_id AS orders_customer_id, orders.shipping_address_id AS orders_shipping_address_id, ",
    "customers_1.id AS customers_1_id, customers_1.email AS customers_1_email, ",
    "customers_1.first_name AS customers_1_first_name, customers_1.last_name AS customers_1_last_name, ",
    "customers_1.created_at AS customers_1_created_at, customers_1.tier AS customers_1_tier, ",
    "addresses_1.id AS addresses_1_id, addresses_1.line1 AS addresses_1_line1, ",
    "addresses_1.line2 AS addresses_1_line2, addresses_1.city AS addresses_1_city, ",
    "addresses_1.postcode AS addresses_1_postcode, addresses_1.country AS addresses_1_country, ",
    "order_items_1.id AS order_items_1_id, order_items_1.order_id AS order_items_1_order_id, ",
    "order_items_1.product_id AS order_items_1_product_id, order_items_1.quantity AS order_items_1_quantity, ",
    "order_items_1.unit_price_cents AS order_items_1_unit_price_cents, ",
    "products_1.id AS products_1_id, products_1.sku AS products_1_sku, products_1.name AS products_1_name, ",
    "products_1.description AS products_1_description, products_1.price_cents AS products_1_price_cents, ",
    "coalesce(discounts_1.percent, 0) AS discounts_1_percent, lower(customers_1.email) AS email_lower ",
    "FROM orders ",
    "JOIN customers AS customers_1 ON customers_1.id = orders.customer_id ",
    "LEFT OUTER JOIN addresses AS addresses_1 ON addresses_1.id = orders.shipping_address_id ",
    "LEFT OUTER JOIN order_items AS order_items_1 ON orders.id = order_items_1.order_id ",
    "LEFT OUTER JOIN products AS products_1 ON products_1.id = order_items_1.product_id ",
    "LEFT OUTER JOIN discounts AS discounts_1 ON discounts_1.customer_id = customers_1.id ",
    "AND discounts_1.valid_from <= now() AND (discounts_1.valid_to IS NULL OR discounts_1.valid_to > now()) ",
    "WHERE orders.status IN ($1, $2, $3) AND orders.created_at >= $4 AND orders.created_at < $5 ",
    "AND customers_1.tier = ANY($6) AND orders.total_cents BETWEEN 1000 AND 500000 ",
    "AND EXISTS (SELECT 1 FROM payments WHERE payments.order_id = orders.id AND payments.state = 'captured') ",
    "AND NOT (orders.currency = 'XXX') ",
    "ORDER BY orders.created_at DESC, orders.id DESC, order_items_1.id ASC ",
    "LIMIT 50 OFFSET 100",
);

const CASES: &[Case] = &[
    // --- Plain selects: read-only, replica.
    r("SELECT 1"),
    r("select 1"),
    r("SELECT * FROM users"),
    r("SELECT id, name FROM users WHERE id = 42"),
    r("SELECT id FROM users WHERE name = 'O''Brien'"),
    r("SELECT * FROM users WHERE id = $1"),
    r("SELECT * FROM public.users u WHERE u.active ORDER BY u.id DESC LIMIT 10 OFFSET 20"),
    r("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b"),
    r("SELECT count(*) FROM orders"),
    r("SELECT a, sum(b) FROM t GROUP BY a HAVING sum(b) > 10"),
    r("SELECT x::text, CAST(y AS integer), z::numeric(10,2) FROM t"),
    r("SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END FROM t"),
    r("SELECT now(), current_timestamp, current_date, current_user, session_user"),
    r("SELECT lower(name), upper(name), length(name) FROM users"),
    r("SELECT coalesce(a, 0), nullif(b, ''), greatest(a, b), least(a, b) FROM t"),
    r("SELECT version()"),
    r("SELECT inet_server_port(), inet_server_addr()"),
    r("SELECT current_setting('search_path')"),
    r("SELECT date_trunc('day', created_at), extract(year FROM created_at) FROM orders"),
    r("SELECT to_char(now(), 'YYYY-MM-DD')"),
    r("SELECT json_build_object('id', id), jsonb_agg(x) FROM t GROUP BY id"),
    r("SELECT string_agg(name, ',') FROM users"),
    r("SELECT * FROM generate_series(1, 10) AS g(i)"),
    r("SELECT * FROM unnest(ARRAY[1, 2, 3]) WITH ORDINALITY"),
    r("SELECT substring(name FROM 1 FOR 3), trim(name), position('a' IN name) FROM users"),
    r("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t"),
    r("SELECT data->>'k', data @> '{\"a\":1}' FROM docs"),
    r("SELECT * FROM t WHERE a = ANY($1) AND b BETWEEN 1 AND 10"),
    r("SELECT * FROM t WHERE name ILIKE '%x%'"),
    r("SELECT interval '1 day' + now()"),
    r("SELECT pg_catalog.count(*) FROM t"),
    r("SELECT 1.5e3, .5, -42"),
    r("SELECT E'a\\'b', $$dollar$$, $q$quoted$q$"),
    r("SELECT B'101', X'1F'"),
    r("SELECT x FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (42)"),
    r("VALUES (1, 'a'), (2, 'b')"),
    r("SELECT last_value FROM order_seq"),
    // --- Joins.
    r("SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id"),
    r("SELECT * FROM users LEFT JOIN orders USING (user_id)"),
    r("SELECT * FROM a FULL OUTER JOIN b ON a.id = b.id"),
    r("SELECT * FROM a NATURAL JOIN b"),
    r("SELECT * FROM a, b WHERE a.id = b.id"),
    r("SELECT * FROM a CROSS JOIN LATERAL (SELECT * FROM b WHERE b.id = a.id) s"),
    w("SELECT * FROM a JOIN b ON a.id = b.id AND random() > 0.5"),
    w("SELECT * FROM a JOIN LATERAL add_order(a.id, 1) x ON true"),
    // --- Subqueries.
    r("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)"),
    r("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)"),
    r("SELECT (SELECT max(total) FROM orders) AS m"),
    r("SELECT * FROM (SELECT id FROM users) s"),
    r("SELECT ARRAY(SELECT id FROM users)"),
    r("SELECT 1 UNION SELECT 2"),
    r("SELECT a FROM t UNION ALL SELECT a FROM u EXCEPT SELECT 3"),
    w("SELECT * FROM users WHERE id = (SELECT nextval('s'))"),
    w("SELECT * FROM (SELECT id FROM users FOR UPDATE) s"),
    w("SELECT 1 UNION SELECT nextval('s')"),
    w("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE add_order(u.id, 1) > 0)"),
    // --- CTEs.
    r("WITH x AS (SELECT 1 AS a) SELECT a FROM x"),
    r(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT n FROM r",
    ),
    r("WITH x AS MATERIALIZED (SELECT * FROM t) SELECT * FROM x"),
    r("WITH a AS (SELECT 1), b AS (SELECT 2) SELECT * FROM a, b"),
    w("WITH x AS (SELECT random() AS v) SELECT v FROM x"),
    w("WITH x AS (SELECT * FROM t FOR SHARE) SELECT * FROM x"),
    // --- Writable CTEs.
    w("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d"),
    w("WITH i AS (INSERT INTO t (a) VALUES (1) RETURNING id) SELECT id FROM i"),
    w("WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM u"),
    w("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"),
    w("WITH x AS (SELECT id FROM t) DELETE FROM u WHERE id IN (SELECT id FROM x)"),
    w("WITH a AS (WITH b AS (DELETE FROM t RETURNING id) SELECT id FROM b) SELECT * FROM a"),
    // --- Locking clauses (FOR NO KEY UPDATE / FOR KEY SHARE: sqlparser 0.64 cannot read them).
    w("SELECT * FROM t WHERE id = 1 FOR UPDATE"),
    w("SELECT * FROM t FOR SHARE"),
    u("SELECT * FROM t FOR NO KEY UPDATE"),
    u("SELECT * FROM t FOR KEY SHARE"),
    w("SELECT * FROM jobs WHERE state = 'new' LIMIT 1 FOR UPDATE SKIP LOCKED"),
    w("SELECT * FROM t FOR UPDATE OF t NOWAIT"),
    w("SELECT * FROM t FOR UPDATE OF t FOR SHARE OF u"),
    // --- SELECT INTO creates a table.
    w("SELECT * INTO new_t FROM t"),
    w("SELECT 1 INTO UNLOGGED u"),
    wp("SELECT * INTO TEMP tmp_t FROM t", TempObject),
    wp("SELECT * INTO TEMPORARY TABLE tmp_t FROM t", TempObject),
    // --- Sequence functions.
    w("SELECT nextval('order_seq')"),
    w("SELECT currval('order_seq')"),
    w("SELECT setval('order_seq', 100)"),
    w("SELECT lastval()"),
    w("SELECT NEXTVAL('s')"),
    w("SELECT pg_catalog.nextval('s')"),
    w("INSERT INTO t (id) VALUES (nextval('s'))"),
    // --- User and volatile functions (catalog: add_order volatile, price_of stable).
    w("SELECT public.add_order(1, 2)"),
    w("SELECT add_order(1, 2)"),
    r("SELECT price_of(42)"),
    r("SELECT public.price_of(42)"),
    r("SELECT \"price_of\"(42)"),
    r("SELECT PRICE_OF(42)"),
    r("SELECT * FROM t WHERE price_of(id) > 10"),
    w("SELECT * FROM add_order(1, 2)"),
    w("SELECT unknown_fn(1)"),
    w("SELECT other_schema.price_of(1)"),
    w("SELECT random()"),
    w("SELECT clock_timestamp()"),
    w("SELECT gen_random_uuid()"),
    w("SELECT pg_sleep(1)"),
    r("SELECT safe_volatile()"),
    w("SELECT report_heavy()"),
    w("SELECT txid_current()"),
    w("SELECT pg_current_wal_lsn()"),
    w("SELECT pg_is_in_recovery()"),
    w("SELECT pg_backend_pid()"),
    w("SELECT set_config('search_path', 'public', false)"),
    w("SELECT pg_notify('ch', 'x')"),
    w("SELECT count(*) FILTER (WHERE random() > 0.5) FROM t"),
    w("SELECT * FROM t ORDER BY random() LIMIT 1"),
    w("SELECT price_of(id) FROM t GROUP BY price_of(id) HAVING max(add_order(1, 1)) > 0"),
    // --- EXPLAIN: read only without ANALYZE, and only of a read.
    r("EXPLAIN SELECT * FROM t"),
    r("EXPLAIN (FORMAT JSON) SELECT * FROM t"),
    r("EXPLAIN VERBOSE SELECT 1"),
    r("EXPLAIN (ANALYZE false) SELECT 1"),
    r("EXPLAIN (ANALYZE off, COSTS off) SELECT 1"),
    w("EXPLAIN ANALYZE SELECT * FROM t"),
    w("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t"),
    w("EXPLAIN (ANALYZE true) SELECT 1"),
    w("EXPLAIN INSERT INTO t VALUES (1)"),
    w("EXPLAIN SELECT nextval('s')"),
    w("EXPLAIN SELECT * FROM t FOR UPDATE"),
    // --- CALL, DO (DO: sqlparser 0.64 cannot read it).
    w("CALL process_orders()"),
    w("CALL p(1, 'x')"),
    u("DO $$BEGIN PERFORM 1; END$$"),
    u("DO LANGUAGE plpgsql $$ BEGIN NULL; END $$"),
    // --- LOCK.
    w("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"),
    w("LOCK t"),
    w("LOCK TABLE t IN SHARE MODE NOWAIT"),
    // --- COPY: TO STDOUT of a read is a read; files, programs and FROM are not.
    r("COPY users TO STDOUT"),
    r("copy users to stdout"),
    r("COPY users (id, name) TO STDOUT WITH (FORMAT csv, HEADER true)"),
    r("COPY (SELECT * FROM users WHERE active) TO STDOUT"),
    w("COPY (SELECT nextval('s')) TO STDOUT"),
    w("COPY (DELETE FROM t RETURNING *) TO STDOUT"),
    w("COPY users TO '/tmp/users.csv'"),
    w("COPY users TO PROGRAM 'gzip > /tmp/u.gz'"),
    w("COPY users FROM STDIN"),
    w("COPY users FROM '/tmp/users.csv' WITH (FORMAT csv)"),
    // --- LISTEN / NOTIFY / UNLISTEN.
    wp("LISTEN jobs", Listen),
    wp("listen \"Jobs\"", Listen),
    w("NOTIFY jobs"),
    w("NOTIFY jobs, 'payload'"),
    w("UNLISTEN jobs"),
    w("UNLISTEN *"),
    // --- Advisory locks: session forms pin, transaction forms only write.
    wp("SELECT pg_advisory_lock(42)", AdvisoryLock),
    wp("SELECT pg_advisory_lock_shared(42)", AdvisoryLock),
    wp("SELECT pg_try_advisory_lock(42)", AdvisoryLock),
    wp("SELECT pg_try_advisory_lock_shared(1, 2)", AdvisoryLock),
    wp("SELECT PG_ADVISORY_LOCK(7)", AdvisoryLock),
    wp("SELECT pg_catalog.pg_advisory_lock(7)", AdvisoryLock),
    wp(
        "SELECT * FROM t WHERE pg_try_advisory_lock(t.id)",
        AdvisoryLock,
    ),
    w("SELECT pg_advisory_xact_lock(42)"),
    w("SELECT pg_try_advisory_xact_lock(42)"),
    w("SELECT pg_advisory_xact_lock_shared(42)"),
    w("SELECT pg_advisory_unlock(42)"),
    w("SELECT pg_advisory_unlock_all()"),
    // --- Temporary objects pin; other DDL is a plain write.
    wp("CREATE TEMP TABLE tmp (id int)", TempObject),
    wp(
        "CREATE TEMPORARY TABLE tmp (id int) ON COMMIT DROP",
        TempObject,
    ),
    wp("CREATE TEMP TABLE tmp AS SELECT * FROM t", TempObject),
    wp("CREATE TEMPORARY VIEW v AS SELECT 1", TempObject),
    wp("CREATE TEMP VIEW v AS SELECT 1", TempObject),
    wp("CREATE TEMP SEQUENCE s", TempObject),
    wp("CREATE TABLE pg_temp.tmp (id int)", TempObject),
    wp("CREATE GLOBAL TEMPORARY TABLE tmp (id int)", TempObject),
    w("CREATE TABLE t (id int)"),
    w("CREATE UNLOGGED TABLE t (id int)"),
    w("DROP TABLE IF EXISTS tmp"),
    w("CREATE INDEX ON t (a)"),
    w("ALTER TABLE t ADD COLUMN b int"),
    w("CREATE VIEW v AS SELECT 1"),
    w("CREATE MATERIALIZED VIEW mv AS SELECT 1"),
    w("TRUNCATE t"),
    w("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1$$"),
    w("CREATE EXTENSION IF NOT EXISTS pgcrypto"),
    w("COMMENT ON TABLE t IS 'x'"),
    w("LOAD 'plugin'"),
    // --- DML.
    w("INSERT INTO t (a) VALUES (1)"),
    w("INSERT INTO t (a) VALUES (1) ON CONFLICT DO NOTHING"),
    w("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a RETURNING id"),
    w("INSERT INTO t SELECT * FROM u"),
    w("UPDATE t SET a = u.a FROM u WHERE t.id = u.id"),
    w("DELETE FROM t USING u WHERE t.id = u.id"),
    w("DELETE FROM t"),
    w(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)",
    ),
    // --- Maintenance (VACUUM with options, CLUSTER, REINDEX, CHECKPOINT: unreadable).
    w("VACUUM t"),
    w("VACUUM FULL t"),
    w("VACUUM VERBOSE"),
    u("VACUUM (ANALYZE) t"),
    u("VACUUM ANALYZE t"),
    w("ANALYZE t"),
    w("ANALYZE"),
    w("REFRESH MATERIALIZED VIEW mv"),
    w("REFRESH MATERIALIZED VIEW CONCURRENTLY mv"),
    u("CLUSTER t"),
    u("REINDEX TABLE t"),
    u("CHECKPOINT"),
    // --- Permissions and roles.
    w("GRANT SELECT ON t TO bob"),
    w("REVOKE ALL ON t FROM bob"),
    w("CREATE ROLE bob LOGIN"),
    w("ALTER ROLE bob SET work_mem = '1MB'"),
    w("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob"),
    // --- SQL-level prepared statements and cursors.
    w("PREPARE p AS SELECT 1"),
    w("PREPARE p (int) AS SELECT $1"),
    w("EXECUTE p"),
    w("EXECUTE p(1)"),
    w("DEALLOCATE p"),
    w("DEALLOCATE ALL"),
    w("DEALLOCATE PREPARE ALL"),
    w("DECLARE c CURSOR FOR SELECT 1"),
    w("DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1"),
    wp("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", HoldCursor),
    w("FETCH 10 FROM c"),
    w("FETCH NEXT FROM c"),
    w("CLOSE c"),
    u("MOVE NEXT IN c"),
    // --- Session SET / RESET / DISCARD.
    s("SET search_path TO app, public"),
    s("SET statement_timeout = 5000"),
    s("SET statement_timeout = '5s'"),
    s("SET SESSION work_mem = '64MB'"),
    s("SET application_name = 'api'"),
    s("set client_encoding to 'UTF8'"),
    s("SET TIME ZONE 'UTC'"),
    s("SET TIME ZONE LOCAL"),
    s("SET NAMES 'UTF8'"),
    s("SET ROLE admin"),
    s("SET SESSION AUTHORIZATION bob"),
    s("SET default_transaction_read_only = on"),
    s("RESET search_path"),
    s("RESET ALL"),
    s("RESET ROLE"),
    s("DISCARD ALL"),
    s("DISCARD PLANS"),
    s("DISCARD SEQUENCES"),
    s("DISCARD TEMP"),
    // --- Serializable as the session default pins (replicas refuse it).
    sp(
        "SET default_transaction_isolation = serializable",
        Serializable,
    ),
    sp(
        "SET default_transaction_isolation = 'serializable'",
        Serializable,
    ),
    sp(
        "SET default_transaction_isolation TO 'SERIALIZABLE'",
        Serializable,
    ),
    sp(
        "set DEFAULT_TRANSACTION_ISOLATION = \"serializable\"",
        Serializable,
    ),
    sp(
        "SET SESSION default_transaction_isolation = Serializable",
        Serializable,
    ),
    sp(
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        Serializable,
    ),
    s("SET default_transaction_isolation = 'repeatable read'"),
    s("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
    // --- pgsplit.route: primary pins by hint; all stay Session.
    sp("SET pgsplit.route = primary", Hint),
    sp("SET pgsplit.route TO 'PRIMARY'", Hint),
    s("SET pgsplit.route = 'replica'"),
    s("SET pgsplit.route TO auto"),
    s("SET pgsplit.route TO DEFAULT"),
    s("RESET pgsplit.route"),
    // --- Transaction-scoped settings.
    t("SET LOCAL statement_timeout = 1000"),
    t("SET LOCAL search_path TO app"),
    t("SET LOCAL ROLE admin"),
    t("SET LOCAL TIME ZONE 'UTC'"),
    t("SET LOCAL default_transaction_isolation = serializable"),
    t("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
    t("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
    t("SET TRANSACTION READ ONLY"),
    t("SET transaction_read_only = on"),
    // --- SHOW goes to the primary connection.
    w("SHOW search_path"),
    w("SHOW ALL"),
    w("show transaction isolation level"),
    // --- Transactions.
    b("BEGIN", false),
    b("begin", false),
    b("BEGIN WORK", false),
    b("BEGIN TRANSACTION", false),
    b("START TRANSACTION", false),
    b("BEGIN READ WRITE", false),
    b("BEGIN ISOLATION LEVEL SERIALIZABLE", false),
    b("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", false),
    b("START TRANSACTION READ ONLY, READ WRITE", false),
    b("BEGIN ISOLATION LEVEL REPEATABLE READ", false),
    b("BEGIN READ ONLY", true),
    b("BEGIN TRANSACTION READ ONLY", true),
    b("START TRANSACTION READ ONLY", true),
    b("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", true),
    b(
        "START TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY",
        true,
    ),
    u("BEGIN READ ONLY, DEFERRABLE"),
    u("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"),
    t("COMMIT"),
    t("COMMIT WORK"),
    t("COMMIT AND CHAIN"),
    t("END"),
    t("END TRANSACTION"),
    t("ROLLBACK"),
    t("ROLLBACK WORK"),
    t("ABORT"),
    t("SAVEPOINT sp1"),
    t("RELEASE SAVEPOINT sp1"),
    t("RELEASE sp1"),
    t("ROLLBACK TO SAVEPOINT sp1"),
    t("ROLLBACK TO sp1"),
    // Two-phase commit: unreadable for sqlparser 0.64, hence Write on the primary
    // (a hot standby cannot prepare transactions anyway).
    u("PREPARE TRANSACTION 'tx1'"),
    u("COMMIT PREPARED 'tx1'"),
    u("ROLLBACK PREPARED 'tx1'"),
    // --- Comments and odd casing.
    r("/* app=api */ SELECT 1"),
    r("-- leading\nSELECT 1"),
    r("SELECT /* inline */ 1 -- trailing"),
    r("sElEcT * fRoM UsErS"),
    r("SELECT 1 /* nested /* comment */ still */"),
    r("\n\t  SELECT\n1\n"),
    r("/* DELETE FROM t */ SELECT 1"),
    r("SELECT '-- not a comment', 'DELETE FROM t'"),
    r("SELECT \"Weird Name\".\"Col\" FROM \"Weird Name\""),
    w("InSeRt InTo t VaLuEs (1)"),
    // --- Multi-statement strings: all reads stay reads; any other mix is a write.
    r("SELECT 1; SELECT 2"),
    r("SELECT 1; SELECT 2;"),
    r("SELECT 1; -- DELETE FROM t"),
    w("SELECT 1; INSERT INTO t VALUES (1)"),
    w("BEGIN; SELECT 1; COMMIT"),
    w("SET a = 1; SET b = 2"),
    wp("SELECT 1; LISTEN ch", Listen),
    w("SELECT 1; SELECT nextval('s')"),
    wp(
        "CREATE TEMP TABLE x (a int); INSERT INTO x VALUES (1)",
        TempObject,
    ),
    wp("SET pgsplit.route = primary; SELECT 1", Hint),
    // --- Hints (the kind ignores them; see `hints` below).
    r("/* pgsplit:replica */ SELECT 1"),
    r("/* pgsplit:primary */ SELECT 1"),
    w("/* pgsplit:replica */ INSERT INTO t VALUES (1)"),
    r("-- pgsplit:primary\nSELECT 1"),
    // --- Syntax sqlparser cannot read (or that is not SQL): the primary.
    u("TABLE users"),
    u("SELECT * FROM ROWS FROM (generate_series(1, 3))"),
    u("this is not sql"),
    u("SELECT 'unterminated"),
    u("SELECT (1"),
    u("SELEC 1"),
    u("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y"),
    u("SECURITY LABEL ON TABLE t IS 'x'"),
    u("ALTER SYSTEM SET work_mem = '1MB'"),
    // --- Driver and ORM introspection.
    r(
        "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'",
    ),
    r("SELECT pg_catalog.version()"),
    r("SELECT current_schema()"),
    r("SELECT c.relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid)"),
    // --- pgbench (TPC-B-like script and -S).
    r("SELECT abalance FROM pgbench_accounts WHERE aid = 42;"),
    r("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    w("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 42;"),
    w("UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 3;"),
    w("UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;"),
    w(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 42, -1234, CURRENT_TIMESTAMP);",
    ),
    b("BEGIN;", false),
    t("END;"),
    r("select count(*) from pgbench_branches"),
    w("truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers"),
    u("vacuum analyze pgbench_branches"),
    // --- A 2 KB ORM-style SELECT.
    r(ORM_SELECT),
];

/// The catalog the table is written against: a slice of pg_proc plus the user
/// functions `public.add_order` (volatile) and `public.price_of` (stable), one
/// configured safe volatile function and one forced to the primary.
fn catalog() -> FunctionCatalog {
    let read_only = [
        "count",
        "sum",
        "max",
        "min",
        "avg",
        "lower",
        "upper",
        "length",
        "now",
        "version",
        "inet_server_port",
        "inet_server_addr",
        "current_setting",
        "date_trunc",
        "date_part",
        "to_char",
        "json_build_object",
        "jsonb_agg",
        "string_agg",
        "generate_series",
        "unnest",
        "substring",
        "btrim",
        "position",
        "row_number",
        "pg_table_is_visible",
        "current_schema",
        "txid_current",
        "pg_backend_pid",
        "pg_current_wal_lsn",
    ];
    let volatile = [
        "random",
        "clock_timestamp",
        "gen_random_uuid",
        "pg_sleep",
        "nextval",
        "currval",
        "setval",
        "lastval",
        "pg_is_in_recovery",
        "set_config",
        "pg_notify",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_try_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_all",
    ];
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    rows.extend(
        read_only
            .iter()
            .map(|n| ("pg_catalog".into(), (*n).into(), true)),
    );
    rows.extend(
        volatile
            .iter()
            .map(|n| ("pg_catalog".into(), (*n).into(), false)),
    );
    rows.push(("public".into(), "add_order".into(), false));
    rows.push(("public".into(), "price_of".into(), true));
    rows.push(("public".into(), "safe_volatile".into(), false));
    rows.push(("public".into(), "report_heavy".into(), true));
    FunctionCatalog::from_rows(
        rows,
        &["public.safe_volatile".to_owned()],
        &["report_heavy".to_owned()],
    )
}

fn is_replica_candidate(kind: Kind) -> bool {
    matches!(kind, Kind::Read | Kind::Begin { replica_ok: true })
}

#[test]
fn routing_table() {
    let catalog = catalog();
    let mut failures = Vec::new();
    for case in CASES {
        let got = classify(case.sql, &catalog);
        if (got.kind, got.pin, got.parsed) != (case.kind, case.pin, case.parsed) {
            failures.push(format!(
                "{:?}\n    expected ({:?}, {:?}, parsed={})\n    got      ({:?}, {:?}, parsed={})",
                case.sql, case.kind, case.pin, case.parsed, got.kind, got.pin, got.parsed
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );

    let replica = CASES
        .iter()
        .filter(|c| is_replica_candidate(c.kind))
        .count();
    let primary = CASES.len() - replica;
    let unparsed: Vec<&str> = CASES.iter().filter(|c| !c.parsed).map(|c| c.sql).collect();
    eprintln!(
        "{} statements: {replica} may go to a replica, {primary} go to the primary",
        CASES.len()
    );
    eprintln!("{} unparsed (primary):", unparsed.len());
    for sql in &unparsed {
        eprintln!("    {sql}");
    }
    // Exact counts, so that any change of decision shows up here.
    assert_eq!(CASES.len(), EXPECTED_TOTAL);
    assert_eq!(replica, EXPECTED_REPLICA);
    assert_eq!(unparsed.len(), EXPECTED_UNPARSED);
}

const EXPECTED_TOTAL: usize = 343;
const EXPECTED_REPLICA: usize = 97;
const EXPECTED_UNPARSED: usize = 25;

/// Rewrites every literal's value (digits of numbers, letters and digits inside
/// quoted strings and dollar quotes) and nothing else: comments, identifiers, quoted
/// identifiers and `$n` parameters stay as they are.
fn change_literals(sql: &str) -> String {
    fn bump(c: char) -> char {
        match c {
            '0'..='8' => char::from(c as u8 + 1),
            '9' => '1',
            'a'..='y' | 'A'..='Y' => char::from(c as u8 + 1),
            'z' => 'a',
            'Z' => 'A',
            _ => c,
        }
    }
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            while let Some(&c) = chars.get(i) {
                out.push(c);
                i += 1;
                if c == '\n' {
                    break;
                }
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while let Some(&c) = chars.get(i) {
                let n = chars.get(i + 1).copied();
                out.push(c);
                i += 1;
                if c == '/' && n == Some('*') {
                    depth += 1;
                    out.push('*');
                    i += 1;
                } else if c == '*' && n == Some('/') {
                    depth -= 1;
                    out.push('/');
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
        } else if c == '"' {
            out.push(c);
            i += 1;
            while let Some(&c) = chars.get(i) {
                out.push(c);
                i += 1;
                if c == '"' {
                    break;
                }
            }
        } else if c == '\'' {
            // E'' strings: keep a backslash and the character it escapes.
            let escapes = i > 0 && matches!(chars.get(i - 1), Some('E' | 'e'));
            out.push(c);
            i += 1;
            while let Some(&c) = chars.get(i) {
                i += 1;
                if escapes && c == '\\' {
                    out.push(c);
                    if let Some(&e) = chars.get(i) {
                        out.push(e);
                        i += 1;
                    }
                } else if c == '\'' && chars.get(i) == Some(&'\'') {
                    out.push_str("''");
                    i += 1;
                } else if c == '\'' {
                    out.push(c);
                    break;
                } else {
                    out.push(bump(c));
                }
            }
        } else if c == '$' && !next.is_some_and(|n| n.is_ascii_digit()) {
            // A dollar quote: copy the tag, change the body, copy the closing tag.
            let tag_end = (i + 1..chars.len()).find(|&j| chars.get(j) == Some(&'$'));
            let Some(tag_end) = tag_end else {
                out.push(c);
                i += 1;
                continue;
            };
            let tag: String = chars.get(i..=tag_end).unwrap_or_default().iter().collect();
            out.push_str(&tag);
            i = tag_end + 1;
            let rest: String = chars.get(i..).unwrap_or_default().iter().collect();
            let body_len = rest
                .find(&tag)
                .map_or(rest.len(), |p| rest[..p].chars().count());
            for &c in chars.get(i..i + body_len).unwrap_or_default() {
                out.push(bump(c));
            }
            i += body_len;
            if i < chars.len() {
                out.push_str(&tag);
                i += tag.chars().count();
            }
        } else if ident(c) && !c.is_ascii_digit() {
            while let Some(&c) = chars.get(i) {
                if !ident(c) {
                    break;
                }
                out.push(c);
                i += 1;
            }
        } else if c.is_ascii_digit() {
            out.push(bump(c));
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[test]
fn change_literals_changes_only_literals() {
    assert_eq!(
        change_literals("SELECT t1.a, 'ab''c', E'x\\'y', $q$az$q$, $1 FROM t2 -- 5\nWHERE b = 19"),
        "SELECT t1.a, 'bc''d', E'y\\'z', $q$ba$q$, $1 FROM t2 -- 5\nWHERE b = 21"
    );
}

/// Texts that differ only in literal values share a key, and when the key is
/// cacheable they classify the same: the invariant the cache relies on.
#[test]
fn literal_values_do_not_change_the_key_or_a_cacheable_class() {
    let catalog = catalog();
    let mut changed = 0;
    for case in CASES {
        let other = change_literals(case.sql);
        if other != case.sql {
            changed += 1;
        }
        let (a, b) = (mask(case.sql), mask(&other));
        assert_eq!(a.key, b.key, "{:?} vs {:?}", case.sql, other);
        assert_eq!(a.cacheable, b.cacheable, "{:?}", case.sql);
        if a.cacheable {
            assert_eq!(
                classify(case.sql, &catalog),
                classify(&other, &catalog),
                "{:?} vs {:?}",
                case.sql,
                other
            );
        }
    }
    assert!(
        changed > 150,
        "only {changed} statements had literals to change"
    );
}

/// The cached classifier answers exactly what the uncached function does: on a miss,
/// on a hit, and for a text of the same shape with other literals.
#[test]
fn cached_answers_equal_uncached_ones() {
    let classifier = Classifier::new(catalog(), 10_000);
    let catalog = classifier.catalog();
    for round in 0..2 {
        for case in CASES {
            let expected: Class = classify(case.sql, &catalog);
            assert_eq!(
                classifier.classify(case.sql),
                expected,
                "round {round}: {:?}",
                case.sql
            );
            let other = change_literals(case.sql);
            assert_eq!(
                classifier.classify(&other),
                classify(&other, &catalog),
                "round {round}: {other:?}"
            );
        }
    }
    assert!(classifier.cached() > 100);
}

#[test]
fn hints_are_per_call_not_cached() {
    let classifier = Classifier::new(catalog(), 100);
    let plain = classifier.classify("SELECT * FROM users WHERE id = 1");
    assert_eq!(plain.hint, None);
    let hinted = classifier.classify("/* pgsplit:replica */ SELECT * FROM users WHERE id = 2");
    assert_eq!(hinted.hint, Some(RouteMode::Replica));
    assert_eq!(hinted.kind, Kind::Read);
    let primary = classifier.classify("-- pgsplit:primary\nSELECT * FROM users WHERE id = 3");
    assert_eq!(primary.hint, Some(RouteMode::Primary));
    assert_eq!(
        classifier.classify("SELECT * FROM users WHERE id = 4").hint,
        None
    );
    assert_eq!(classifier.cached(), 1, "one shape, whatever the hints");
}
