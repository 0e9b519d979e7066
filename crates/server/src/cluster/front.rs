//! A follower's HTTP front: `GET /api/v1/cluster` and `/healthz` answered here, every other
//! request passed to the leader's API as it came (method, path, query, headers, body) and its
//! answer passed back, streamed (the event stream too). Without a leader (an election in
//! progress) the answer is a 503 that says to retry.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Group;
use crate::api::ApiError;
use crate::clock::SharedClock;

/// The largest request body passed on (the leader applies its own, usually smaller, limit).
const MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct Front {
    group: Arc<Group>,
    clock: SharedClock,
    http: reqwest::Client,
}

/// Serves the follower's front on `listener` until `stop` completes.
pub async fn serve_follower(
    listener: tokio::net::TcpListener,
    group: Arc<Group>,
    clock: SharedClock,
    tls: Option<tug_tls::ServerTls>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = follower_router(group, clock);
    match tls {
        Some(tls) => {
            let listener = tug_tls::TlsListener::new(listener, tls, "API (following)")?;
            crate::http::serve(listener, app, crate::http::DEFAULT_HEADER_TIMEOUT, stop).await;
        }
        None => crate::http::serve(listener, app, crate::http::DEFAULT_HEADER_TIMEOUT, stop).await,
    }
    Ok(())
}

/// The follower's router.
pub fn follower_router(group: Arc<Group>, clock: SharedClock) -> Router {
    // reqwest needs the crypto provider installed before it builds a client.
    tug_tls::provider();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("an HTTP client");
    let front = Front { group, clock, http };
    Router::new()
        .route("/api/v1/cluster", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(pass)
        .with_state(front)
}

async fn status(State(front): State<Front>) -> Response {
    match front.group.status(front.clock.now()).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => unavailable(format!("cannot read the group's state from etcd: {e}")),
    }
}

fn unavailable(message: String) -> Response {
    let mut resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message).into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// Headers that belong to one hop, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "host"
    )
}

async fn pass(State(front): State<Front>, req: Request) -> Response {
    let leader = match front.group.election().leader().await {
        Ok(Some(l)) if l.name != front.group.election().me().name => l,
        Ok(_) => {
            return unavailable("no server leads the group right now (an election is under way); retry in a few seconds".into());
        }
        Err(e) => return unavailable(format!("cannot find the leader: {e}; retry in a few seconds")),
    };
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.api.trim_end_matches('/'));
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request body: {e}")).into_response();
        }
    };
    let mut out = front.http.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let mut answer = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !hop_by_hop(name) {
                    answer = answer.header(name, value);
                }
            }
            answer.header("x-tug-leader", leader.name.as_str()).body(Body::from_stream(resp.bytes_stream())).unwrap_or_else(|e| {
                unavailable(format!("the leader's answer could not be passed on: {e}"))
            })
        }
        Err(e) => unavailable(format!("the leader {} at {} did not answer: {e}; retry in a few seconds", leader.name, leader.api)),
    }
}
