//! The health state machine (`HealthState::observe`) on a paused tokio clock:
//! who is primary, who may take reads, and how far behind each replica is, in
//! bytes and in time (DESIGN.md section 3, Consistency).
//!
//! Every test starts with time paused. Time moves only through
//! `tokio::time::advance`, and each observation is made at
//! `tokio::time::Instant::now()`, so the instants are exact and nothing waits.

use std::time::Duration;

use tokio::time::{Instant, advance};

use pgsplit::backend::health::{
    GOOD_PROBES_TO_USE, HealthState, LagLimits, PrimaryState, Probe, Role, ServerHealth,
};
use pgsplit::route::class::{Class, Kind, RouteMode};
use pgsplit::route::router::{Reason, ReplicaStatus, SessionView, Target, route};
use pgsplit::server::{Lsn, ServerId};

const P: ServerId = ServerId(0);
const R: ServerId = ServerId(1);

fn state(max_lag: Duration, max_lag_bytes: u64) -> HealthState {
    HealthState::new(
        LagLimits {
            max_lag,
            max_lag_bytes,
        },
        &[(P, "primary".to_string()), (R, "replica".to_string())],
    )
}

/// Limits loose enough in bytes that only time lag matters.
fn time_only(max_lag_secs: u64) -> HealthState {
    state(Duration::from_secs(max_lag_secs), u64::MAX)
}

fn primary(lsn: u64) -> Option<Probe> {
    Some(Probe {
        in_recovery: false,
        lsn: Some(Lsn(lsn)),
    })
}

fn replica(lsn: u64) -> Option<Probe> {
    Some(Probe {
        in_recovery: true,
        lsn: Some(Lsn(lsn)),
    })
}

/// One probe round: the primary at `p`, the replica at `r`.
fn round(p: Option<Probe>, r: Option<Probe>) -> [(ServerId, Option<Probe>); 2] {
    [(P, p), (R, r)]
}

fn server(h: &HealthState, id: ServerId) -> &ServerHealth {
    h.snapshot()
        .server(id)
        .expect("configured server in snapshot")
}

fn status(h: &HealthState, id: ServerId) -> Option<ReplicaStatus> {
    h.snapshot().replicas.iter().find(|r| r.id == id).copied()
}

fn route_read(h: &HealthState) -> (Target, Reason) {
    let session = SessionView {
        txn: None,
        pinned: None,
        mode: RouteMode::Auto,
        floor: None,
        held_replica: None,
        spin: 0,
        primary_up: true,
    };
    route(&Class::of(Kind::Read), &session, &h.snapshot().replicas)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn mentions(changes: &[String], needle: &str) -> bool {
    changes.iter().any(|c| c.contains(needle))
}

/// Probes the pair at 1 s intervals, the first probe right now, until the
/// replica is usable; returns the time of the last probe, where the clock is
/// left.
async fn warm_up(h: &mut HealthState, p: u64, r: u64) -> Instant {
    for i in 0..GOOD_PROBES_TO_USE {
        if i > 0 {
            advance(secs(1)).await;
        }
        h.observe(Instant::now(), &round(primary(p), replica(r)));
    }
    assert!(server(h, R).usable, "replica usable after warm-up");
    Instant::now()
}

#[tokio::test(start_paused = true)]
async fn first_probes_find_the_primary_and_hold_the_replica_on_probation() {
    let mut h = time_only(10);
    assert_eq!(h.snapshot().primary, PrimaryState::Unknown);

    let t0 = Instant::now();
    let changes = h.observe(t0, &round(primary(100), replica(100)));
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::Known(P));
    assert_eq!(snap.primary_lsn, Some(Lsn(100)));
    assert!(
        mentions(&changes, "primary is now server primary"),
        "{changes:?}"
    );
    assert!(mentions(&changes, "on probation"), "{changes:?}");
    let p = server(&h, P);
    assert_eq!(p.role, Role::Primary);
    assert!(!p.usable, "the primary is never a usable replica");
    let r = server(&h, R);
    assert_eq!(r.role, Role::Replica);
    assert_eq!(r.lsn, Some(Lsn(100)));
    assert_eq!(r.lag_bytes, Some(0));
    assert_eq!(r.lag, Some(Duration::ZERO));
    assert!(!r.lagging);
    assert!(!r.usable, "one good probe is not enough");
    assert_eq!(r.last_ok, Some(t0));
    assert_eq!(
        status(&h, R),
        Some(ReplicaStatus {
            id: R,
            up: true,
            lagging: true, // on probation: reachable, not yet trusted
            replay: Some(Lsn(100)),
        })
    );
    assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));

    for i in 1..GOOD_PROBES_TO_USE - 1 {
        advance(secs(1)).await;
        let changes = h.observe(Instant::now(), &round(primary(100), replica(100)));
        assert!(
            !server(&h, R).usable,
            "probe {} of {GOOD_PROBES_TO_USE}",
            i + 1
        );
        assert!(changes.is_empty(), "still on probation: {changes:?}");
    }

    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert!(
        server(&h, R).usable,
        "usable after {GOOD_PROBES_TO_USE} good probes"
    );
    assert_eq!(status(&h, R).map(|s| s.lagging), Some(false));
    assert_eq!(
        changes,
        vec!["server replica: replica (on probation) -> replica (serving reads)".to_string()]
    );
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));
}

#[tokio::test(start_paused = true)]
async fn a_failed_replica_probe_takes_it_down_until_three_good_probes() {
    let mut h = time_only(10);
    let t = warm_up(&mut h, 100, 100).await;

    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(100), None));
    let r = server(&h, R);
    assert_eq!(r.role, Role::Down);
    assert!(!r.usable);
    assert_eq!(r.last_ok, Some(t), "last_ok keeps the last good probe");
    assert_eq!(
        status(&h, R),
        None,
        "a down replica is not offered to routing"
    );
    assert_eq!(route_read(&h), (Target::Primary, Reason::ReplicaDown));
    assert!(
        mentions(&changes, "server replica: replica (serving reads) -> down"),
        "{changes:?}"
    );
    assert_eq!(h.snapshot().primary, PrimaryState::Known(P));

    // Back, but on probation again.
    for i in 1..GOOD_PROBES_TO_USE {
        advance(secs(1)).await;
        let changes = h.observe(Instant::now(), &round(primary(100), replica(100)));
        assert!(!server(&h, R).usable, "good probe {i} after an outage");
        if i == 1 {
            assert!(
                mentions(&changes, "down -> replica (on probation)"),
                "{changes:?}"
            );
        }
        assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));
    }
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert!(server(&h, R).usable);
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));
}

#[tokio::test(start_paused = true)]
async fn a_bad_probe_in_the_middle_of_probation_restarts_it() {
    let mut h = time_only(10);
    h.observe(Instant::now(), &round(primary(100), replica(100)));
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(100), replica(100)));
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(100), None));
    for _ in 0..GOOD_PROBES_TO_USE - 1 {
        advance(secs(1)).await;
        h.observe(Instant::now(), &round(primary(100), replica(100)));
        assert!(!server(&h, R).usable, "streak restarted after the failure");
    }
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert!(server(&h, R).usable);
}

#[tokio::test(start_paused = true)]
async fn byte_lag_over_the_limit_makes_a_replica_lagging() {
    let mut h = state(secs(3600), 1000);
    warm_up(&mut h, 100, 100).await;

    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(5_000), replica(100)));
    let r = server(&h, R);
    assert_eq!(h.snapshot().primary_lsn, Some(Lsn(5_000)));
    assert_eq!(r.lag_bytes, Some(4_900));
    assert!(r.lagging, "4900 bytes behind with a 1000-byte limit");
    assert!(!r.usable);
    assert_eq!(status(&h, R).map(|s| s.lagging), Some(true));
    assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));
    assert!(
        mentions(&changes, "replica (serving reads) -> replica (lagging)"),
        "{changes:?}"
    );

    // Exactly at the limit is not over it; still needs its good probes.
    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(5_000), replica(4_000)));
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(1_000));
    assert!(!r.lagging);
    assert!(!r.usable, "back under the limit but on probation");
    assert!(
        mentions(&changes, "replica (lagging) -> replica (on probation)"),
        "{changes:?}"
    );
    for _ in 1..GOOD_PROBES_TO_USE {
        advance(secs(1)).await;
        h.observe(Instant::now(), &round(primary(5_000), replica(5_000)));
    }
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(0));
    assert!(
        r.usable,
        "usable after {GOOD_PROBES_TO_USE} probes under the limits"
    );
}

#[tokio::test(start_paused = true)]
async fn time_lag_grows_while_the_replica_stays_behind_and_clears_when_it_catches_up() {
    let mut h = time_only(5);
    warm_up(&mut h, 100, 100).await;
    assert_eq!(server(&h, R).lag, Some(Duration::ZERO));

    // Ten seconds later the primary moves to 200; the replica stays at 100.
    advance(secs(10)).await;
    h.observe(Instant::now(), &round(primary(200), replica(100)));
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(100));
    assert_eq!(
        r.lag,
        Some(Duration::ZERO),
        "the primary moved past it just now"
    );
    assert!(r.usable);

    // `s` is the time since the primary moved.
    let mut s = 0;
    let mut previous = Duration::ZERO;
    for next in [1, 2, 4, 5] {
        advance(secs(next - s)).await;
        s = next;
        h.observe(Instant::now(), &round(primary(200), replica(100)));
        let r = server(&h, R);
        let lag = r.lag.expect("replica has a time lag");
        assert_eq!(
            lag,
            secs(s),
            "lag is time since the primary passed the replay position"
        );
        assert!(
            lag >= previous,
            "lag never shrinks while the replica stays put"
        );
        previous = lag;
        assert!(!r.lagging, "{s}s is within a 5s limit");
        assert!(r.usable);
    }

    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(200), replica(100)));
    let r = server(&h, R);
    assert_eq!(r.lag, Some(secs(6)));
    assert!(r.lagging, "6s is over a 5s limit");
    assert!(!r.usable);
    assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));
    assert!(mentions(&changes, "-> replica (lagging)"), "{changes:?}");

    // Still behind a minute later: still lagging, by a minute more.
    advance(secs(60)).await;
    h.observe(Instant::now(), &round(primary(200), replica(100)));
    assert_eq!(server(&h, R).lag, Some(secs(66)));
    assert!(server(&h, R).lagging);

    // Caught up: no lag, in bytes or in time.
    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(200), replica(200)));
    let r = server(&h, R);
    assert_eq!(r.lag, Some(Duration::ZERO));
    assert_eq!(r.lag_bytes, Some(0));
    assert!(!r.lagging);
    assert!(!r.usable, "on probation after lagging");
    assert!(
        mentions(&changes, "replica (lagging) -> replica (on probation)"),
        "{changes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn time_lag_counts_from_the_first_primary_position_past_the_replay() {
    let mut h = time_only(60);
    // The primary writes steadily: 100, 200, 300, 400 at 0 s, 1 s, 2 s, 3 s.
    for (i, lsn) in [100, 200, 300, 400].into_iter().enumerate() {
        if i > 0 {
            advance(secs(1)).await;
        }
        h.observe(Instant::now(), &round(primary(lsn), replica(100)));
    }
    // At 10 s the replica has replayed 250: the primary first passed it (300) at 2 s.
    advance(secs(7)).await;
    h.observe(Instant::now(), &round(primary(400), replica(250)));
    assert_eq!(server(&h, R).lag, Some(secs(8)));
    // At 11 s it has replayed exactly 300: the primary first went past it (400) at 3 s.
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(400), replica(300)));
    assert_eq!(server(&h, R).lag, Some(secs(8)));
    // A replica reporting past the primary (probed a moment later) has no lag.
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(400), replica(450)));
    assert_eq!(server(&h, R).lag, Some(Duration::ZERO));
    assert_eq!(server(&h, R).lag_bytes, Some(0));
}

#[tokio::test(start_paused = true)]
async fn steady_replication_delay_is_measured_and_does_not_accumulate() {
    let mut h = time_only(60);
    // The primary writes 100 bytes a second; the replica replays what the
    // primary had two seconds earlier. One probe a second, `s` seconds in.
    for s in 0..120u64 {
        if s > 0 {
            advance(secs(1)).await;
        }
        let p = 1_000 + 100 * s;
        let r = 1_000 + 100 * s.saturating_sub(2);
        h.observe(Instant::now(), &round(primary(p), replica(r)));
        let lag = server(&h, R).lag.expect("time lag");
        if s >= 2 {
            assert!(
                lag >= secs(1) && lag <= secs(2),
                "at {s}s a 2s replication delay measured as {lag:?}"
            );
        }
    }
    assert!(server(&h, R).usable);
}

#[tokio::test(start_paused = true)]
async fn time_lag_stays_zero_on_an_idle_primary() {
    let mut h = time_only(5);
    // Some activity first, then the primary goes idle at 500 and the replica
    // has everything.
    h.observe(Instant::now(), &round(primary(100), replica(100)));
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(300), replica(200)));
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(500), replica(500)));
    advance(secs(1)).await;
    warm_up(&mut h, 500, 500).await;

    // `idle` is the time since the end of the warm-up.
    let mut idle = 0;
    for later in [10, 60, 599, 601, 3_600, 86_400, 30 * 86_400] {
        advance(secs(later - idle)).await;
        idle = later;
        let changes = h.observe(Instant::now(), &round(primary(500), replica(500)));
        let r = server(&h, R);
        assert_eq!(r.lag, Some(Duration::ZERO), "idle for {later}s");
        assert_eq!(r.lag_bytes, Some(0), "idle for {later}s");
        assert!(!r.lagging, "idle for {later}s");
        assert!(r.usable, "idle for {later}s");
        assert!(changes.is_empty(), "idle for {later}s: {changes:?}");
    }
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));
}

/// The lag of a replica that has been stuck for a long time must not drop to
/// zero when the primary, idle for longer than the WAL history window, writes
/// again: the replica is exactly as far behind as before.
#[tokio::test(start_paused = true)]
async fn a_stuck_replica_stays_lagging_when_the_primary_writes_after_a_long_idle_spell() {
    let mut h = time_only(5);
    warm_up(&mut h, 100, 100).await;

    // The primary writes once and goes idle; the replica stops replaying at 100.
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(primary(200), replica(100)));
    advance(secs(699)).await;
    h.observe(Instant::now(), &round(primary(200), replica(100)));
    assert_eq!(server(&h, R).lag, Some(secs(699)));
    assert!(server(&h, R).lagging);

    // Eleven-plus minutes later the primary writes a little more.
    for s in 0..u64::from(GOOD_PROBES_TO_USE) + 1 {
        advance(secs(1)).await;
        h.observe(Instant::now(), &round(primary(300), replica(100)));
        let r = server(&h, R);
        let lag = r.lag.expect("time lag");
        assert!(
            lag >= secs(699),
            "{s}s after the write: a replica stuck for 700s reports a lag of {lag:?}"
        );
        assert!(r.lagging, "{s}s after the write");
        assert!(
            !r.usable,
            "{s}s after the write: a stuck replica serves reads"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn two_primaries_fence_writes() {
    let mut h = time_only(10);
    warm_up(&mut h, 100, 100).await;

    let both = round(primary(100), primary(120));
    advance(secs(8)).await;
    let changes = h.observe(Instant::now(), &both);
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::Fenced);
    assert_eq!(
        snap.primary_lsn, None,
        "no single primary position when fenced"
    );
    assert!(mentions(&changes, "fenced"), "{changes:?}");
    assert!(
        mentions(&changes, "2 servers claim to be primary"),
        "{changes:?}"
    );
    assert_eq!(server(&h, P).role, Role::Primary);
    assert_eq!(server(&h, R).role, Role::Primary);
    assert!(snap.replicas.is_empty(), "no replica left to read from");

    advance(secs(1)).await;
    let again = h.observe(Instant::now(), &both);
    assert!(again.is_empty(), "fencing is reported once: {again:?}");

    // The rogue one goes back into recovery: the primary is known again.
    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert_eq!(h.snapshot().primary, PrimaryState::Known(P));
    assert!(
        mentions(&changes, "primary is now server primary"),
        "{changes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn nobody_claiming_primary_is_reported_as_none() {
    let mut h = time_only(10);
    let changes = h.observe(Instant::now(), &round(replica(100), replica(100)));
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::None);
    assert!(!snap.primary_answers);
    assert_eq!(snap.primary_lsn, None);
    assert!(
        mentions(&changes, "no server claims to be primary"),
        "{changes:?}"
    );
    assert_eq!(server(&h, P).role, Role::Replica);
    assert_eq!(
        server(&h, R).lag_bytes,
        None,
        "no primary to measure against"
    );

    advance(secs(1)).await;
    let again = h.observe(Instant::now(), &round(replica(100), replica(100)));
    assert!(again.is_empty(), "reported once: {again:?}");

    // Every probe failing also leaves no primary.
    advance(secs(1)).await;
    h.observe(Instant::now(), &round(None, None));
    assert_eq!(h.snapshot().primary, PrimaryState::None);
    assert_eq!(server(&h, P).role, Role::Down);
    assert_eq!(server(&h, R).role, Role::Down);
}

#[tokio::test(start_paused = true)]
async fn a_promoted_replica_becomes_the_primary() {
    let mut h = time_only(10);
    warm_up(&mut h, 100, 100).await;
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));

    // The old primary stops answering; the replica is still in recovery. One
    // missed probe is forgiven (a slow answer is not a dead primary)...
    advance(secs(1)).await;
    assert!(h.snapshot().primary_answers);
    assert_eq!(h.snapshot().writable_primary(), Some(P));
    let changes = h.observe(Instant::now(), &round(None, replica(100)));
    assert_eq!(h.snapshot().primary, PrimaryState::Known(P));
    // ...though writes wait for it to answer again, and reads it would have
    // served go to the replica.
    assert!(!h.snapshot().primary_answers);
    assert_eq!(h.snapshot().writable_primary(), None);
    // ...a second one in a row is not.
    advance(secs(1)).await;
    let second = h.observe(Instant::now(), &round(None, replica(100)));
    assert_eq!(h.snapshot().primary, PrimaryState::None);
    assert!(
        mentions(&second, "no server claims to be primary"),
        "{second:?}"
    );
    assert_eq!(server(&h, P).role, Role::Down);
    assert!(
        mentions(&changes, "server primary: primary -> down"),
        "{changes:?}"
    );

    // It is promoted.
    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(None, primary(300)));
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::Known(R));
    assert!(snap.primary_answers);
    assert_eq!(snap.writable_primary(), Some(R));
    assert_eq!(snap.primary_lsn, Some(Lsn(300)));
    assert_eq!(server(&h, R).role, Role::Primary);
    assert!(!server(&h, R).usable, "a primary is not a read replica");
    assert_eq!(server(&h, P).role, Role::Down);
    assert!(snap.replicas.is_empty());
    assert!(
        mentions(&changes, "primary is now server replica"),
        "{changes:?}"
    );
    assert!(
        mentions(
            &changes,
            "server replica: replica (serving reads) -> primary"
        ),
        "{changes:?}"
    );
    assert_eq!(route_read(&h), (Target::Primary, Reason::ReplicaDown));

    // Promotion with the old primary failing in the same round, on a fresh
    // state warmed up from here.
    let mut h = time_only(10);
    warm_up(&mut h, 100, 100).await;
    advance(secs(1)).await;
    let changes = h.observe(Instant::now(), &round(None, primary(150)));
    assert_eq!(h.snapshot().primary, PrimaryState::Known(R));
    assert!(
        mentions(&changes, "primary is now server replica"),
        "{changes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn changes_are_reported_once_not_on_every_probe() {
    let mut h = time_only(10);
    let first = h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert_eq!(
        first.len(),
        3,
        "primary found, both servers changed state: {first:?}"
    );
    advance(secs(1)).await;
    let second = h.observe(Instant::now(), &round(primary(100), replica(100)));
    assert!(second.is_empty(), "identical probes: {second:?}");

    advance(secs(1)).await;
    warm_up(&mut h, 100, 100).await;
    for s in 1..=5 {
        advance(secs(1)).await;
        let changes = h.observe(Instant::now(), &round(primary(100 + s), replica(100 + s)));
        assert!(changes.is_empty(), "steady state, probe {s}: {changes:?}");
    }

    // A failure is reported once, however many probes fail.
    advance(secs(1)).await;
    let down = h.observe(Instant::now(), &round(primary(106), None));
    assert_eq!(down.len(), 1, "{down:?}");
    advance(secs(1)).await;
    let still = h.observe(Instant::now(), &round(primary(106), None));
    assert!(still.is_empty(), "{still:?}");
}
