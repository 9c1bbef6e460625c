//! The operations endpoint both processes serve (`/healthz`, `/readyz`, `/metrics`): hyper's
//! HTTP/1 server on a TCP listener, with the routes as a plain function from path to reply.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// What a route answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn not_found() -> Self {
        Reply::text(404, "not found\n")
    }

    /// A Prometheus registry in the OpenMetrics text format.
    pub fn metrics(registry: &prometheus_client::registry::Registry) -> Self {
        let mut body = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        }
    }
}

/// Maps a request path to a reply. Called for GET and HEAD only.
pub type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves `routes` until the task is dropped. Each connection gets 5 s to send its headers
/// and 30 s in all, so a slow client cannot hold resources.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let reply = match *req.method() {
                    Method::GET | Method::HEAD => routes(req.uri().path()),
                    _ => Reply::text(405, "only GET and HEAD\n"),
                };
                async move { Ok::<_, Infallible>(response(reply)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    if let Ok(v) = reply.content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
