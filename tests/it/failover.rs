//! Servers dying and changing roles under pgsplit (DESIGN.md section 3, "Fallback",
//! "Failover", "Retries"): a replica killed during a read load, the primary stopped
//! and the replica promoted, and two servers claiming to be primary. Each test kills
//! or promotes servers, so each starts its own cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::own::{blocking, health_of, own_cluster, poll_until};
use crate::common::{Proxy, connect, http_get, log_text, server_port};
use pgsplit::backend::health::{PrimaryState, Role};
use pgsplit_cluster::Node;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn primary_state(proxy: &Proxy) -> PrimaryState {
    proxy.ctx.health.get().primary
}

/// The SQLSTATE and message of a failed statement.
fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

/// An error as the client saw it: SQLSTATE and message when the server sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    let (code, msg) = db_error(e);
    format!("{code} {msg}").trim().to_owned()
}

// ----- replica killed under load -----

const LOAD_SQL: &str = "SELECT inet_server_port(), count(*) FROM load_t";

/// One answered (or failed) read of the load.
struct Sample {
    /// When the answer (or error) came.
    at: Instant,
    /// How long the read took.
    took: Duration,
    port: Result<u16, String>,
}

/// Notices the load's clients received (pgsplit relays the server's).
type Notices = Arc<Mutex<Vec<String>>>;

/// Like `common::connect`, but keeps the notices the session receives.
async fn connect_keeping_notices(url: &str, notices: &Notices) -> Result<Client, String> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| describe(&e))?;
    let notices = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                notices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "{} {}: {}",
                        n.severity(),
                        n.code().code(),
                        n.message()
                    ));
            }
        }
    });
    Ok(client)
}

/// One client of the load, on an open session: extended protocol (tokio-postgres
/// `query`) or simple Query messages. Reconnects if pgsplit ever closes the
/// session, counting that as an error too.
async fn read_loop(
    client: Client,
    url: String,
    extended: bool,
    until: Instant,
    notices: Notices,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut client = Some(client);
    while Instant::now() < until {
        let Some(cl) = client.as_ref().filter(|c| !c.is_closed()) else {
            match connect_keeping_notices(&url, &notices).await {
                Ok(cl) => client = Some(cl),
                Err(e) => {
                    samples.push(Sample {
                        at: Instant::now(),
                        took: Duration::ZERO,
                        port: Err(format!("reconnect: {e}")),
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let sent = Instant::now();
        let port = if extended {
            cl.query_one(LOAD_SQL, &[])
                .await
                .map(|row| row.get::<_, i32>(0))
                .map_err(|e| describe(&e))
        } else {
            match cl.simple_query(LOAD_SQL).await {
                Ok(msgs) => msgs
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
                        _ => None,
                    })
                    .ok_or_else(|| "no row".to_owned()),
                Err(e) => Err(describe(&e)),
            }
        };
        samples.push(Sample {
            at: Instant::now(),
            took: sent.elapsed(),
            port: port.map(|p| u16::try_from(p).unwrap_or(0)),
        });
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_killed_during_read_load_causes_no_client_errors() {
    common::logs();
    let c = own_cluster().await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    connect(&c.url(Node::Primary))
        .await
        .batch_execute(
            "CREATE TABLE load_t (id int primary key);
             INSERT INTO load_t SELECT generate_series(1, 1000)",
        )
        .await
        .unwrap();
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    let proxy = Proxy::start(
        &c,
        "[routing]\nhealth_interval = \"100ms\"\nmax_lag = \"500ms\"\n",
    )
    .await;
    let url = proxy.url(&c);
    // Sessions open and reading from the replica before the clock starts.
    let notices = Notices::default();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let client = connect_keeping_notices(&url, &notices).await.unwrap();
        assert_eq!(server_port(&client).await, replica);
        sessions.push(client);
    }

    let start = Instant::now();
    let until = start + Duration::from_secs(6);
    let clients: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(read_loop(
                client,
                url.clone(),
                i % 2 == 0,
                until,
                notices.clone(),
            ))
        })
        .collect();

    tokio::time::sleep_until((start + Duration::from_millis(1500)).into()).await;
    let kill_at = Instant::now();
    blocking(&c, |c| c.stop(Node::Replica, true)).await.unwrap();
    let killed = kill_at.elapsed();
    let noticed = poll_until(Duration::from_secs(5), || async {
        health_of(&proxy, replica).role == Role::Down
    })
    .await
    .map(|_| kill_at.elapsed());

    tokio::time::sleep_until((start + Duration::from_millis(3000)).into()).await;
    let restart_called_at = Instant::now();
    blocking(&c, |c| c.start_node(Node::Replica)).await.unwrap();
    let restarted_at = Instant::now();

    let mut samples = Vec::new();
    for t in clients {
        samples.extend(t.await.expect("load client panicked"));
    }
    samples.sort_by_key(|s| s.at);

    let errors: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.port.as_ref().err())
        .collect();
    let before: Vec<u16> = samples
        .iter()
        .filter(|s| s.at < kill_at)
        .filter_map(|s| s.port.clone().ok())
        .collect();
    let first_primary = samples
        .iter()
        .find(|s| s.at >= kill_at && s.port == Ok(primary))
        .map(|s| s.at - kill_at);
    // Reads *sent* once the replica was gone (an answer sent just before the
    // kill may still be on its way when pg_ctl returns, and a loaded runtime
    // may note its arrival late).
    let between = samples
        .iter()
        .filter(|s| s.at - s.took >= kill_at + killed && s.at < restart_called_at)
        .filter_map(|s| s.port.clone().ok());
    let on_replica_while_down = between.filter(|p| *p == replica).count();
    let slowest = samples
        .iter()
        .max_by_key(|s| s.took)
        .map(|s| (s.took, s.at.saturating_duration_since(kill_at)))
        .unwrap_or_default();
    let back_in_load = samples
        .iter()
        .find(|s| s.at >= restarted_at && s.port == Ok(replica))
        .map(|s| s.at - restarted_at);
    eprintln!(
        "replica kill: {} reads, {} errors; pg_ctl stop -m immediate took {killed:?}; first \
         read answered by the primary {first_primary:?} after the kill; monitor marked the \
         replica down after {noticed:?}; reads back on the replica {back_in_load:?} after \
         the restart returned; slowest read {:?} (answered {:?} after the kill)",
        samples.len(),
        errors.len(),
        slowest.0,
        slowest.1,
    );

    assert!(
        before.len() > 20 && before.iter().all(|p| *p == replica),
        "before the kill, reads should all go to the replica: {} reads, ports {:?}",
        before.len(),
        before.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        first_primary.is_some(),
        "no read was answered by the primary after the kill"
    );
    assert!(
        noticed.is_some(),
        "the monitor never marked the replica down"
    );
    assert_eq!(
        on_replica_while_down, 0,
        "reads answered by the replica while it was stopped"
    );
    // Reads return to the restarted replica (within the load window or just after).
    let client = connect(&url).await;
    let back = poll_until(Duration::from_secs(15), || async {
        server_port(&client).await == replica
    })
    .await;
    assert!(
        back.is_some(),
        "reads never returned to the restarted replica: {:?}",
        health_of(&proxy, replica)
    );
    let back_after = back_in_load.unwrap_or_else(|| restarted_at.elapsed());
    eprintln!("replica kill: reads back on the replica {back_after:?} after its restart returned");
    assert!(
        back_after < Duration::from_secs(15),
        "reads took {back_after:?} to return to the restarted replica"
    );
    // Last, so that the checks above run whatever happened to the clients. No
    // read may stall either: a client with a statement timeout would fail.
    assert!(
        slowest.0 < Duration::from_millis(4500),
        "a read took {:?} (answered {:?} after the kill)\npgsplit log:\n{}",
        slowest.0,
        slowest.1,
        log_text()
    );
    assert!(
        errors.is_empty(),
        "{} client errors during the replica kill, first ones: {:?}\nnotices the clients \
         got: {:?}\npgsplit log:\n{}",
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>(),
        notices.lock().unwrap_or_else(|p| p.into_inner()),
        log_text()
    );
    proxy.stop().await;
}

/// A read routed to a replica that died a moment ago (the monitor has not noticed
/// yet) finds the server refusing connections: it must fall back to the primary
/// at once, not wait for the pool's checkout timeout. A long health interval makes
/// the window wide enough to hit deterministically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_routed_to_a_just_killed_replica_falls_back_without_stalling() {
    common::logs();
    let c = own_cluster().await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    let proxy = Proxy::start(&c, "[routing]\nhealth_interval = \"2s\"\n").await;
    let url = proxy.url(&c);

    // Right after a probe: the next one is about 2s away.
    let last = health_of(&proxy, replica).last_ok;
    let probed = poll_until(Duration::from_secs(5), || async {
        health_of(&proxy, replica).last_ok != last
    })
    .await;
    assert!(probed.is_some(), "no health probe within 5s");
    blocking(&c, |c| c.stop(Node::Replica, true)).await.unwrap();
    let h = health_of(&proxy, replica);
    // A session that holds no replica connection yet: its read needs a new one.
    let client = connect(&url).await;
    let t = Instant::now();
    let port = server_port(&client).await;
    let took = t.elapsed();
    eprintln!(
        "just-killed replica: read answered by port {port} after {took:?} (replica was \
         usable in pgsplit's view: {})",
        h.usable
    );
    assert!(
        h.usable,
        "the monitor noticed the kill too early for this test: {h:?}"
    );
    assert_eq!(port, primary);
    assert!(
        // Generous for loaded CI machines; what it guards against is waiting
        // out the 5 s checkout timeout on a dead server.
        took < Duration::from_secs(4),
        "the read waited {took:?} for a connection to the dead replica before falling back"
    );
    proxy.stop().await;
}

// ----- promotion -----

const FAILOVER_CONFIG: &str =
    "[routing]\nhealth_interval = \"100ms\"\nmax_lag = \"500ms\"\nprimary_wait = \"1s\"\n";

/// Retries `INSERT ... RETURNING inet_server_port()` until it succeeds or
/// `deadline` passes; returns the answering port and the number of attempts.
async fn write_until(client: &Client, id: i32, deadline: Duration) -> (Option<u16>, u32, String) {
    let start = Instant::now();
    let mut attempts = 0;
    let mut last = String::new();
    while start.elapsed() < deadline {
        attempts += 1;
        // Idempotent: a retried attempt that did write before failing changes nothing.
        match client
            .query_one(
                "INSERT INTO acked VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id \
                 RETURNING inet_server_port()",
                &[&id],
            )
            .await
        {
            Ok(row) => {
                let port: i32 = row.get(0);
                return (Some(u16::try_from(port).unwrap_or(0)), attempts, last);
            }
            Err(e) => {
                let (code, msg) = db_error(&e);
                last = format!("{code} {msg}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (None, attempts, last)
}

/// An own cluster with table `acked` (caught up on the replica), pgsplit in
/// front of it with `FAILOVER_CONFIG`, and a client: (cluster, primary port,
/// replica port, proxy, client).
async fn failover_setup() -> (
    std::sync::Arc<pgsplit_cluster::Cluster>,
    u16,
    u16,
    Proxy,
    Client,
) {
    let c = own_cluster().await;
    let (primary, replica) = (c.port(Node::Primary), c.port(Node::Replica));
    connect(&c.url(Node::Primary))
        .await
        .batch_execute("CREATE TABLE acked (id int primary key)")
        .await
        .unwrap();
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();
    let proxy = Proxy::start(&c, FAILOVER_CONFIG).await;
    let w = connect(&proxy.url(&c)).await;
    (c, primary, replica, proxy, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_moves_writes_to_the_promoted_replica_without_losing_acknowledged_writes() {
    common::logs();
    let (c, primary, replica, proxy, w) = failover_setup().await;

    let mut acked = Vec::new();
    for id in 1..=200 {
        w.execute("INSERT INTO acked VALUES ($1)", &[&id])
            .await
            .unwrap_or_else(|e| panic!("write {id} before the failover: {e}"));
        acked.push(id);
    }
    // Synchronous replication is not configured: an acknowledged write is only
    // safe across a failover once the replica has it.
    blocking(&c, |c| c.wait_caught_up()).await.unwrap();

    blocking(&c, |c| c.stop(Node::Primary, true)).await.unwrap();
    let none = poll_until(Duration::from_secs(5), || async {
        primary_state(&proxy) == PrimaryState::None
    })
    .await;
    assert!(
        none.is_some(),
        "primary stopped, nothing promoted: pgsplit should know there is no primary: {:?}",
        proxy.ctx.health.get()
    );

    // No primary: reads still come from the replica, writes wait primary_wait and
    // then fail with 57P03.
    let (n, port): (i64, i32) = {
        let row = w
            .query_one("SELECT count(*), inet_server_port() FROM acked", &[])
            .await
            .unwrap_or_else(|e| panic!("read while there is no primary: {e}"));
        (row.get(0), row.get(1))
    };
    assert_eq!((n, u16::try_from(port).unwrap_or(0)), (200, replica));
    let t = Instant::now();
    let err = w
        .execute("INSERT INTO acked VALUES (-1)", &[])
        .await
        .expect_err("a write with no primary must fail");
    let waited = t.elapsed();
    let (code, msg) = db_error(&err);
    eprintln!("no primary: write failed after {waited:?} with {code}: {msg}");
    assert_eq!(code, "57P03", "{msg}");
    // What pgsplit refused while there was no primary (checked at the end).
    let refusals: Vec<String> = log_text()
        .lines()
        .filter(|l| l.contains("57P03"))
        .map(str::to_owned)
        .collect();

    let promote_at = Instant::now();
    blocking(&c, |c| c.promote(Node::Replica)).await.unwrap();
    let promoted = promote_at.elapsed();
    let (port, attempts, last) = write_until(&w, 1000, Duration::from_secs(15)).await;
    let first_write = promote_at.elapsed();
    eprintln!(
        "promotion: pg_ctl promote returned after {promoted:?}; first successful write \
         through pgsplit {first_write:?} after promote started ({:?} after it returned), \
         {attempts} attempt(s)",
        first_write - promoted
    );
    assert_eq!(
        port,
        Some(replica),
        "no write succeeded on the promoted server within 15s ({attempts} attempts, last \
         error: {last}); health {:?}",
        proxy.ctx.health.get()
    );
    assert!(
        first_write < promoted + Duration::from_secs(15),
        "first write only {first_write:?} after promote"
    );
    let new_primary = health_of(&proxy, replica);
    assert_eq!(new_primary.role, Role::Primary);
    assert_eq!(primary_state(&proxy), PrimaryState::Known(new_primary.id));
    assert_eq!(health_of(&proxy, primary).role, Role::Down);

    // A new session writes too, and every acknowledged write survived.
    let fresh = connect(&proxy.url(&c)).await;
    fresh
        .execute("INSERT INTO acked VALUES (1001)", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = fresh
        .query(
            "SELECT id FROM acked WHERE id BETWEEN 1 AND 200 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, acked, "acknowledged writes lost in the failover");
    let on_server = blocking(&c, |c| {
        c.psql(
            Node::Replica,
            pgsplit_cluster::DATABASE,
            "SELECT count(*) FROM acked WHERE id BETWEEN 1 AND 200 OR id IN (1000, 1001)",
        )
    })
    .await
    .unwrap();
    assert_eq!(on_server, "202");
    // The write waited for a primary (at least primary_wait) and then failed;
    // the upper bound only catches a hang (timings are not asserted tightly:
    // CI machines are shared and noisy).
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "a write with no primary should fail after about primary_wait (1s), took {waited:?}; \
         pgsplit refused:\n{}",
        refusals.join("\n")
    );
    proxy.stop().await;
}

// ----- fencing -----

/// After a promotion, the old primary is started again as it was: it was not
/// rebuilt as a standby, so it comes back as a second primary (on its old
/// timeline). pgsplit must refuse writes rather than pick one, say so in its log
/// and turn /readyz 503; once the old primary is gone again, writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_fence_writes_until_one_is_gone() {
    common::logs();
    let (c, primary, replica, proxy, w) = failover_setup().await;
    assert_eq!(
        write_until(&w, 1, Duration::from_secs(5)).await.0,
        Some(primary)
    );

    blocking(&c, |c| c.stop(Node::Primary, true)).await.unwrap();
    blocking(&c, |c| c.promote(Node::Replica)).await.unwrap();
    let (port, _, last) = write_until(&w, 2, Duration::from_secs(15)).await;
    assert_eq!(port, Some(replica), "no write after promotion: {last}");

    blocking(&c, |c| c.start_node(Node::Primary)).await.unwrap();
    let in_recovery = blocking(&c, |c| {
        c.psql(Node::Primary, "postgres", "SELECT pg_is_in_recovery()")
    })
    .await
    .unwrap();
    assert_eq!(
        in_recovery, "f",
        "the old primary should come back as a primary"
    );
    let fenced = poll_until(Duration::from_secs(5), || async {
        primary_state(&proxy) == PrimaryState::Fenced
    })
    .await;
    assert!(
        fenced.is_some(),
        "two servers claim to be primary but pgsplit does not fence: {:?}",
        proxy.ctx.health.get()
    );
    eprintln!("fencing: pgsplit fenced {fenced:?} after the old primary came back");
    // Checked at the end, so that the other checks run whatever it says.
    let readyz_fenced = http_get(proxy.admin, "/readyz").await;

    let t = Instant::now();
    let err = w
        .execute("INSERT INTO acked VALUES (3)", &[])
        .await
        .expect_err("a write while two servers claim to be primary must fail");
    let waited = t.elapsed();
    let (code, msg) = db_error(&err);
    eprintln!("fencing: write refused after {waited:?} with {code}: {msg}");
    assert_eq!(code, "57P03", "{msg}");
    assert!(
        msg.contains("more than one server claims to be primary"),
        "the error should say why writes are refused: {msg}"
    );
    let logged = poll_until(Duration::from_secs(2), || async {
        log_text().contains("claim to be primary: writes are refused (fenced)")
    })
    .await;
    assert!(
        logged.is_some(),
        "no fencing line in pgsplit's log:\n{}",
        log_text()
    );
    // Neither server got the refused write.
    for node in [Node::Primary, Node::Replica] {
        let n = blocking(&c, move |c| {
            c.psql(
                node,
                pgsplit_cluster::DATABASE,
                "SELECT count(*) FROM acked WHERE id = 3",
            )
        })
        .await
        .unwrap();
        assert_eq!(n, "0", "the refused write reached {node}");
    }

    // The old primary goes away again: the promoted server takes writes.
    blocking(&c, |c| c.stop(Node::Primary, true)).await.unwrap();
    let (port, _, last) = write_until(&w, 4, Duration::from_secs(15)).await;
    assert_eq!(
        port,
        Some(replica),
        "writes did not resume after unfencing: {last}"
    );
    let readyz_after = http_get(proxy.admin, "/readyz").await;

    let status = |r: &std::io::Result<String>| match r {
        Ok(text) => text.lines().next().unwrap_or_default().to_owned(),
        Err(e) => format!("request failed: {e}"),
    };
    assert!(
        status(&readyz_fenced).contains(" 503"),
        "/readyz while fenced: {}",
        status(&readyz_fenced)
    );
    assert!(
        status(&readyz_after).contains(" 200"),
        "/readyz after the fence was resolved: {}",
        status(&readyz_after)
    );
    proxy.stop().await;
}
