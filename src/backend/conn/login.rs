//! Opening a server connection: TCP, TLS as the URL's `sslmode` says, the
//! startup message, and authentication (SCRAM-SHA-256 with or without
//! channel binding, md5, cleartext) up to the first ReadyForQuery.

use std::sync::Arc;
use std::time::Duration;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CancelKey, Login, ServerConn, ServerTarget};
use crate::backend::BackendError;
use crate::config::ChannelBindingMode;
use crate::net::Stream;
use crate::protocol::{build, fields, tag};

/// SSLRequest negotiation per the URL's `sslmode`. Reads exactly one byte of
/// answer: anything the server sent after it and before the handshake could be
/// injected by a man in the middle (CVE-2021-23222), so it is never buffered.
async fn negotiate_tls(target: &ServerTarget, mut tcp: TcpStream) -> Result<Stream, BackendError> {
    let tls = target.tls.as_ref().map_err(|e| BackendError::Tls {
        server: target.name.clone(),
        message: e.clone(),
    })?;
    let Some(config) = &tls.config else {
        return Ok(Stream::Plain(tcp));
    };
    let io = |source| BackendError::Io {
        server: target.name.clone(),
        source,
    };
    tcp.write_all(&build::ssl_request()).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match connector.connect(tls.name.clone(), tcp).await {
                Ok(s) => Ok(Stream::Connected(Box::new(s))),
                Err(e) => Err(BackendError::Tls {
                    server: target.name.clone(),
                    message: e.to_string(),
                }),
            }
        }
        b'N' if tls.plaintext_ok() => Ok(Stream::Plain(tcp)),
        b'N' => Err(BackendError::Tls {
            server: target.name.clone(),
            message: format!("server does not accept TLS but sslmode is {:?}", tls.mode),
        }),
        other => Err(BackendError::Protocol {
            server: target.name.clone(),
            source: crate::protocol::ProtocolError::UnexpectedTag(char::from(other)),
        }),
    }
}

impl ServerConn {
    pub async fn connect(
        target: Arc<ServerTarget>,
        login: &Login,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        match tokio::time::timeout(timeout, Self::connect_inner(target.clone(), login)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout(target.name.clone())),
        }
    }

    async fn connect_inner(
        target: Arc<ServerTarget>,
        login: &Login,
    ) -> Result<ServerConn, BackendError> {
        let tcp = TcpStream::connect((target.url.host.as_str(), target.url.port))
            .await
            .map_err(|source| BackendError::Connect {
                server: target.name.clone(),
                source,
            })?;
        // Small request/response messages: Nagle would add a delay per round trip.
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::net::tune(&tcp, &target.net) {
            tracing::warn!(server = %target.name, error = %e, "cannot set TCP keepalive / user timeout");
        }
        let stream = negotiate_tls(&target, tcp).await?;
        let mut conn = ServerConn::over(stream, target);
        let app = conn
            .target
            .url
            .application_name
            .clone()
            .unwrap_or_else(|| "pgsplit".into());
        conn.write(&build::startup_message(&[
            ("user", login.user.as_str()),
            ("database", login.database.as_str()),
            ("application_name", app.as_str()),
            ("client_encoding", "UTF8"),
        ]))
        .await?;
        conn.authenticate(login).await?;
        loop {
            let frame = conn.read_frame().await?;
            match frame.tag {
                tag::backend::PARAMETER_STATUS => conn.note_parameter(&frame)?,
                tag::backend::BACKEND_KEY_DATA => {
                    let (pid, secret) =
                        fields::backend_key_data(frame.body()).map_err(|e| conn.protocol(e))?;
                    conn.key = CancelKey { pid, secret };
                }
                tag::backend::READY_FOR_QUERY => {
                    conn.status =
                        fields::ready_for_query(frame.body()).map_err(|e| conn.protocol(e))?;
                    return Ok(conn);
                }
                tag::backend::ERROR_RESPONSE => return Err(conn.server_error(&frame)),
                tag::backend::NOTICE_RESPONSE | tag::backend::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(conn.protocol(crate::protocol::ProtocolError::UnexpectedTag(
                        char::from(other),
                    )));
                }
            }
        }
    }

    async fn authenticate(&mut self, login: &Login) -> Result<(), BackendError> {
        let password = self.target.url.password.clone().unwrap_or_default();
        let binding_mode = self.target.url.channel_binding;
        let mut scram: Option<ScramSha256> = None;
        let mut bound = false;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                tag::backend::AUTHENTICATION => {}
                tag::backend::ERROR_RESPONSE => {
                    let err = self.server_error(&frame);
                    return Err(match err {
                        BackendError::Server { code, message, .. } if code.starts_with("28") => {
                            BackendError::Auth {
                                server: self.target.name.clone(),
                                message,
                            }
                        }
                        other => other,
                    });
                }
                other => {
                    return Err(self.protocol(crate::protocol::ProtocolError::UnexpectedTag(
                        char::from(other),
                    )));
                }
            }
            let (code, data) =
                fields::authentication(frame.body()).map_err(|e| self.protocol(e))?;
            match code {
                0 if binding_mode == ChannelBindingMode::Require && !bound => {
                    return Err(self.auth_error(
                        "channel_binding=require, but the server authenticated pgsplit without channel binding",
                    ));
                }
                0 => return Ok(()),
                3 => {
                    let mut msg = password.as_bytes().to_vec();
                    msg.push(0);
                    self.write(&build::password_message(&msg)).await?;
                }
                5 => {
                    let salt: [u8; 4] =
                        data.get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| {
                                self.protocol(crate::protocol::ProtocolError::Malformed(
                                    "AuthenticationMD5Password",
                                ))
                            })?;
                    let mut msg =
                        md5_hash(login.user.as_bytes(), password.as_bytes(), salt).into_bytes();
                    msg.push(0);
                    self.write(&build::password_message(&msg)).await?;
                }
                10 => {
                    let offers = |m: &[u8]| data.split(|&b| b == 0).any(|o| o == m);
                    // As libpq: bind to the TLS channel when the server offers
                    // SCRAM-SHA-256-PLUS; over TLS without that offer say "y"
                    // (we could have), so a server that does support it can
                    // tell its offer was stripped.
                    let end_point = match binding_mode {
                        ChannelBindingMode::Disable => None,
                        _ => self.stream.server_end_point(),
                    };
                    let (mechanism, binding) = match end_point {
                        Some(hash) if offers(b"SCRAM-SHA-256-PLUS") => {
                            bound = true;
                            (
                                "SCRAM-SHA-256-PLUS",
                                ChannelBinding::tls_server_end_point(hash),
                            )
                        }
                        _ if binding_mode == ChannelBindingMode::Require => {
                            return Err(self.auth_error(
                                "channel_binding=require, but the server offers no SCRAM-SHA-256-PLUS over TLS",
                            ));
                        }
                        _ if !offers(b"SCRAM-SHA-256") => {
                            return Err(
                                self.auth_error("server offers no SASL mechanism pgsplit supports")
                            );
                        }
                        Some(_) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    let s = ScramSha256::new(password.as_bytes(), binding);
                    self.write(&build::sasl_initial_response(mechanism, s.message()))
                        .await?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.auth_error("unexpected SASL continue"))?;
                    s.update(data)
                        .map_err(|e| self.auth_error(&format!("SCRAM: {e}")))?;
                    let msg = build::password_message(s.message());
                    self.write(&msg).await?;
                }
                12 => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| self.auth_error("unexpected SASL final"))?;
                    s.finish(data)
                        .map_err(|e| self.auth_error(&format!("SCRAM server signature: {e}")))?;
                }
                other => {
                    return Err(self.auth_error(&format!(
                        "server asks for authentication method {other}, which pgsplit does not support"
                    )));
                }
            }
        }
    }

    fn auth_error(&self, message: &str) -> BackendError {
        BackendError::Auth {
            server: self.target.name.clone(),
            message: message.to_owned(),
        }
    }
}
