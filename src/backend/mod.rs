//! Everything that talks to PostgreSQL servers: connections, pools, health.

pub mod conn;
pub mod error;
pub mod health;
pub mod monitor;
pub mod pool;
pub mod replay;
pub mod servers;
pub mod statements;

pub use conn::{CancelKey, Login, ServerConn, ServerId, ServerTarget};
pub use error::BackendError;
pub use pool::{CheckoutError, Pooled, Pools};
pub use servers::Servers;
