//! pgsplit's integration tests, one binary (`cargo test --test it`), a module per
//! concern. One process means one link instead of one per file, and PostgreSQL clusters
//! started once for all the tests that can share them (see `common`):
//!
//! * the shared cluster, `common::cluster()`, for every test that only connects,
//!   reads and writes its own tables;
//! * the replay cluster, `common::replay`, for the tests that pause WAL replay, one
//!   test at a time;
//! * the TLS cluster of `tls` (servers with `ssl = on`);
//! * a cluster of its own for each test that stops, kills or promotes a server
//!   (`common::own::own_cluster`).
//!
//! The tests run as threads of this process, in parallel: a test on a shared cluster
//! leaves the servers as it found them (no settings, roles or server state changed),
//! uses tables no other test uses, and counts only its own sessions and statements
//! (by application_name or a marker in the query text).

// Tests panic on what they did not expect; that is how they fail.
// A test binary: its helpers are `pub` for the modules, never for a user.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

mod bad_input;
mod bounds;
mod classify_session;
mod classify_table;
mod cluster_smoke;
mod config_examples;
mod consistency;
mod console;
mod dashboard;
mod deploy_manifests;
mod failover;
mod freeze;
mod health_state;
mod operations;
mod optimistic;
mod pool_reuse;
mod pool_settings;
mod pool_statements;
mod pool_transaction;
mod proxy_basic;
mod proxy_clients;
mod proxy_extended;
mod route_router;
mod switchover;
mod tls;
