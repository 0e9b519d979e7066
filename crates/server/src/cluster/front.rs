//! A follower's HTTP front: `GET /api/v1/cluster`, `/healthz` and the reads of jobs and runs
//! (`GET /api/v1/jobs`, `/jobs/{name}`, `/jobs/{name}/runs`, `/runs/{id}`) answered here from
//! the store, behind the same gate (tokens, roles, scopes) as on the leader; every other request
//! passed to the leader's API as it came (method, path, query, headers, body) and its answer
//! passed back, streamed (the event stream too), with headers that name this follower and the
//! client (proven by the group's secret, so the leader's audit log records where a write came
//! from). Without a leader (an election in progress) the answer is a 503 that says to retry.

use std::sync::Arc;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::Group;
use crate::api::{ApiError, ReadState, jobs, runs};
use crate::auth::{Auth, PROXY_CLIENT, PROXY_SECRET, PROXY_VIA};
use crate::clock::SharedClock;

/// How stale a follower's copy of the API tokens may be when it answers a request itself: not at
/// all. The leader makes and revokes tokens; a token revoked there must not work here a moment
/// longer. Requests that arrive together share one read of the store (one read of etcd per
/// burst, beside the reads the answers make anyway); requests passed to the leader are checked
/// there.
const TOKENS_FOR: Duration = Duration::ZERO;
/// How long the leader has to connect, when a request is passed on: a leader cut off from the
/// network must not hold the client until TCP gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request body passed on (the leader applies its own, usually smaller, limit).
const MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct Front {
    group: Arc<Group>,
    clock: SharedClock,
    http: reqwest::Client,
    /// The group's secret, sent with passed-on requests ([`crate::auth::AuthConfig::proxy_secret`]).
    secret: Option<HeaderValue>,
}

/// Serves the follower's front on `listener` until `stop` completes. `auth` is the gate of the
/// requests answered here (loaded from the group's store; its tokens are re-read as they age).
/// Requests go on to an https leader trusting `leader_tls`.
pub async fn serve_follower(
    listener: tokio::net::TcpListener,
    group: Arc<Group>,
    clock: SharedClock,
    auth: Arc<Auth>,
    tls: Option<tug_tls::ServerTls>,
    leader_tls: tug_tls::ClientTls,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // (`http::serve` hands the handlers the peer's address, as `ConnectInfo`.)
    let app = follower_router(group, clock, auth, &leader_tls).map_err(std::io::Error::other)?;
    match tls {
        Some(tls) => {
            let listener = tug_tls::TlsListener::new(listener, tls, "API (following)")?;
            crate::http::serve(listener, app, crate::http::DEFAULT_HEADER_TIMEOUT, stop).await;
        }
        None => crate::http::serve(listener, app, crate::http::DEFAULT_HEADER_TIMEOUT, stop).await,
    }
    Ok(())
}

/// The follower's router; requests it passes on reach an https leader trusting `leader_tls`.
pub fn follower_router(group: Arc<Group>, clock: SharedClock, auth: Arc<Auth>, leader_tls: &tug_tls::ClientTls) -> Result<Router, tug_tls::TlsError> {
    // reqwest needs the crypto provider installed before it builds a client.
    tug_tls::provider();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(leader_tls.for_http()?)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let secret = auth.config().proxy_secret.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
    let reads = ReadState { store: Arc::new(group.store().clone()), clock: clock.clone() };
    let front = Front { group, clock, http, secret };
    let leader = any(pass).with_state(front.clone());
    let gate = middleware::from_fn_with_state(auth, follower_gate);
    // Each read by GET here, behind the gate; any other method on its path to the leader.
    let read = |route: axum::routing::MethodRouter<ReadState>| {
        route.with_state(reads.clone()).route_layer(gate.clone()).fallback_service(leader.clone())
    };
    Ok(Router::new()
        .route("/api/v1/jobs", read(get(jobs::list)))
        .route("/api/v1/jobs/{name}", read(get(jobs::show)))
        .route("/api/v1/jobs/{name}/runs", read(get(runs::list)))
        .route("/api/v1/runs/{id}", read(get(runs::show)))
        .route("/api/v1/cluster", get(status).with_state(front).route_layer(gate))
        .route("/healthz", get(|| async { "ok" }))
        .fallback_service(leader))
}

/// The API's gate, with the tokens re-read from the store first (see [`TOKENS_FOR`]): one made
/// a moment ago works, one revoked a moment ago does not.
async fn follower_gate(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    if let Err(e) = auth.refresh(TOKENS_FOR).await {
        return unavailable(format!("cannot read the API tokens from etcd: {e}"));
    }
    crate::auth::gate(State(auth), req, next).await
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
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
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
        // What a client says of proxies is not passed on: only this follower speaks for itself.
        let ours = [PROXY_SECRET, PROXY_VIA, PROXY_CLIENT].contains(&name.as_str());
        if !hop_by_hop(name) && !ours {
            out = out.header(name, value);
        }
    }
    if let Some(secret) = &front.secret {
        out = out.header(PROXY_SECRET, secret).header(PROXY_VIA, front.group.election().me().name.as_str());
        if let Some(client) = client {
            out = out.header(PROXY_CLIENT, client);
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
