//! libpq connection URIs: `postgres[ql]://[user[:password]@]host[:port][/dbname][?k=v&...]`.
//! An existing `DATABASE_URL` can be pasted in. The password never appears in
//! `Display` or `Debug`.

use std::fmt;

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// libpq's `channel_binding`: whether SCRAM must bind to the TLS channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    Disable,
    /// Bind when the server offers SCRAM-SHA-256-PLUS over TLS.
    #[default]
    Prefer,
    /// Refuse to log in unless the server authenticates with SCRAM-SHA-256-PLUS.
    Require,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub channel_binding: ChannelBindingMode,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub application_name: Option<String>,
}

impl ServerUrl {
    pub fn parse(s: &str) -> Result<ServerUrl, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match main.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (main, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (nonempty(decode(u)?), Some(decode(p)?)),
                None => (nonempty(decode(u)?), None),
            },
            None => (None, None),
        };
        if hostport.contains(',') {
            return Err(
                "multiple hosts in one URL are not supported: give each server its own URL".into(),
            );
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or("unterminated [ in host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("unexpected characters after ]".into()),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, Some(p)),
                None => (decode(hostport)?, None),
            }
        };
        if host.is_empty() {
            return Err("a host is required (unix sockets are not supported)".into());
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("invalid port {p:?}"))?,
            None => 5432,
        };
        let dbname = match path {
            Some(p) => nonempty(decode(p)?),
            None => None,
        };
        let mut url = ServerUrl {
            host,
            port,
            user,
            password,
            dbname,
            sslmode: SslMode::default(),
            channel_binding: ChannelBindingMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            application_name: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("query parameter {pair:?} has no value"))?;
            let v = decode(v)?;
            match k {
                "sslmode" => {
                    url.sslmode =
                        SslMode::parse(&v).ok_or_else(|| format!("invalid sslmode {v:?}"))?
                }
                "channel_binding" => {
                    url.channel_binding = match v.as_str() {
                        "disable" => ChannelBindingMode::Disable,
                        "prefer" => ChannelBindingMode::Prefer,
                        "require" => ChannelBindingMode::Require,
                        _ => return Err(format!("invalid channel_binding {v:?}")),
                    }
                }
                "sslrootcert" => url.sslrootcert = Some(v),
                "sslcert" => url.sslcert = Some(v),
                "sslkey" => url.sslkey = Some(v),
                "application_name" => url.application_name = Some(v),
                "user" => url.user = nonempty(v),
                "password" => url.password = Some(v),
                "dbname" => url.dbname = nonempty(v),
                "host" => url.host = v,
                "port" => url.port = v.parse().map_err(|_| format!("invalid port {v:?}"))?,
                // Accepted for compatibility with pasted DATABASE_URLs; pgsplit sets its own.
                "connect_timeout" | "target_session_attrs" => {}
                other => return Err(format!("unsupported URI query parameter {other:?}")),
            }
        }
        Ok(url)
    }

    /// `host:port`, the name used in logs and metric labels.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Fills in what a replica URL left out from the primary's URL.
    pub fn inherit_from(&mut self, primary: &ServerUrl) {
        if self.user.is_none() {
            self.user.clone_from(&primary.user);
            if self.password.is_none() {
                self.password.clone_from(&primary.password);
            }
        }
        if self.dbname.is_none() {
            self.dbname.clone_from(&primary.dbname);
        }
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "percent-encoded text is not UTF-8".to_owned())
}

fn nonempty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        write!(f, "{}", self.addr())?;
        if let Some(d) = &self.dbname {
            write!(f, "/{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerUrl({self}, sslmode={:?})", self.sslmode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libpq_uris() {
        let u = ServerUrl::parse(
            "postgres://app%40x:p%3Ass@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(u.user.as_deref(), Some("app@x"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, 6543);
        assert_eq!(u.dbname.as_deref(), Some("shop"));
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert.as_deref(), Some("/ca.pem"));
        assert!(!format!("{u} {u:?}").contains("p:ss"));
        let u = ServerUrl::parse("postgresql://[::1]/db").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5432));
        assert_eq!(u.addr(), "[::1]:5432");
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "mysql://x",
            "postgres://h:notaport/db",
            "postgres:///db",
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?frobnicate=1",
            "postgres://a,b/db",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
