//! The HTTP/1 task that serves `GET /metrics` (hyper, one small task per
//! connection, bounded).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Metrics, Published, text};

/// Connections served at once. A scraper needs one; the bound keeps a
/// client that opens many (the endpoint may be on a LAN address) from
/// costing more than a few tasks. Connections beyond it wait in the
/// kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

/// Longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one connection is kept, keep-alive included: Prometheus opens a
/// new one when this one closes.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on metrics.listen = {addr}: {source} (choose a free address and port, or leave metrics.listen unset)"
)]
pub struct MetricsError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// A bound endpoint, not serving yet: bound at start, before the firewall
/// is touched, so that a taken port stops astban harmlessly.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Binds `addr` (`metrics.listen`).
    pub async fn bind(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError { addr, source })?;
        Ok(Endpoint { listener })
    }

    /// The address bound (the real port when the config asked for 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `metrics` and `published` until `shutdown`; connections
    /// still open then are closed.
    pub async fn serve(self, metrics: Metrics, published: Published, shutdown: CancellationToken) {
        let registry = Arc::new(metrics.registry(published));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.listener.accept(), if connections.len() < MAX_CONNECTIONS => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: the next accept may work.
                    tracing::warn!("metrics endpoint: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = Arc::clone(&registry);
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let registry = Arc::clone(&registry);
                    async move { Ok::<_, Infallible>(respond(&registry, &request)) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                // A connection past its lifetime is simply closed.
                if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    tracing::debug!("metrics endpoint: connection ended: {e}");
                }
            });
        }
        connections.shutdown().await;
    }
}

/// `GET /metrics` renders the registry in the format the client accepts;
/// anything else is refused.
fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "astban serves /metrics only\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!("metrics endpoint: cannot encode the metrics: {e}");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    let openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(text::wants_openmetrics);
    let (body, content_type) = match openmetrics {
        true => (body, text::OPENMETRICS),
        false => (text::to_classic(&body), text::CLASSIC),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
