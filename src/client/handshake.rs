//! Connection start: SSLRequest/GSSENCRequest answered, CancelRequest forwarded,
//! StartupMessage read and the client authenticated against the credentials
//! pgsplit knows. Nothing here opens a server connection: a failed login costs
//! the servers nothing.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::{
    self, AuthError, Binding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramExchange, md5_verify,
    parse_password, parse_sasl_initial_response, random_server_nonce,
};
use super::services::HandshakeDeps;
use super::{ClientError, ClientIo};
use crate::config::{AuthMethod, TlsMode};
use crate::net::Stream;
use crate::protocol::startup::{
    LATEST_MINOR, MAX_STARTUP_LEN, Startup, parse_startup, peek_startup_len,
};
use crate::protocol::{ProtocolError, build, tag};
use crate::route::class::RouteMode;

/// What a successful handshake yields.
pub(crate) struct Hello {
    pub io: ClientIo,
    pub user: String,
    pub database: String,
    /// Startup parameters to apply on every server connection, as (name, value).
    pub settings: Vec<(String, String)>,
    pub mode: RouteMode,
    /// The protocol 3.x minor version agreed with the client.
    pub minor: u16,
}

pub(crate) enum Outcome {
    Session(Hello),
    /// A cancel request was handled; the connection just closes.
    Cancelled,
}

/// Parameters consumed by pgsplit or by the connection itself, never replayed
/// as SET.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

async fn read_startup(stream: &mut Stream, buf: &mut BytesMut) -> Result<Startup, ClientError> {
    loop {
        if let Some(len) = peek_startup_len(buf)?
            && buf.len() >= len
        {
            let packet = buf.split_to(len);
            return Ok(parse_startup(&packet)?);
        }
        if buf.len() > MAX_STARTUP_LEN {
            return Err(ProtocolError::Malformed("startup packet").into());
        }
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err(ClientError::Gone(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed during startup",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(ClientError::Gone(e)),
        }
    }
}

/// TLS record type of a ClientHello: a PostgreSQL 17 client using
/// `sslnegotiation=direct` starts with one instead of an SSLRequest.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn accept_tls(
    ctx: &HandshakeDeps,
    tcp: tokio::net::TcpStream,
    config: std::sync::Arc<crate::tls::Acceptor>,
    direct: bool,
) -> Result<Stream, ClientError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config.config.clone());
    match acceptor.accept(tcp).await {
        Ok(s) => {
            // Direct TLS is only for clients that speak PostgreSQL over it:
            // ALPN is what says so (PostgreSQL enforces the same).
            if direct && s.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
                ctx.metrics.tls_handshake("client", "error");
                return Err(ProtocolError::Malformed("direct TLS without ALPN postgresql").into());
            }
            ctx.metrics.tls_handshake("client", "ok");
            Ok(Stream::Accepted(Box::new(s)))
        }
        Err(e) => {
            ctx.metrics.tls_handshake("client", "error");
            Err(ClientError::Gone(e))
        }
    }
}

fn refuse(e: ClientError, stream: Stream) -> (ClientError, Option<ClientIo>) {
    (e, Some(ClientIo::new(stream, BytesMut::new(), 0)))
}

/// Runs the handshake. On failure the client's stream comes back (when it is
/// still usable) so the caller can send the error.
pub(crate) async fn handshake(
    ctx: &HandshakeDeps,
    tcp: tokio::net::TcpStream,
) -> Result<Outcome, (ClientError, Option<ClientIo>)> {
    let (tls_mode, tls) = ctx.client_tls.get();
    let mut first = [0u8; 1];
    let direct = matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE_RECORD);
    let mut stream = if direct {
        let Some(config) = tls.clone() else {
            // No TLS configured: nothing sensible to answer a ClientHello with.
            return Err((
                ProtocolError::Malformed("TLS ClientHello (TLS is not enabled)").into(),
                None,
            ));
        };
        accept_tls(ctx, tcp, config, true)
            .await
            .map_err(|e| (e, None))?
    } else {
        Stream::Plain(tcp)
    };
    // The channel-binding value of the certificate this connection presents
    // (from the same snapshot as the certificate itself).
    let mut end_point = if direct {
        tls.as_ref().and_then(|a| a.end_point.clone())
    } else {
        None
    };
    let mut buf = BytesMut::with_capacity(1024);
    let (minor, params) = loop {
        let startup = match read_startup(&mut stream, &mut buf).await {
            Ok(s) => s,
            Err(e) => return Err(refuse(e, stream)),
        };
        match startup {
            Startup::SslRequest | Startup::GssEncRequest => {
                // Anything the client sent after the request, before our answer,
                // would be a man-in-the-middle's injection (CVE-2021-23222).
                if !buf.is_empty() {
                    return Err(refuse(
                        ProtocolError::Malformed("SSLRequest").into(),
                        stream,
                    ));
                }
                let upgrade = match (&startup, &tls, stream) {
                    (Startup::SslRequest, Some(config), Stream::Plain(tcp)) => {
                        Ok((tcp, config.clone()))
                    }
                    (_, _, other) => Err(other),
                };
                match upgrade {
                    Ok((mut tcp, config)) => {
                        if let Err(e) = tcp.write_all(b"S").await {
                            return Err((ClientError::Gone(e), None));
                        }
                        end_point.clone_from(&config.end_point);
                        stream = accept_tls(ctx, tcp, config, false)
                            .await
                            .map_err(|e| (e, None))?;
                    }
                    Err(mut plain) => {
                        if let Err(e) = plain.write_all(b"N").await {
                            return Err((ClientError::Gone(e), None));
                        }
                        stream = plain;
                    }
                }
            }
            Startup::Cancel { pid, secret } => {
                ctx.cancels.cancel(pid, &secret).await;
                return Ok(Outcome::Cancelled);
            }
            Startup::Message { minor, params } => break (minor, params),
        }
    };
    if tls_mode == TlsMode::Require && !stream.is_tls() {
        return Err(refuse(ClientError::TlsRequired, stream));
    }
    let mut io = ClientIo::new(stream, buf, ctx.config().limits.max_message_size.as_usize());
    match login(ctx, &mut io, minor, params, end_point).await {
        Ok((user, database, settings, mode, minor)) => Ok(Outcome::Session(Hello {
            io,
            user,
            database,
            settings,
            mode,
            minor,
        })),
        Err(e) => Err((e, Some(io))),
    }
}

type LoginInfo = (String, String, Vec<(String, String)>, RouteMode, u16);

async fn login(
    ctx: &HandshakeDeps,
    io: &mut ClientIo,
    minor: u16,
    params: Vec<(String, String)>,
    end_point: Option<std::sync::Arc<[u8]>>,
) -> Result<LoginInfo, ClientError> {
    let user = Startup::param(&params, "user")
        .ok_or(ClientError::NoUser)?
        .to_owned();
    if Startup::param(&params, "replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        return Err(ClientError::Replication);
    }
    let database = Startup::param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let (mut settings, mode) = settings_from(&params)?;
    // As PostgreSQL does: a newer minor version than we speak, or `_pq_.`
    // options we do not know (we know none), are answered with the version
    // we grant and the options we ignored; the client decides whether to go on.
    let granted = minor.min(LATEST_MINOR);
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > LATEST_MINOR || !unknown.is_empty() {
        let version = build::protocol_version(3, granted);
        io.write(&build::negotiate_protocol_version(version, &unknown))
            .await?;
    }
    settings.retain(|(k, _)| !k.starts_with("_pq_."));
    authenticate(ctx, io, &user, end_point.as_deref()).await?;
    Ok((user, database, settings, mode, granted))
}

/// Startup parameters to replay as SET, plus the `pgsplit.route` option.
/// `options` is split into its `-c name=value` / `--name=value` parts.
fn settings_from(
    params: &[(String, String)],
) -> Result<(Vec<(String, String)>, RouteMode), ClientError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut mode = RouteMode::Auto;
    let mut push = |k: &str, v: &str, out: &mut Vec<(String, String)>| -> Result<(), ClientError> {
        if k.eq_ignore_ascii_case("pgsplit.route") {
            mode = match v.to_ascii_lowercase().as_str() {
                "primary" => RouteMode::Primary,
                "replica" => RouteMode::Replica,
                "auto" => RouteMode::Auto,
                _ => {
                    return Err(ClientError::BadOption(format!(
                        "invalid value for pgsplit.route: {v:?} (use primary, replica or auto)"
                    )));
                }
            };
            return Ok(());
        }
        if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || k.is_empty()
        {
            return Err(ClientError::BadParameterName(k.to_owned()));
        }
        out.retain(|(ek, _)| !ek.eq_ignore_ascii_case(k));
        out.push((k.to_owned(), v.to_owned()));
        Ok(())
    };
    for (k, v) in params {
        if k == "options" {
            for (ok, ov) in parse_options(v)? {
                push(&ok, &ov, &mut out)?;
            }
        } else if !NOT_SETTINGS.contains(&k.as_str()) {
            push(k, v, &mut out)?;
        }
    }
    Ok((out, mode))
}

/// Splits libpq's `options` value: whitespace-separated `-c name=value` or
/// `--name=value`, with backslash escaping a space.
fn parse_options(s: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
                .ok_or_else(|| ClientError::BadOption("options: -c without a setting".into()))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(ClientError::BadOption(format!(
                "options: unsupported switch {w:?} (only -c name=value)"
            )));
        };
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ClientError::BadOption(format!("options: {kv:?} is not name=value")))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

async fn read_password_frame(io: &mut ClientIo) -> Result<bytes::Bytes, ClientError> {
    let frame = io.read_frame().await?.ok_or_else(|| {
        ClientError::Gone(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed during authentication",
        ))
    })?;
    if frame.tag != tag::PASSWORD {
        return Err(ProtocolError::UnexpectedTag(char::from(frame.tag)).into());
    }
    Ok(frame.bytes.slice(5..))
}

/// Authenticates the client. `end_point` is the channel-binding value of the
/// certificate presented on this TLS connection: with it, SCRAM-SHA-256-PLUS
/// is offered first, as PostgreSQL does.
async fn authenticate(
    ctx: &HandshakeDeps,
    io: &mut ClientIo,
    user: &str,
    end_point: Option<&[u8]>,
) -> Result<(), ClientError> {
    let creds = ctx.credentials();
    let known = user == creds.user;
    let result = match ctx.config().auth.method {
        AuthMethod::Trust => {
            if known {
                Ok(())
            } else {
                Err(AuthError::WrongPassword)
            }
        }
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            io.write(&build::auth_md5(salt)).await?;
            let body = read_password_frame(io).await?;
            let response = parse_password(&body)?;
            if known && md5_verify(user, &creds.password, salt, response) {
                Ok(())
            } else {
                Err(AuthError::WrongPassword)
            }
        }
        AuthMethod::ScramSha256 => {
            let offered: &[&str] = if end_point.is_some() {
                &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
            } else {
                &[SCRAM_SHA_256]
            };
            io.write(&build::auth_sasl(offered)).await?;
            let body = read_password_frame(io).await?;
            let (mechanism, first) = parse_sasl_initial_response(&body)?;
            let binding = match (mechanism, end_point) {
                (SCRAM_SHA_256, None) => Binding::NotOffered,
                (SCRAM_SHA_256, Some(_)) => Binding::Declined,
                (SCRAM_SHA_256_PLUS, Some(hash)) => Binding::EndPoint(hash),
                _ => return Err(AuthError::UnsupportedMechanism(mechanism.to_owned()).into()),
            };
            // An unknown user runs the same exchange against a throwaway secret,
            // so the reply does not reveal which user names exist.
            let decoy;
            let secret = if known {
                &creds.scram
            } else {
                decoy = auth::ScramSecret::generate(&format!("{:x}", rand::random::<u128>()));
                &decoy
            };
            let (exchange, server_first) =
                ScramExchange::start(secret, first, random_server_nonce(), binding)?;
            io.write(&build::auth_sasl_continue(&server_first)).await?;
            let body = read_password_frame(io).await?;
            // A SASLResponse body is the raw SASL data, no terminator.
            match exchange.finish(&body) {
                Ok(server_final) if known => {
                    io.write(&build::auth_sasl_final(&server_final)).await?;
                    Ok(())
                }
                Ok(_) => Err(AuthError::WrongPassword),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => {
            io.write(&build::auth_ok()).await?;
            Ok(())
        }
        Err(AuthError::WrongPassword) => Err(ClientError::WrongPassword(user.to_owned())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_split() {
        let o = parse_options("-c search_path=a,b --statement-timeout=5s -cpgsplit.route=primary")
            .unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("pgsplit.route".into(), "primary".into()),
            ]
        );
        assert_eq!(
            parse_options("-c a=x\\ y").unwrap(),
            vec![("a".into(), "x y".into())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn settings_exclude_connection_params() {
        let params = vec![
            ("user".to_string(), "u".to_string()),
            ("database".into(), "d".into()),
            ("application_name".into(), "app".into()),
            (
                "options".into(),
                "-c pgsplit.route=replica -c TimeZone=UTC".into(),
            ),
        ];
        let (s, mode) = settings_from(&params).unwrap();
        assert_eq!(mode, RouteMode::Replica);
        assert_eq!(
            s,
            vec![
                ("application_name".into(), "app".into()),
                ("TimeZone".into(), "UTC".into())
            ]
        );
        let bad = vec![(
            "options".to_string(),
            "-c pgsplit.route=sideways".to_string(),
        )];
        assert!(settings_from(&bad).is_err());
    }
}
