//! Typed configuration: a TOML file, overridden by `PGSPLIT_*` environment variables,
//! overridden by command-line flags. Loading validates everything up front; an error
//! names the key and the binary exits with 64 (EX_USAGE).

mod sources;
pub mod units;
pub mod url;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use sources::Overrides;
pub use units::ByteSize;
pub use url::{ChannelBindingMode, ServerUrl, SslMode};

use units::{de_duration, de_size};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Syntax(String),
    #[error("config: key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    Off,
    Session,
    Pod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only: SSLRequest is answered 'N'.
    #[default]
    Disable,
    /// TLS when the client asks for it, plaintext otherwise.
    Allow,
    /// TLS only: a plaintext startup is refused (28000) before authentication.
    Require,
}

/// Client-facing TLS. Files are re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain presented to clients.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<std::path::PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    pub client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How clients authenticate to pgsplit.
    pub method: AuthMethod,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: AuthMethod::ScramSha256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    #[serde(deserialize_with = "de_duration")]
    pub health_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_lag: Duration,
    #[serde(deserialize_with = "de_size")]
    pub max_lag_bytes: ByteSize,
    pub read_your_writes: ReadYourWrites,
    /// How long a read may wait for a replica to replay its floor (the
    /// replica is asked on demand meanwhile) before it goes to the primary.
    #[serde(deserialize_with = "de_duration")]
    pub read_your_writes_wait: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub primary_wait: Duration,
    /// How often function volatility is re-read from `pg_proc`.
    #[serde(deserialize_with = "de_duration")]
    pub function_refresh: Duration,
    /// Volatile functions that are nevertheless safe on a replica (e.g. `random`).
    pub replica_safe_functions: Vec<String>,
    /// Functions that always send their statement to the primary.
    pub primary_functions: Vec<String>,
    /// Number of distinct statement shapes whose routing decision is cached.
    pub cache_size: usize,
    /// A transaction begun without READ ONLY starts on a replica when its
    /// first statement is a read; a later write moves it to the primary by
    /// replaying its reads there and checking they answer the same
    /// (README, "Transactions that start with reads").
    pub optimistic_transactions: bool,
    /// Units an optimistic transaction records on a replica before it moves
    /// to the primary (the replay a write would need grows with them).
    pub optimistic_max_statements: u32,
    /// Bytes of client messages it records, likewise: with the statements
    /// it bounds what a session holds for its transaction (256 kB: 50 MB
    /// for 200 sessions in the worst case).
    #[serde(deserialize_with = "de_size")]
    pub optimistic_max_bytes: ByteSize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            health_interval: Duration::from_millis(250),
            max_lag: Duration::from_secs(1),
            max_lag_bytes: ByteSize(16 << 20),
            read_your_writes: ReadYourWrites::Pod,
            read_your_writes_wait: Duration::from_millis(20),
            primary_wait: Duration::from_secs(5),
            function_refresh: Duration::from_secs(60),
            replica_safe_functions: Vec::new(),
            primary_functions: Vec::new(),
            cache_size: 10_000,
            optimistic_transactions: true,
            optimistic_max_statements: 64,
            optimistic_max_bytes: ByteSize(256 << 10),
        }
    }
}

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// For its whole session.
    Session,
    /// While it has a transaction open, or for one unit outside a
    /// transaction; then the connection serves other clients. A client
    /// whose session holds state that cannot move (a temporary table,
    /// LISTEN, a session advisory lock, a WITH HOLD cursor, an SQL PREPARE,
    /// LOAD, a statement pgsplit could not parse) keeps its connections as in
    /// session mode.
    #[default]
    Transaction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Server connections per (server, user, database). The default fits
    /// transaction pooling for up to 5 pods on servers with
    /// `max_connections = 100` (README, "Pool modes").
    pub max_size: u32,
    /// Transaction pooling: prepared statements kept per server connection
    /// (least recently used closed first).
    pub prepared_statements: u32,
    #[serde(deserialize_with = "de_duration")]
    pub checkout_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::default(),
            max_size: 15,
            prepared_statements: 200,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The admin console (database `pgsplit` on the client listener).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Who may open the console; empty: the primary URL's user.
    pub users: Vec<String>,
    /// `SHOW CLIENTS` shows client addresses.
    pub show_addresses: bool,
}

impl Config {
    /// Whether `user` may open the admin console.
    pub fn is_admin(&self, user: &str) -> bool {
        if self.admin.users.is_empty() {
            self.primary.user.as_deref() == Some(user)
        } else {
            self.admin.users.iter().any(|u| u == user)
        }
    }
}

/// TCP settings for every socket pgsplit opens or accepts: they find a peer
/// that vanished without closing its socket (a node that lost power, a
/// dropped network path), which no read or write would notice otherwise.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Idle time before the first keepalive probe.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_keepalive_idle: Duration,
    /// Time between unanswered keepalive probes.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_keepalive_interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub tcp_keepalive_count: u32,
    /// Longest sent data may stay unacknowledged before the connection is
    /// dropped (`TCP_USER_TIMEOUT`, Linux); `0s` leaves the kernel's ~15 min.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_user_timeout: Duration,
}

impl Default for NetConfig {
    /// An idle peer that vanished is found after 10 s + 3 x 5 s = 25 s, one
    /// with data in flight after 30 s.
    fn default() -> Self {
        NetConfig {
            tcp_keepalive_idle: Duration::from_secs(10),
            tcp_keepalive_interval: Duration::from_secs(5),
            tcp_keepalive_count: 3,
            tcp_user_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_client_connections: usize,
    /// Largest single message accepted from a client.
    #[serde(deserialize_with = "de_size")]
    pub max_message_size: ByteSize,
    /// Time a client has to finish startup and authentication.
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// How long draining waits for open sessions on SIGTERM.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_client_connections: 1000,
            max_message_size: ByteSize(64 << 20),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Threads running client sessions; `None`: one on machines with 2 cores or
    /// fewer, else one per core; `Some(0)`: one per core. Read at start only.
    pub workers: Option<usize>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub primary: ServerUrl,
    pub replicas: Vec<ServerUrl>,
    pub auth: AuthConfig,
    pub routing: RoutingConfig,
    pub pool: PoolConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
    pub net: NetConfig,
    pub admin: AdminConfig,
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.pool.max_size == 0 {
            return Err(ConfigError::key("pool.max_size", "must be at least 1"));
        }
        if self.pool.prepared_statements == 0 {
            return Err(ConfigError::key(
                "pool.prepared_statements",
                "must be at least 1",
            ));
        }
        if self.routing.health_interval.is_zero() {
            return Err(ConfigError::key(
                "routing.health_interval",
                "must be positive",
            ));
        }
        if self.limits.max_client_connections == 0 {
            return Err(ConfigError::key(
                "limits.max_client_connections",
                "must be at least 1",
            ));
        }
        // The kernel takes keepalive times in whole seconds.
        for (key, d) in [
            ("net.tcp_keepalive_idle", self.net.tcp_keepalive_idle),
            (
                "net.tcp_keepalive_interval",
                self.net.tcp_keepalive_interval,
            ),
        ] {
            if d < Duration::from_secs(1) {
                return Err(ConfigError::key(key, "must be at least 1s"));
            }
        }
        if self.net.tcp_keepalive_count == 0 {
            return Err(ConfigError::key(
                "net.tcp_keepalive_count",
                "must be at least 1",
            ));
        }
        if self.limits.max_message_size.0 < 1024 {
            return Err(ConfigError::key(
                "limits.max_message_size",
                "must be at least 1kB",
            ));
        }
        if self.tls.mode != TlsMode::Disable && (self.tls.cert.is_none() || self.tls.key.is_none())
        {
            return Err(ConfigError::key(
                "tls.cert",
                "tls.mode allow/require needs both tls.cert and tls.key",
            ));
        }
        if self.auth.method != AuthMethod::Trust && self.primary.password.is_none() {
            return Err(ConfigError::key(
                "primary",
                "the URL needs a password unless auth.method = \"trust\"",
            ));
        }
        Ok(())
    }

    /// The user clients must log in as (the primary URL's user).
    pub fn user(&self) -> &str {
        self.primary.user.as_deref().unwrap_or("postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "postgres://app:pw@127.0.0.1:5432/app";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_and_file() {
        let c = load(
            &format!("primary = \"{P}\"\n[routing]\nmax_lag = \"2s\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6432");
        assert_eq!(c.routing.max_lag, Duration::from_secs(2));
        assert_eq!(c.routing.max_lag_bytes, ByteSize(16 << 20));
        assert_eq!(c.user(), "app");
    }

    #[test]
    fn env_and_flags_override() {
        let c = load(
            &format!("primary = \"{P}\"\n"),
            &[
                ("PGSPLIT_ROUTING_MAX_LAG", "300ms"),
                ("PGSPLIT_POOL_MAX_SIZE", "7"),
                ("PGSPLIT_POOL_MODE", "transaction"),
                ("PGSPLIT_WORKERS", "3"),
                (
                    "PGSPLIT_REPLICAS",
                    "postgres://h1/app, postgres://h2:6000/app",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.routing.max_lag, Duration::from_millis(300));
        assert_eq!(c.pool.max_size, 7);
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.replicas.len(), 2);
        assert_eq!(c.replicas[1].port, 6000);
        assert_eq!(c.replicas[0].user.as_deref(), Some("app"), "inherited");
        let flags = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            workers: Some(1),
            pool_mode: Some(PoolMode::Session),
            ..Overrides::default()
        };
        let c = Config::from_toml_str(
            &format!(
                "primary = \"{P}\"\nlisten = \"0.0.0.0:1\"\nworkers = 4\n[pool]\nmode = \"transaction\""
            ),
            [],
            &flags,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.workers, Some(1));
        assert_eq!(c.pool.mode, PoolMode::Session, "the flag wins");
    }

    #[test]
    fn net_keys_from_file_and_environment() {
        let c = load(&format!("primary = \"{P}\"\n"), &[]).unwrap();
        assert_eq!(c.net, NetConfig::default());
        assert_eq!(c.net.tcp_user_timeout, Duration::from_secs(30));
        let c = load(
            &format!(
                "primary = \"{P}\"\n[net]\ntcp_keepalive_idle = \"7s\"\ntcp_keepalive_count = 4\n"
            ),
            &[
                ("PGSPLIT_NET_TCP_KEEPALIVE_INTERVAL", "2s"),
                ("PGSPLIT_NET_TCP_USER_TIMEOUT", "0s"),
            ],
        )
        .unwrap();
        assert_eq!(c.net.tcp_keepalive_idle, Duration::from_secs(7));
        assert_eq!(c.net.tcp_keepalive_interval, Duration::from_secs(2));
        assert_eq!(c.net.tcp_keepalive_count, 4);
        assert!(c.net.tcp_user_timeout.is_zero());
        let msg = |r: Result<Config, ConfigError>| r.unwrap_err().to_string();
        assert!(
            msg(load(
                &format!("primary = \"{P}\"\n[net]\ntcp_keepalive_idle = \"500ms\"\n"),
                &[]
            ))
            .contains("net.tcp_keepalive_idle")
        );
        assert!(
            msg(load(
                &format!("primary = \"{P}\"\n[net]\ntcp_keepalive_count = 0\n"),
                &[]
            ))
            .contains("net.tcp_keepalive_count")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let msg = |r: Result<Config, ConfigError>| r.unwrap_err().to_string();
        assert!(msg(load(&format!("primary = \"{P}\"\nlisen = 1"), &[])).contains("lisen"));
        assert!(
            msg(load(
                &format!("primary = \"{P}\"\n[routing]\nmax_lag = \"soon\""),
                &[]
            ))
            .contains("routing.max_lag")
        );
        assert!(
            msg(load(
                &format!("primary = \"{P}\"\n[pool]\nmax_size = \"x\""),
                &[]
            ))
            .contains("pool.max_size")
        );
        assert!(msg(load("", &[])).contains("primary"));
        assert!(
            msg(load(
                &format!("primary = \"{P}\""),
                &[("PGSPLIT_NOPE", "1")]
            ))
            .contains("PGSPLIT_NOPE")
        );
        assert!(msg(load("primary = \"postgres://h/db?sslmode=x\"", &[])).contains("primary"));
    }
}
