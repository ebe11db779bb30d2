//! Serving a router on a TCP listener so that slow or greedy clients cannot starve it: both
//! HTTP listeners (the admin one and the public link one) run through [`serve`].
//!
//! - A client must send its request headers within `header_read_timeout` (hyper's HTTP/1
//!   header timer, which also closes keep-alive connections left idle that long), and the
//!   whole request — waiting for a slot, reading the body, answering — must finish within
//!   `request_timeout` (else 408).
//! - At most `max_connections` connections are open at once; past that the listener stops
//!   accepting until one closes (new ones wait in the kernel's backlog), so one listener can
//!   never use up the process's file descriptors and silence the other.
//! - At most `max_in_flight` requests are handled at once; the rest wait their turn.
//! - Request bodies are capped at `max_body` bytes: a larger `Content-Length` is refused with
//!   413 before any of it is read, and a chunked body is cut off at the cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_body: usize,
}

impl Limits {
    /// The admin listener's: health checks and a few operators on loopback.
    pub const ADMIN: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_in_flight: 16,
        max_body: 8 * 1024,
    };
}

/// How long an accept error (out of file descriptors) pauses accepting, so the loop does not
/// spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` within `limits` until `stop`; then stops accepting and waits
/// for the open connections to finish (the caller bounds that wait). Handlers can extract
/// `ConnectInfo<SocketAddr>`: the peer's address.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // The last layer added is the outermost: the timeout covers waiting for a slot too.
    let router = router
        .layer(RequestBodyLimitLayer::new(limits.max_body))
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_in_flight.max(1)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Held for the connection's life: its slot frees when it closes.
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
