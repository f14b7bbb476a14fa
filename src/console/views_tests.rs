//! `SHOW ROUTE` for the reasons that depend on the servers' state, from
//! snapshots built here: what the router decides and what the console says.

use super::*;
use crate::backend::health::{PrimaryState, ServerHealth};
use crate::route::router::{SessionView, route};

const P: ServerId = ServerId(0);
const R: ServerId = ServerId(1);

fn server(id: ServerId, name: &str, role: Role) -> ServerHealth {
    ServerHealth {
        id,
        name: name.into(),
        role,
        lsn: Some(Lsn(1000)),
        lag_bytes: None,
        lag: None,
        usable: role == Role::Replica,
        lagging: false,
        last_ok: None,
        last_error: None,
    }
}

fn snapshot(replica: ServerHealth, primary_answers: bool) -> HealthSnapshot {
    let status = ReplicaStatus {
        id: R,
        up: replica.role == Role::Replica,
        lagging: replica.lagging || !replica.usable,
        replay: replica.lsn,
    };
    HealthSnapshot {
        primary: PrimaryState::Known(P),
        primary_answers,
        primary_lsn: Some(Lsn(5000)),
        servers: vec![server(P, "pg-0:5432", Role::Primary), replica],
        replicas: if status.up { vec![status] } else { vec![] },
    }
}

fn config() -> Config {
    Config::from_toml_str(
        "primary = \"postgres://u:p@127.0.0.1:5432/db\"\nreplicas = [\"postgres://127.0.0.1:5433/db\"]\n",
        std::iter::empty(),
        &crate::config::Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// (target, reason, why) of a plain read for a new session.
fn read_route(health: &HealthSnapshot, floor: Option<Lsn>) -> (String, String, String) {
    class_route(Class::of(Kind::Read), health, floor)
}

fn class_route(
    class: Class,
    health: &HealthSnapshot,
    floor: Option<Lsn>,
) -> (String, String, String) {
    let config = config();
    let session = SessionView::new_session(floor, health.primary_answers);
    let placed = route(&class, &session, &health.replicas);
    let t = super::route(&RouteFacts {
        class,
        why_not_read: None,
        placed,
        health,
        replicas: &health.replicas,
        floor,
        config: &config,
    });
    let row = &t.rows[0];
    let text = |i: usize| match &row[i] {
        Value::Text(s) => s.clone(),
        other => format!("{other:?}"),
    };
    (text(0), text(2), text(4))
}

#[test]
fn reasons_that_depend_on_the_servers() {
    let healthy = server(R, "pg-1:5432", Role::Replica);
    let lagging = ServerHealth {
        lagging: true,
        usable: false,
        lag: Some(Duration::from_millis(3300)),
        lag_bytes: Some(4000),
        ..healthy.clone()
    };
    let down = ServerHealth {
        role: Role::Down,
        usable: false,
        lsn: None,
        ..healthy.clone()
    };
    // (what, servers, floor, (target, reason, words in `why`))
    type Case<'a> = (
        &'a str,
        HealthSnapshot,
        Option<Lsn>,
        (&'a str, &'a str, &'a str),
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "healthy replica",
            snapshot(healthy.clone(), true),
            None,
            ("replica", "read", "read-only"),
        ),
        (
            "replica behind the floor",
            snapshot(healthy.clone(), true),
            Some(Lsn(2000)),
            ("primary", "read_your_writes", "floor 0/7D0"),
        ),
        (
            "replica over max_lag",
            snapshot(lagging.clone(), true),
            None,
            ("primary", "lag", "pg-1:5432 over max_lag by 2.3 s"),
        ),
        (
            "replica down",
            snapshot(down, true),
            None,
            ("primary", "replica_down", "no replica"),
        ),
        (
            "primary silent, replica behind the floor",
            snapshot(healthy, false),
            Some(Lsn(2000)),
            ("replica", "primary_down", "does not answer"),
        ),
        (
            "primary silent, replica lagging",
            snapshot(lagging, false),
            None,
            ("replica", "primary_down", "does not answer"),
        ),
    ];
    let mut failed = Vec::new();
    for (what, health, floor, (target, reason, why)) in cases {
        let (t, r, w) = read_route(&health, floor);
        if t != target || r != reason || !w.contains(why) {
            failed.push(format!(
                "{what}: got ({t}, {r}, {w:?}), want ({target}, {reason}, ~{why:?})"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A read that itself pins the session (it takes a session advisory lock
/// the catalog calls read-only here) stays on the primary, and says why.
#[test]
fn a_read_that_pins_says_so() {
    let health = snapshot(server(R, "pg-1:5432", Role::Replica), true);
    let class = Class {
        pin: Some(crate::route::class::PinReason::AdvisoryLock),
        ..Class::of(Kind::Read)
    };
    let (t, r, w) = class_route(class, &health, None);
    assert_eq!((t.as_str(), r.as_str()), ("primary", "pinned"));
    assert!(w.contains("advisory_lock"), "{w}");
}
