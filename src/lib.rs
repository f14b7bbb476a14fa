//! pgsplit: a PostgreSQL read/write-splitting sidecar proxy.
//!
//! Data path (DESIGN.md section 2):
//!
//! ```text
//! client ─▶ client::handshake ─▶ client::session (one unit at a time)
//!              │                      │ route::classify (SQL → Class, cached)   [pure]
//!              │                      │ route::router (Class + session + health) [pure]
//!              │                      ▼
//!              │                backend::pool checkout ─▶ server (primary | replica)
//!              ▼                      │ client::relay: forward bytes, relay replies to ReadyForQuery
//!         client::cancel              ▼
//!                               learn: transaction status, session changes, pins
//! ```
//!
//! Module map: [`protocol`] pure wire codec; [`route`] pure classification and
//! routing; [`client`] handshake, session loop, relay; [`backend`] server
//! connections, pools, health monitor; [`config`] typed configuration; [`app`]
//! wiring and shutdown; [`admin`] HTTP endpoints; [`metrics`] metric handles.
//! The throwaway PostgreSQL primary + replica of the demo and the tests is the
//! workspace crate `pgsplit-cluster` (`cluster/`), not part of this library.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod client;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod route;
pub mod server;
pub mod shared;
pub mod sqlstate;
pub mod tls;
