//! Where a configuration comes from: the TOML file, then `PGSPLIT_*`
//! environment variables, then command-line flags, each over the last.

use std::path::Path;

use serde::Deserialize;

use super::*;

/// The file format, before URLs are parsed. Every key optional so that flags and
/// the environment can supply what the file leaves out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workers: Option<usize>,
    listen: Option<String>,
    admin_listen: Option<String>,
    primary: Option<String>,
    #[serde(default)]
    replicas: Vec<String>,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    routing: RoutingConfig,
    #[serde(default)]
    pool: PoolConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    net: NetConfig,
    #[serde(default)]
    admin: AdminConfig,
}

/// What the command line can override.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub workers: Option<usize>,
    pub pool_mode: Option<super::PoolMode>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub primary: Option<String>,
    pub replicas: Vec<String>,
}

/// Keys reachable through the environment: `PGSPLIT_<SECTION>_<KEY>` upper-cased,
/// e.g. `PGSPLIT_ROUTING_MAX_LAG=2s`, `PGSPLIT_REPLICAS=url1,url2`.
const ENV_KEYS: &[(&str, &str)] = &[
    ("", "workers"),
    ("", "listen"),
    ("", "admin_listen"),
    ("", "primary"),
    ("", "replicas"),
    ("auth", "method"),
    ("routing", "health_interval"),
    ("routing", "max_lag"),
    ("routing", "max_lag_bytes"),
    ("routing", "read_your_writes"),
    ("routing", "read_your_writes_wait"),
    ("routing", "primary_wait"),
    ("routing", "function_refresh"),
    ("routing", "replica_safe_functions"),
    ("routing", "primary_functions"),
    ("routing", "cache_size"),
    ("routing", "optimistic_transactions"),
    ("routing", "optimistic_max_statements"),
    ("routing", "optimistic_max_bytes"),
    ("net", "tcp_keepalive_idle"),
    ("net", "tcp_keepalive_interval"),
    ("net", "tcp_keepalive_count"),
    ("net", "tcp_user_timeout"),
    ("pool", "mode"),
    ("pool", "max_size"),
    ("pool", "prepared_statements"),
    ("pool", "checkout_timeout"),
    ("pool", "connect_timeout"),
    ("pool", "idle_timeout"),
    ("limits", "max_client_connections"),
    ("limits", "max_message_size"),
    ("limits", "handshake_timeout"),
    ("limits", "shutdown_grace"),
    ("tls", "mode"),
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "client_ca"),
    ("admin", "users"),
    ("admin", "show_addresses"),
];

fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("PGSPLIT_{}", key.to_ascii_uppercase())
    } else {
        format!(
            "PGSPLIT_{}_{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

/// An environment value becomes a TOML value: integers and booleans as such,
/// comma-separated lists for list keys, everything else a string.
fn env_value(key: &str, raw: &str) -> toml::Value {
    if matches!(
        key,
        "replicas" | "replica_safe_functions" | "primary_functions" | "users"
    ) {
        return toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        );
    }
    if let Ok(n) = raw.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

impl Config {
    /// Loads `file` (if any), applies `env` (name → value pairs, normally
    /// `std::env::vars()`), then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_str(&text, env, flags)
    }

    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string().replace('\n', " ")))?;
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PGSPLIT_"))
            .collect();
        for (section, key) in ENV_KEYS {
            let Some(raw) = env.get(&env_name(section, key)) else {
                continue;
            };
            let value = env_value(key, raw);
            if section.is_empty() {
                table.insert((*key).to_owned(), value);
            } else {
                let entry = table
                    .entry((*section).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(t) = entry else {
                    return Err(ConfigError::key(*section, "must be a table"));
                };
                t.insert((*key).to_owned(), value);
            }
        }
        for name in env.keys() {
            if !ENV_KEYS.iter().any(|(s, k)| &env_name(s, k) == name) && name != "PGSPLIT_CONFIG" {
                return Err(ConfigError::key(
                    name.clone(),
                    "unknown environment variable",
                ));
            }
        }
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // toml appends "in `key`" on a second line; the key is named already.
                let message = e.into_inner().to_string();
                let first = message.lines().next().unwrap_or_default().to_owned();
                ConfigError::key(key, first)
            })?;
        Self::finish(raw, flags)
    }

    fn finish(raw: RawConfig, flags: &Overrides) -> Result<Config, ConfigError> {
        let listen = flags
            .listen
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| "127.0.0.1:6432".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ConfigError::key("listen", format!("invalid address {listen:?}")))?;
        let admin = flags
            .admin_listen
            .clone()
            .or(raw.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:9930".into());
        let admin_listen: SocketAddr = admin
            .parse()
            .map_err(|_| ConfigError::key("admin_listen", format!("invalid address {admin:?}")))?;
        let primary = flags
            .primary
            .clone()
            .or(raw.primary)
            .ok_or_else(|| ConfigError::key("primary", "required (a libpq URL)"))?;
        let primary = ServerUrl::parse(&primary).map_err(|e| ConfigError::key("primary", e))?;
        if primary.user.is_none() {
            return Err(ConfigError::key(
                "primary",
                "the URL must name a user (pgsplit authenticates clients with these credentials)",
            ));
        }
        let replica_strs = if flags.replicas.is_empty() {
            raw.replicas
        } else {
            flags.replicas.clone()
        };
        let mut replicas = Vec::with_capacity(replica_strs.len());
        for (i, r) in replica_strs.iter().enumerate() {
            let mut url =
                ServerUrl::parse(r).map_err(|e| ConfigError::key(format!("replicas[{i}]"), e))?;
            url.inherit_from(&primary);
            replicas.push(url);
        }
        let cfg = Config {
            workers: flags.workers.or(raw.workers),
            listen,
            admin_listen,
            primary,
            replicas,
            auth: raw.auth,
            routing: raw.routing,
            pool: super::PoolConfig {
                mode: flags.pool_mode.unwrap_or(raw.pool.mode),
                ..raw.pool
            },
            limits: raw.limits,
            tls: raw.tls,
            net: raw.net,
            admin: raw.admin,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
