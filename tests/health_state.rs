//! The health state machine (`HealthState::observe`), driven with explicit
//! instants: who is primary, who may take reads, and how far behind each
//! replica is, in bytes and in time (DESIGN.md section 3, Consistency).
//!
//! Time is passed in as `t0 + offset`: `observe` never reads the clock itself,
//! so no paused runtime is needed.

use std::time::Duration;

use tokio::time::Instant;

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
    };
    route(&Class::of(Kind::Read), &session, &h.snapshot().replicas)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn mentions(changes: &[String], needle: &str) -> bool {
    changes.iter().any(|c| c.contains(needle))
}

/// Probes the pair at 1 s intervals from `start` until the replica is usable;
/// returns the time of the last probe.
fn warm_up(h: &mut HealthState, start: Instant, p: u64, r: u64) -> Instant {
    let mut t = start;
    for i in 0..GOOD_PROBES_TO_USE {
        t = start + secs(u64::from(i));
        h.observe(t, &round(primary(p), replica(r)));
    }
    assert!(server(h, R).usable, "replica usable after warm-up");
    t
}

#[test]
fn first_probes_find_the_primary_and_hold_the_replica_on_probation() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    assert_eq!(h.snapshot().primary, PrimaryState::Unknown);

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
        let changes = h.observe(t0 + secs(u64::from(i)), &round(primary(100), replica(100)));
        assert!(
            !server(&h, R).usable,
            "probe {} of {GOOD_PROBES_TO_USE}",
            i + 1
        );
        assert!(changes.is_empty(), "still on probation: {changes:?}");
    }

    let t = t0 + secs(u64::from(GOOD_PROBES_TO_USE));
    let changes = h.observe(t, &round(primary(100), replica(100)));
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

#[test]
fn a_failed_replica_probe_takes_it_down_until_three_good_probes() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    let t = warm_up(&mut h, t0, 100, 100);

    let changes = h.observe(t + secs(1), &round(primary(100), None));
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
        let changes = h.observe(
            t + secs(1 + u64::from(i)),
            &round(primary(100), replica(100)),
        );
        assert!(!server(&h, R).usable, "good probe {i} after an outage");
        if i == 1 {
            assert!(
                mentions(&changes, "down -> replica (on probation)"),
                "{changes:?}"
            );
        }
        assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));
    }
    h.observe(
        t + secs(1 + u64::from(GOOD_PROBES_TO_USE)),
        &round(primary(100), replica(100)),
    );
    assert!(server(&h, R).usable);
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));
}

#[test]
fn a_bad_probe_in_the_middle_of_probation_restarts_it() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    h.observe(t0, &round(primary(100), replica(100)));
    h.observe(t0 + secs(1), &round(primary(100), replica(100)));
    h.observe(t0 + secs(2), &round(primary(100), None));
    for i in 0..GOOD_PROBES_TO_USE - 1 {
        h.observe(
            t0 + secs(3 + u64::from(i)),
            &round(primary(100), replica(100)),
        );
        assert!(!server(&h, R).usable, "streak restarted after the failure");
    }
    h.observe(
        t0 + secs(3 + u64::from(GOOD_PROBES_TO_USE)),
        &round(primary(100), replica(100)),
    );
    assert!(server(&h, R).usable);
}

#[test]
fn byte_lag_over_the_limit_makes_a_replica_lagging() {
    let t0 = Instant::now();
    let mut h = state(secs(3600), 1000);
    let t = warm_up(&mut h, t0, 100, 100);

    let changes = h.observe(t + secs(1), &round(primary(5_000), replica(100)));
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
    let changes = h.observe(t + secs(2), &round(primary(5_000), replica(4_000)));
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(1_000));
    assert!(!r.lagging);
    assert!(!r.usable, "back under the limit but on probation");
    assert!(
        mentions(&changes, "replica (lagging) -> replica (on probation)"),
        "{changes:?}"
    );
    for i in 1..GOOD_PROBES_TO_USE {
        h.observe(
            t + secs(2 + u64::from(i)),
            &round(primary(5_000), replica(5_000)),
        );
    }
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(0));
    assert!(
        r.usable,
        "usable after {GOOD_PROBES_TO_USE} probes under the limits"
    );
}

#[test]
fn time_lag_grows_while_the_replica_stays_behind_and_clears_when_it_catches_up() {
    let t0 = Instant::now();
    let mut h = time_only(5);
    let t = warm_up(&mut h, t0, 100, 100);
    assert_eq!(server(&h, R).lag, Some(Duration::ZERO));

    // The primary moves to 200 at t1; the replica stays at 100.
    let t1 = t + secs(10);
    h.observe(t1, &round(primary(200), replica(100)));
    let r = server(&h, R);
    assert_eq!(r.lag_bytes, Some(100));
    assert_eq!(
        r.lag,
        Some(Duration::ZERO),
        "the primary moved past it just now"
    );
    assert!(r.usable);

    let mut previous = Duration::ZERO;
    for s in [1, 2, 4, 5] {
        h.observe(t1 + secs(s), &round(primary(200), replica(100)));
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

    let changes = h.observe(t1 + secs(6), &round(primary(200), replica(100)));
    let r = server(&h, R);
    assert_eq!(r.lag, Some(secs(6)));
    assert!(r.lagging, "6s is over a 5s limit");
    assert!(!r.usable);
    assert_eq!(route_read(&h), (Target::Primary, Reason::Lag));
    assert!(mentions(&changes, "-> replica (lagging)"), "{changes:?}");

    // Still behind a minute later: still lagging, by a minute more.
    h.observe(t1 + secs(66), &round(primary(200), replica(100)));
    assert_eq!(server(&h, R).lag, Some(secs(66)));
    assert!(server(&h, R).lagging);

    // Caught up: no lag, in bytes or in time.
    let changes = h.observe(t1 + secs(67), &round(primary(200), replica(200)));
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

#[test]
fn time_lag_counts_from_the_first_primary_position_past_the_replay() {
    let t0 = Instant::now();
    let mut h = time_only(60);
    // The primary writes steadily: 100, 200, 300, 400 at t0..t0+3.
    for (i, lsn) in [100, 200, 300, 400].into_iter().enumerate() {
        h.observe(t0 + secs(i as u64), &round(primary(lsn), replica(100)));
    }
    // At t0+10 the replica has replayed 250: the primary first passed it (300) at t0+2.
    h.observe(t0 + secs(10), &round(primary(400), replica(250)));
    assert_eq!(server(&h, R).lag, Some(secs(8)));
    // Replayed exactly 300: the primary first went past it (400) at t0+3.
    h.observe(t0 + secs(11), &round(primary(400), replica(300)));
    assert_eq!(server(&h, R).lag, Some(secs(8)));
    // A replica reporting past the primary (probed a moment later) has no lag.
    h.observe(t0 + secs(12), &round(primary(400), replica(450)));
    assert_eq!(server(&h, R).lag, Some(Duration::ZERO));
    assert_eq!(server(&h, R).lag_bytes, Some(0));
}

#[test]
fn steady_replication_delay_is_measured_and_does_not_accumulate() {
    let t0 = Instant::now();
    let mut h = time_only(60);
    // The primary writes 100 bytes a second; the replica replays what the
    // primary had two seconds earlier.
    for s in 0..120u64 {
        let p = 1_000 + 100 * s;
        let r = 1_000 + 100 * s.saturating_sub(2);
        h.observe(t0 + secs(s), &round(primary(p), replica(r)));
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

#[test]
fn time_lag_stays_zero_on_an_idle_primary() {
    let t0 = Instant::now();
    let mut h = time_only(5);
    // Some activity first, then the primary goes idle at 500 and the replica
    // has everything.
    h.observe(t0, &round(primary(100), replica(100)));
    h.observe(t0 + secs(1), &round(primary(300), replica(200)));
    h.observe(t0 + secs(2), &round(primary(500), replica(500)));
    let t = warm_up(&mut h, t0 + secs(3), 500, 500);

    for later in [10, 60, 599, 601, 3_600, 86_400, 30 * 86_400] {
        let changes = h.observe(t + secs(later), &round(primary(500), replica(500)));
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
#[test]

fn a_stuck_replica_stays_lagging_when_the_primary_writes_after_a_long_idle_spell() {
    let t0 = Instant::now();
    let mut h = time_only(5);
    let t = warm_up(&mut h, t0, 100, 100);

    // The primary writes once and goes idle; the replica stops replaying at 100.
    h.observe(t + secs(1), &round(primary(200), replica(100)));
    let t_idle = t + secs(700);
    h.observe(t_idle, &round(primary(200), replica(100)));
    assert_eq!(server(&h, R).lag, Some(secs(699)));
    assert!(server(&h, R).lagging);

    // Eleven-plus minutes later the primary writes a little more.
    for s in 0..u64::from(GOOD_PROBES_TO_USE) + 1 {
        h.observe(t_idle + secs(1 + s), &round(primary(300), replica(100)));
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

#[test]
fn two_primaries_fence_writes() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    warm_up(&mut h, t0, 100, 100);

    let both = round(primary(100), primary(120));
    let changes = h.observe(t0 + secs(10), &both);
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

    let again = h.observe(t0 + secs(11), &both);
    assert!(again.is_empty(), "fencing is reported once: {again:?}");

    // The rogue one goes back into recovery: the primary is known again.
    let changes = h.observe(t0 + secs(12), &round(primary(100), replica(100)));
    assert_eq!(h.snapshot().primary, PrimaryState::Known(P));
    assert!(
        mentions(&changes, "primary is now server primary"),
        "{changes:?}"
    );
}

#[test]
fn nobody_claiming_primary_is_reported_as_none() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    let changes = h.observe(t0, &round(replica(100), replica(100)));
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::None);
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

    let again = h.observe(t0 + secs(1), &round(replica(100), replica(100)));
    assert!(again.is_empty(), "reported once: {again:?}");

    // Every probe failing also leaves no primary.
    h.observe(t0 + secs(2), &round(None, None));
    assert_eq!(h.snapshot().primary, PrimaryState::None);
    assert_eq!(server(&h, P).role, Role::Down);
    assert_eq!(server(&h, R).role, Role::Down);
}

#[test]
fn a_promoted_replica_becomes_the_primary() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    let t = warm_up(&mut h, t0, 100, 100);
    assert_eq!(route_read(&h), (Target::Replica(R), Reason::Read));

    // The old primary stops answering; the replica is still in recovery.
    let changes = h.observe(t + secs(1), &round(None, replica(100)));
    assert_eq!(h.snapshot().primary, PrimaryState::None);
    assert_eq!(server(&h, P).role, Role::Down);
    assert!(
        mentions(&changes, "server primary: primary -> down"),
        "{changes:?}"
    );

    // It is promoted.
    let changes = h.observe(t + secs(2), &round(None, primary(300)));
    let snap = h.snapshot();
    assert_eq!(snap.primary, PrimaryState::Known(R));
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

    // Promotion with the old primary failing in the same round.
    let mut h = time_only(10);
    let t = warm_up(&mut h, t0, 100, 100);
    let changes = h.observe(t + secs(1), &round(None, primary(150)));
    assert_eq!(h.snapshot().primary, PrimaryState::Known(R));
    assert!(
        mentions(&changes, "primary is now server replica"),
        "{changes:?}"
    );
}

#[test]
fn changes_are_reported_once_not_on_every_probe() {
    let t0 = Instant::now();
    let mut h = time_only(10);
    let first = h.observe(t0, &round(primary(100), replica(100)));
    assert_eq!(
        first.len(),
        3,
        "primary found, both servers changed state: {first:?}"
    );
    let second = h.observe(t0 + secs(1), &round(primary(100), replica(100)));
    assert!(second.is_empty(), "identical probes: {second:?}");

    let t = warm_up(&mut h, t0 + secs(2), 100, 100);
    for s in 1..=5 {
        let changes = h.observe(t + secs(s), &round(primary(100 + s), replica(100 + s)));
        assert!(changes.is_empty(), "steady state, probe {s}: {changes:?}");
    }

    // A failure is reported once, however many probes fail.
    let down = h.observe(t + secs(6), &round(primary(106), None));
    assert_eq!(down.len(), 1, "{down:?}");
    let still = h.observe(t + secs(7), &round(primary(106), None));
    assert!(still.is_empty(), "{still:?}");
}
