//! pgsplit: a PostgreSQL read/write-splitting sidecar proxy.
//!
//! Data path (DESIGN.md section 2):
//!
//! ```text
//! client ─▶ client::handshake ─▶ client::session (one unit at a time)
//!              │                      │ route::classify (SQL → Class, cached)        [pure]
//!              │                      │ route::plan (unit + session + health → where,
//!              │                      │   how to relay, what the result means)        [pure]
//!              │                      ▼
//!              │                backend::pool checkout ─▶ server (primary | replica)
//!              ▼                      │ client::relay: pump bytes both ways;
//!         client::cancel              │ client::replies: judge each reply              [pure]
//!                                     ▼
//!                               SessionState::learn: transaction, session changes, pins [pure]
//! ```
//!
//! Module map: [`protocol`] pure wire codec; [`sqlstate`] every SQLSTATE by
//! name; [`route`] pure classification and routing policy; [`client`]
//! handshake, session loop, relay; [`backend`] server connections, statement
//! registry, pools, health monitor; [`config`] typed configuration;
//! [`shared`] snapshot cells; [`lifecycle`] the shutdown phases and the tasks
//! they wait for; [`app`] wiring (each subsystem's narrow handle), reload and
//! shutdown; [`admin`] HTTP endpoints; [`metrics`] metric handles. Nothing
//! but `main` imports [`app`]; the module graph has no cycle.
//! The throwaway PostgreSQL primary + replica of the demo and the tests is the
//! workspace crate `pgsplit-cluster` (`cluster/`), not part of this library.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod client;
pub mod config;
pub mod console;
pub mod lifecycle;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod route;
pub mod server;
pub mod shared;
pub mod sqlstate;
pub mod tls;
