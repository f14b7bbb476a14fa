//! The admin console: a client that logs in to pgsplit's listener with the
//! database name `pgsplit` talks to pgsplit itself, not to a server:
//!
//! ```text
//! psql "postgres://USER:PASS@127.0.0.1:6432/pgsplit" -c 'SHOW SERVERS'
//! ```
//!
//! Only users listed in `[admin] users` (default: the primary URL's user) may
//! open it, after the same authentication as any session; anyone else gets
//! 28000. Every command answers with an ordinary result set (see `table`),
//! so psql, `\x`, `\watch` and scripts work. The console never reaches a
//! database server.
//!
//! Commands are parsed in `command`, answered from snapshots of pgsplit's
//! state in `views` (both pure); this module is the I/O around them: the
//! greeting, the simple-query loop, errors with their SQLSTATE.

pub mod command;
pub mod table;
pub mod views;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::client::ClientError;
use crate::client::io::ClientIo;
use crate::client::services::SessionDeps;
use crate::config::ReadYourWrites;
use crate::protocol::{TxStatus, build, fields, tag};
use crate::route::router::{SessionView, route};
use crate::sqlstate;
use command::Command;

/// The database name that opens the console.
pub const DATABASE: &str = "pgsplit";

/// Serves one console client until it leaves.
pub(crate) async fn serve(
    ctx: Arc<SessionDeps>,
    io: &mut ClientIo,
    user: &str,
) -> Result<(), ClientError> {
    if !ctx.config().is_admin(user) {
        return Err(ClientError::NotAdmin(user.to_owned()));
    }
    io.write(&greeting(&ctx)).await?;
    let mut failed_extended = false;
    loop {
        let Some(frame) = io.read_frame().await? else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        match frame.tag {
            tag::TERMINATE => return Ok(()),
            tag::QUERY => {
                let text = fields::query_text(frame.body())?;
                answer(&ctx, &String::from_utf8_lossy(text), &mut out).await;
                out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
            }
            // The extended protocol: refused once, then its messages are
            // skipped up to the Sync that ends them, as a server skips after
            // an error.
            tag::SYNC => {
                failed_extended = false;
                out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                if !failed_extended {
                    failed_extended = true;
                    out.extend_from_slice(&build::error_response(
                        build::Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "pgsplit: the console speaks the simple query protocol only",
                    ));
                }
            }
            other => {
                return Err(
                    crate::protocol::ProtocolError::UnexpectedTag(char::from(other)).into(),
                );
            }
        }
        if !out.is_empty() {
            io.write(&out).await?;
        }
    }
}

/// AuthenticationOk is sent already; the parameters psql and drivers read,
/// and ReadyForQuery. The server version is the primary's as pgsplit last
/// saw it, so that psql picks its usual behaviour.
fn greeting(ctx: &SessionDeps) -> BytesMut {
    let primary = ctx.server(ctx.configured_primary());
    let login = primary.as_ref().map(|t| crate::backend::monitor::login(t));
    let version = primary
        .as_ref()
        .zip(login.as_ref())
        .and_then(|(t, l)| ctx.pools.greeting(t, l))
        .and_then(|params| {
            params
                .iter()
                .find(|(k, _)| k.as_slice() == b"server_version")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| b"15.0".to_vec());
    let mut out = BytesMut::new();
    for (k, v) in [
        (&b"server_version"[..], version.as_slice()),
        (b"server_encoding", b"UTF8"),
        (b"client_encoding", b"UTF8"),
        (b"DateStyle", b"ISO, MDY"),
        (b"integer_datetimes", b"on"),
        (b"standard_conforming_strings", b"on"),
        (b"application_name", b"pgsplit console"),
    ] {
        out.extend_from_slice(&build::parameter_status(k, v));
    }
    out.extend_from_slice(&build::ready_for_query(TxStatus::Idle));
    out
}

/// The reply to one Query (without its ReadyForQuery).
async fn answer(ctx: &SessionDeps, text: &str, out: &mut BytesMut) {
    let table = match command::parse(text) {
        Ok(Command::Empty) => {
            out.extend_from_slice(&build::empty_query_response());
            return;
        }
        Ok(Command::Help) => {
            let mut t = table::Table::new(&[("command", table::Type::Text)]);
            for c in command::COMMANDS {
                t.push(vec![(*c).into()]);
            }
            t
        }
        Ok(Command::Servers) => views::servers(&ctx.health.get(), &pool_rows(ctx), Instant::now()),
        Ok(Command::Pools) => views::pools(&ctx.health.get(), &pool_rows(ctx)),
        Ok(Command::Clients) => views::clients(
            &ctx.health.get(),
            &ctx.clients.list(),
            std::time::SystemTime::now(),
            ctx.config().admin.show_addresses,
        ),
        Ok(Command::Config) => views::config(&ctx.config()),
        Ok(Command::Stats) => views::stats(&ctx.metrics.counters()),
        Ok(Command::Pause(timeout)) => pause(ctx, timeout).await,
        Ok(Command::Resume) => {
            ctx.pause.resume();
            tracing::info!("resumed from the admin console");
            one_row("resumed", "new work goes on")
        }
        Ok(Command::Reload) => {
            ctx.reload.notify_one();
            one_row(
                "reload",
                "asked: the configuration file is read again, as on SIGHUP (the log says how it went)",
            )
        }
        Ok(Command::Route(sql)) => route_table(ctx, &sql),
        Err(command::Unknown(why)) => {
            let message = format!(
                "pgsplit console: {why}; commands: {}",
                command::COMMANDS.join(", ")
            );
            out.extend_from_slice(&build::error_response(
                build::Severity::Error,
                sqlstate::SYNTAX_ERROR,
                &message,
            ));
            return;
        }
    };
    if let Err(e) = table.encode("SELECT", out) {
        out.clear();
        out.extend_from_slice(&build::error_response(
            build::Severity::Error,
            sqlstate::INTERNAL_ERROR,
            &format!("pgsplit console: {e}"),
        ));
    }
}

/// How long `PAUSE` waits for running transactions when not told.
const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `PAUSE`: new work waits from now on; answers once no session runs a
/// unit or has a transaction open, or when the timeout is over (pgsplit
/// stays paused either way: `RESUME` ends it).
async fn pause(ctx: &SessionDeps, timeout: Option<u64>) -> table::Table {
    ctx.pause.pause();
    tracing::warn!("paused from the admin console: new work waits until RESUME");
    let started = Instant::now();
    let limit = timeout.map_or(PAUSE_TIMEOUT, std::time::Duration::from_secs);
    let running = loop {
        let running = ctx.clients.list().iter().filter(|c| c.busy()).count();
        if running == 0 || started.elapsed() >= limit {
            break running;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let mut t = table::Table::new(&[
        ("paused", table::Type::Bool),
        ("waited_seconds", table::Type::Float8),
        ("still_running", table::Type::Int8),
    ]);
    t.push(vec![
        table::Value::Bool(true),
        table::Value::Float(started.elapsed().as_secs_f64()),
        table::Value::Int(i64::try_from(running).unwrap_or(i64::MAX)),
    ]);
    t
}

/// A (status, detail) answer.
fn one_row(status: &str, detail: &str) -> table::Table {
    let mut t = table::Table::new(&[("status", table::Type::Text), ("detail", table::Type::Text)]);
    t.push(vec![status.into(), detail.into()]);
    t
}

fn pool_rows(ctx: &SessionDeps) -> Vec<views::PoolRow> {
    ctx.pools.rows()
}

/// `SHOW ROUTE`: the statement classified and routed as a new session's
/// would be now (default state, the pod's floor if read-your-writes is
/// `pod`).
fn route_table(ctx: &SessionDeps, sql: &str) -> table::Table {
    let config = ctx.config();
    let health = ctx.health.get();
    let mut class = ctx.classifier.classify(sql);
    let optimistic = config.routing.optimistic_transactions && !config.replicas.is_empty();
    if optimistic && class.deferrable_begin.is_some() {
        return views::deferred_begin_route();
    }
    // A BEGIN then only reads opens the transaction where the reads go.
    let opens = optimistic && class.opens_with_reads.is_some();
    if opens {
        class.kind = crate::route::class::Kind::Read;
    }
    let floor = match config.routing.read_your_writes {
        ReadYourWrites::Pod => ctx.shared_floor(),
        _ => None,
    };
    let session = SessionView::new_session(floor, health.primary_answers);
    let replicas = ctx.replay.raise(&health.replicas);
    let placed = route(&class, &session, &replicas);
    let why_not_read = if opens {
        None
    } else {
        crate::route::classify::why_not_read(sql, &ctx.classifier.catalog())
    };
    views::route(&views::RouteFacts {
        class,
        why_not_read,
        placed,
        health: &health,
        replicas: &replicas,
        floor,
        config: &config,
    })
}
