//! Everything that talks to PostgreSQL servers: connections, pools, health.

pub mod conn;
pub(crate) mod error;
pub mod health;
pub(crate) mod monitor;
pub(crate) mod pool;
pub(crate) mod replay;
pub(crate) mod server_pool;
pub(crate) mod servers;
pub(crate) mod settings;
pub(crate) mod sockets;
pub(crate) mod statements;

pub use conn::{CancelKey, Login, ServerConn, ServerId, ServerTarget};
pub use error::BackendError;
pub use pool::{CheckoutError, Pooled, Pools};
pub use servers::Servers;
