//! The admin HTTP listener: `/healthz` (the process runs its loops), `/readyz`
//! (a primary is known and reachable), `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::sync::Arc;

use crate::backend::health::{Health, PrimaryState};
use crate::backend::{Pools, Servers};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics::Metrics;
use crate::shared::Shared;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the admin listener reads, built by `app`.
pub struct AdminDeps {
    pub lifecycle: Lifecycle,
    pub health: Arc<Health>,
    pub servers: Arc<Shared<Servers>>,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Readiness: can this pgsplit serve writes right now?
pub fn readiness(ctx: &AdminDeps) -> Result<(), String> {
    if ctx.lifecycle.phase() >= Phase::Draining {
        return Err("draining".into());
    }
    let health = ctx.health.get();
    match health.primary {
        PrimaryState::Known(_) if health.primary_answers => Ok(()),
        // Writes wait while it does not answer (see `primary_answers`).
        PrimaryState::Known(_) => Err("the primary missed its last health probe".into()),
        PrimaryState::Unknown => Err("primary not probed yet".into()),
        PrimaryState::None => Err("no reachable primary".into()),
        PrimaryState::Fenced => Err("more than one server claims to be primary (fenced)".into()),
    }
}

async fn handle(
    ctx: Arc<AdminDeps>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, text, "ok\n".into()),
        "/readyz" => match readiness(&ctx) {
            Ok(()) => respond(StatusCode::OK, text, "ready\n".into()),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let servers = ctx.servers.get();
            let pools: Vec<(String, u32, u32)> = ctx
                .pools
                .stats()
                .into_iter()
                .filter_map(|(id, idle, active)| {
                    servers.get(id).map(|s| (s.name.clone(), idle, active))
                })
                .collect();
            let body = ctx.metrics.render(&ctx.health.get(), &pools);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        _ => respond(StatusCode::NOT_FOUND, text, "not found\n".into()),
    })
}

/// Serves until the lifecycle reaches `Stopped`.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminDeps>) {
    let mut stopped = std::pin::pin!(ctx.lifecycle.reached(Phase::Stopped));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            () = &mut stopped => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = conn.await;
        });
    }
}
