//! The client side: handshake (startup, authentication, cancel), the session
//! loop, and the relay of each unit to a server connection.

pub mod auth;
pub(crate) mod cancel;
pub(crate) mod digest;
pub(crate) mod error;
mod floor_probe;
pub(crate) mod handshake;
pub(crate) mod io;
pub mod pause;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod replies;
pub mod services;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod unit;

#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod shared_tests;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

pub use error::ClientError;
pub use io::ClientIo;

use handshake::Outcome;
use services::Services;

/// Serves one accepted client connection from handshake to goodbye.
pub async fn serve_client(services: Arc<Services>, tcp: TcpStream, peer: SocketAddr) {
    let ctx = &services.handshake;
    let _ = tcp.set_nodelay(true);
    if let Err(e) = crate::net::tune(&tcp, &ctx.config().net) {
        tracing::warn!(%peer, error = %e, "cannot set TCP keepalive / user timeout");
    }
    let timeout = ctx.config().limits.handshake_timeout;
    let hello = match tokio::time::timeout(timeout, handshake::handshake(ctx, tcp)).await {
        Err(_) => {
            tracing::info!(%peer, "client did not finish the handshake in time; closed");
            ctx.metrics.rejected("handshake");
            return;
        }
        Ok(Ok(Outcome::Cancelled)) => return,
        Ok(Ok(Outcome::Session(hello))) => hello,
        Ok(Err((e, io))) => {
            tracing::info!(%peer, code = e.sqlstate(), error = %e, "client refused");
            if matches!(
                e,
                ClientError::WrongPassword(_) | ClientError::Auth(auth::AuthError::WrongPassword)
            ) {
                ctx.metrics.auth_failure();
                ctx.metrics.rejected("auth");
            } else {
                ctx.metrics.error(e.sqlstate(), e.kind());
            }
            if let Some(mut io) = io
                && !matches!(e, ClientError::Gone(_))
            {
                let _ = io.write(&e.fatal_response()).await;
            }
            return;
        }
    };
    let user = hello.user.clone();
    let database = hello.database.clone();
    if database == crate::console::DATABASE {
        let mut io = hello.io;
        match crate::console::serve(services.session.clone(), &mut io, &user).await {
            Ok(()) | Err(ClientError::Gone(_)) => {
                tracing::info!(%peer, %user, "console client left");
            }
            Err(e) => {
                tracing::info!(%peer, %user, code = e.sqlstate(), error = %e, "console session ended with an error");
                ctx.metrics.error(e.sqlstate(), e.kind());
                let _ = io.write(&e.fatal_response()).await;
            }
        }
        return;
    }
    tracing::info!(%peer, %user, %database, "client connected");
    let guard = ctx
        .cancels
        .register(crate::protocol::startup::cancel_key_len(hello.minor));
    let application_name = hello
        .settings
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone());
    let registered =
        services
            .session
            .clients
            .register(&user, &database, application_name.as_deref(), peer);
    let session = session::Session::new(
        services.session.clone(),
        hello,
        guard.slot.clone(),
        registered.info.clone(),
    );
    match session.run(guard.pid, &guard.secret).await {
        Ok(()) | Err(ClientError::Gone(_)) => {
            tracing::info!(%peer, %user, "client disconnected");
        }
        Err(e) => {
            tracing::info!(%peer, %user, code = e.sqlstate(), error = %e, "client session ended with an error");
            ctx.metrics.error(e.sqlstate(), e.kind());
        }
    }
}
