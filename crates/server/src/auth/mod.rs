//! Who may call the API, and the record of what they changed.
//!
//! Every request (native API, Chronos API, metrics, and any router that adds [`layer`]) passes
//! one gate, in this order:
//!
//! 1. browser guards (`guard.rs`): request target length, `Host`, `Origin`, a write's content type;
//! 2. body size: a body over the limit is refused with 413 before a handler reads it;
//! 3. authentication: `Authorization: Bearer <token>`, or HTTP basic with the Chronos credentials;
//!    a server without auth treats every caller as an unscoped admin named `anonymous`;
//! 4. authorization: the role the route needs (`roles.rs`); a scoped token may manage only jobs
//!    in its scope, and not the Chronos API, agents or tokens;
//! 5. rate: a token bucket per caller (429 with `Retry-After`);
//! 6. the handler, which reads the caller as the [`Principal`] extractor to check job scopes;
//! 7. audit: every write is recorded with who, what, when, from where and its status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use tokio::time::Instant;
use tug_core::access::{Grant, Role, Scope};
use tug_core::JobSpec;
use tug_store::{AuditEntry, Store, StoreError, TokenRecord};

use crate::api::ApiError;
use crate::clock::SharedClock;

pub mod guard;
pub mod roles;
pub mod tokens;

/// HTTP basic credentials the Chronos API accepts, as Chronos did, mapped to a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// What requests with them may do.
    pub role: Role,
}

impl std::str::FromStr for BasicCredentials {
    type Err = String;
    /// `user:password` (role admin) or `user:password:role`.
    fn from_str(s: &str) -> Result<BasicCredentials, String> {
        let bad = || "expected USER:PASSWORD or USER:PASSWORD:ROLE (role: read, operate or admin)".to_string();
        let (user, rest) = s.split_once(':').ok_or_else(bad)?;
        let (password, role) = match rest.rsplit_once(':') {
            Some((p, r)) if r.parse::<Role>().is_ok() => (p, r.parse::<Role>().map_err(|e| e.to_string())?),
            _ => (rest, Role::Admin),
        };
        if user.is_empty() || password.is_empty() {
            return Err(bad());
        }
        Ok(BasicCredentials { user: user.to_owned(), password: password.to_owned(), role })
    }
}

/// Requests per second allowed to each caller, with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

/// Whether requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Never: every caller is an unscoped admin (`--insecure`).
    Open,
    /// Once any live token exists (the default on loopback: a single user may start open, and the
    /// first token they make locks the door).
    Auto,
    /// Always.
    Required,
}

/// How the gate behaves.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// When requests need a token (or the Chronos credentials).
    pub mode: AuthMode,
    /// Basic-auth credentials for the Chronos API.
    pub chronos_basic: Option<BasicCredentials>,
    /// Host names the server answers to, besides IP addresses and `localhost`.
    pub hosts: Vec<String>,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// Per-caller rate limit; `None`: unlimited.
    pub rate: Option<RateLimit>,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// In a server group: the secret followers send with the requests they pass on
    /// ([`PROXY_SECRET`]), so that the audit log may believe the client address and follower
    /// they name. `None`: such headers are ignored.
    pub proxy_secret: Option<String>,
}

/// The header with which a follower proves it is one ([`AuthConfig::proxy_secret`]).
pub const PROXY_SECRET: &str = "x-tug-proxy-secret";
/// The header naming the follower a request came through.
pub const PROXY_VIA: &str = "x-tug-via";
/// The header with the address of the client that called the follower.
pub const PROXY_CLIENT: &str = "x-tug-client";

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Auto,
            chronos_basic: None,
            hosts: Vec::new(),
            max_body: 1 << 20,
            rate: Some(RateLimit { per_second: 50.0, burst: 200.0 }),
            audit_retention: Duration::from_secs(90 * 86_400),
            proxy_secret: None,
        }
    }
}

/// The caller of a request, as the gate established it. Handlers take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, as the audit log names them: a token id, `basic:USER`, or `anonymous`.
    pub actor: String,
    /// What they may do.
    pub grant: Grant,
}

impl Principal {
    /// The caller on a server without auth.
    pub fn anonymous() -> Principal {
        Principal { actor: "anonymous".into(), grant: Grant::all() }
    }

    /// Succeeds when `job` is in the caller's scope; otherwise the job does not exist for them
    /// (404, so names outside the scope do not leak).
    pub fn see(&self, job: &JobSpec) -> Result<(), ApiError> {
        if self.grant.sees(job) {
            Ok(())
        } else {
            Err(StoreError::JobNotFound(job.name.clone()).into())
        }
    }

    /// Succeeds when the caller may create or change `job` as given: its labels or owner keep it in
    /// the caller's scope.
    pub fn may_write(&self, job: &JobSpec) -> Result<(), ApiError> {
        match &self.grant.scope {
            Some(scope) if !scope.covers(job) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "out_of_scope",
                format!("this token works only on jobs in its scope {scope}; give job {:?} that {}", job.name, what(scope)),
            )),
            _ => Ok(()),
        }
    }

    /// Succeeds when `service` is in the caller's scope (by its labels and owner, as a job);
    /// otherwise it does not exist for them (404).
    pub fn see_service(&self, service: &tug_core::ServiceSpec) -> Result<(), ApiError> {
        if self.grant.sees_service(service) {
            Ok(())
        } else {
            Err(StoreError::ServiceNotFound(service.name.clone()).into())
        }
    }

    /// Succeeds when the caller may create or change `service` as given.
    pub fn may_write_service(&self, service: &tug_core::ServiceSpec) -> Result<(), ApiError> {
        match &self.grant.scope {
            Some(scope) if !scope.covers_owned(&service.labels, &service.owner) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "out_of_scope",
                format!("this token works only in its scope {scope}; give service {:?} that {}", service.name, what(scope)),
            )),
            _ => Ok(()),
        }
    }

    /// The scope, if the caller has one.
    pub fn scope(&self) -> Option<&Scope> {
        self.grant.scope.as_ref()
    }
}

fn what(scope: &Scope) -> String {
    match scope {
        Scope::Label { key, value } => format!("label ({key} = {value:?})"),
        Scope::Owner(o) => format!("owner ({o:?})"),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Principal, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no_auth_layer", "this route is not behind the auth layer")
        })
    }
}

/// The gate's state: its settings, the tokens (cached from the store), the rate buckets.
pub struct Auth {
    config: AuthConfig,
    store: Arc<dyn Store>,
    clock: SharedClock,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// When the last read of the tokens from the store started.
    loaded: Mutex<Instant>,
    /// Held while the tokens are read again, so that reads do not pile up.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Auth {
    /// Loads the tokens from the store.
    pub async fn load(config: AuthConfig, store: Arc<dyn Store>, clock: SharedClock) -> Result<Arc<Auth>, StoreError> {
        let tokens = store.list_tokens().await?.into_iter().map(|t| (t.id.clone(), t)).collect();
        Ok(Arc::new(Auth {
            config,
            store,
            clock,
            tokens: RwLock::new(tokens),
            buckets: Mutex::default(),
            loaded: Mutex::new(Instant::now()),
            refreshing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Reads the tokens from the store again if the last read started more than `max_age` ago
    /// (and not since this call): a follower of a server group, whose tokens are made and revoked
    /// by the leader, sees them that late at most. Concurrent calls share one read.
    pub async fn refresh(&self, max_age: Duration) -> Result<(), StoreError> {
        let asked = Instant::now();
        let _one = self.refreshing.lock().await;
        let loaded = *self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.elapsed() < max_age || loaded >= asked {
            return Ok(());
        }
        let started = Instant::now();
        let tokens = self.store.list_tokens().await?.into_iter().map(|t| (t.id.clone(), t)).collect();
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) = started;
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// True when requests need credentials now.
    pub fn required(&self) -> bool {
        match self.config.mode {
            AuthMode::Open => false,
            AuthMode::Required => true,
            AuthMode::Auto => self.has_credentials(),
        }
    }

    /// True when some credential can get in: a live token or the Chronos credentials.
    pub fn has_credentials(&self) -> bool {
        let now = self.clock.now();
        self.config.chronos_basic.is_some()
            || self.tokens.read().unwrap_or_else(PoisonError::into_inner).values().any(|t| t.live(now))
    }

    /// Makes a token, stores it, and returns it (the only time its secret is seen).
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        scope: Option<Scope>,
        ttl: Option<Duration>,
    ) -> Result<tokens::Minted, StoreError> {
        let now = self.clock.now();
        let expires = ttl.map(|d| now + jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX));
        let minted = tokens::mint(name, role, scope, now, expires);
        self.store.create_token(&minted.record).await?;
        self.tokens.write().unwrap_or_else(PoisonError::into_inner).insert(minted.record.id.clone(), minted.record.clone());
        Ok(minted)
    }

    /// True when `token` is one of ours and works now (a token file kept from an earlier start).
    pub fn knows(&self, token: &str) -> bool {
        self.verify(token).is_some()
    }

    /// Revokes a token; it stops working at once.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let record = self.store.revoke_token(id, self.clock.now()).await?;
        self.tokens.write().unwrap_or_else(PoisonError::into_inner).insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut all: Vec<_> = self.tokens.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The token's record if the token is one of ours and live.
    fn verify(&self, token: &str) -> Option<TokenRecord> {
        let id = tokens::id_of(token)?;
        let record = self.tokens.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()?;
        (tokens::matches(&record, token) && record.live(self.clock.now())).then_some(record)
    }

    /// Who is calling, from the `Authorization` header.
    fn authenticate(&self, header: Option<&HeaderValue>) -> Result<Principal, ApiError> {
        let unauthorized = |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(value) = header else {
            if !self.required() {
                return Ok(Principal::anonymous());
            }
            return Err(unauthorized(
                "this server needs a token: pass --token or set TUG_TOKEN (the API takes `Authorization: Bearer \
                 <token>`); an admin makes one with `tug token create --role read`"
                    .into(),
            ));
        };
        let value = value.to_str().unwrap_or("");
        if let Some(token) = value.strip_prefix("Bearer ").map(str::trim) {
            let Some(id) = tokens::id_of(token) else {
                return Err(unauthorized("the token is malformed: tokens look like tug_<id>_<secret>".into()));
            };
            let known = self.tokens.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned();
            return match known {
                Some(r) if tokens::matches(&r, token) => {
                    let now = self.clock.now();
                    if let Some(at) = r.revoked_at {
                        Err(unauthorized(format!("token {id} was revoked at {at}; ask an admin for a new one")))
                    } else if let Some(at) = r.expires_at.filter(|e| now >= *e) {
                        Err(unauthorized(format!("token {id} expired at {at}; ask an admin for a new one")))
                    } else {
                        Ok(Principal { actor: r.id.clone(), grant: Grant { role: r.role, scope: r.scope.clone() } })
                    }
                }
                _ => Err(unauthorized(format!("token {id} is not valid here; check TUG_TOKEN or --token"))),
            };
        }
        if let Some(encoded) = value.strip_prefix("Basic ").map(str::trim) {
            if let (Some(creds), Some((user, password))) = (&self.config.chronos_basic, decode_basic(encoded)) {
                if creds.user == user && tokens::same_secret(&creds.password, &password) {
                    return Ok(Principal {
                        actor: format!("basic:{user}"),
                        grant: Grant { role: creds.role, scope: None },
                    });
                }
            }
            return Err(unauthorized("wrong user name or password".into()));
        }
        Err(unauthorized("unsupported Authorization scheme: use `Bearer <token>`".into()))
    }

    /// Takes one request from `actor`'s bucket; the wait until the next one is allowed if empty.
    fn take(&self, actor: &str) -> Result<(), Duration> {
        let Some(rate) = self.config.rate else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(actor.to_owned()).or_insert(Bucket { tokens: rate.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second))
        }
    }

    /// Deletes audit entries older than the retention, every hour, until `stop` completes.
    pub async fn prune_audit(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let keep = jiff::SignedDuration::try_from(self.config.audit_retention).unwrap_or(jiff::SignedDuration::MAX);
            let before = self.clock.now().checked_sub(keep).unwrap_or(Timestamp::MIN);
            match self.store.prune_audit(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned the audit log"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    }
}

fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64_decode(encoded)?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Standard base64 (with padding), as HTTP basic auth uses it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// The gate as a middleware; add it with `Router::layer(axum::middleware::from_fn_with_state(auth, auth::gate))`
/// (as [`crate::api::router`] does) so that every route, the fallback included, is behind it.
pub async fn gate(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let write = guard::is_write(req.method());
    let mut entry = write.then(|| AuditEntry {
        id: 0,
        at: Timestamp::UNIX_EPOCH,
        actor: "unauthenticated".into(),
        remote: remote_of(&auth, &req),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        job: job_of(req.uri().path()),
        status: 0,
    });
    let (resp, actor) = match pass(&auth, req).await {
        Ok((req, principal, body_job)) => {
            if let Some(e) = entry.as_mut() {
                e.job = e.job.take().or(body_job);
            }
            (next.run(req).await, Some(principal.actor))
        }
        Err((resp, actor)) => (resp, actor),
    };
    if let Some(mut entry) = entry {
        if let Some(actor) = actor {
            entry.actor = actor;
        }
        entry.status = resp.status().as_u16();
        entry.at = auth.clock.now();
        if entry.job.is_none() {
            entry.job = resp.extensions().get::<AuditJob>().map(|j| j.0.clone());
        }
        if let Err(e) = auth.store.append_audit(&entry).await {
            tracing::warn!(error = %e, path = %entry.path, "cannot write the audit log");
        }
    }
    resp
}

/// The client's address for the audit log: the peer's, or, for a request a follower of the group
/// passed on (proven by the group's secret), `CLIENT via FOLLOWER`.
fn remote_of(auth: &Auth, req: &Request) -> String {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "-".to_owned(), |c| c.0.to_string());
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let proven = match (&auth.config.proxy_secret, header(PROXY_SECRET)) {
        (Some(secret), Some(sent)) => tokens::same_secret(secret, sent),
        _ => false,
    };
    match (proven, header(PROXY_CLIENT), header(PROXY_VIA)) {
        (true, Some(client), Some(via)) => format!("{client} via {via}"),
        _ => peer,
    }
}

/// Names the job a write concerned, when its path does not (a handler puts it in its response's
/// extensions).
#[derive(Debug, Clone)]
pub struct AuditJob(pub String);

/// Runs steps 1–5 of the gate: the request (its body read and put back), the caller, and the job
/// its body names; or the refusal, and who was refused when known.
async fn pass(auth: &Auth, req: Request) -> Result<(Request, Principal, Option<String>), (Response, Option<String>)> {
    let (mut parts, body) = req.into_parts();
    let route = parts.extensions.get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    guard::check(&parts.method, &parts.uri, &parts.headers, &auth.config.hosts).map_err(|e| (e.into_response(), None))?;
    let limit = auth.config.max_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
        .into_response()
    };
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err((too_large(), None));
    }
    let needs = roles::required(&parts.method, &route, parts.uri.path());
    if needs.is_none() {
        return Ok((Request::from_parts(parts, body), Principal::anonymous(), None));
    }
    let principal = match auth.authenticate(parts.headers.get(AUTHORIZATION)) {
        Ok(p) => p,
        Err(e) => {
            let mut resp = e.into_response();
            if auth.required() {
                // Chronos clients send their basic credentials only when challenged for them.
                let chronos = auth.config.chronos_basic.is_some() && (route.contains("/scheduler") || route == "/metrics");
                let challenge = if chronos { "Basic realm=\"tug\"" } else { "Bearer realm=\"tug\"" };
                resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            return Err((resp, None));
        }
    };
    let refuse = |e: ApiError| (e.into_response(), Some(principal.actor.clone()));
    if let Some(role) = needs {
        if !principal.grant.allows(role) {
            return Err(refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{} {} needs a token with role {role} or above; this one has role {}",
                    parts.method,
                    parts.uri.path(),
                    principal.grant.role
                ),
            )));
        }
        let job_route = route.starts_with("/api/v1/jobs") || route.starts_with("/api/v1/runs") || route == "/api/v1/schedule/preview";
        // Agents, pools and metrics say nothing of a job's spec, runs or logs; the Chronos API,
        // the event stream and the UI's pages do, so they need an unscoped token.
        let reads_everything = role == Role::Read
            && (route.starts_with("/api/v1/agents")
                || route.starts_with("/api/v1/net")
                || route == "/metrics"
                || route.starts_with("/ui/app."));
        if let Some(scope) = principal.scope() {
            if !job_route && !reads_everything {
                return Err(refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "out_of_scope",
                    format!(
                        "a token scoped to {scope} works on the native API's jobs and runs only; {} {} needs an \
                         unscoped token",
                        parts.method,
                        parts.uri.path()
                    ),
                )));
            }
        }
    }
    if principal.actor != "anonymous" {
        if let Err(wait) = auth.take(&principal.actor) {
            let secs = wait.as_secs() + 1;
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from {}; retry in {secs} s", principal.actor),
            )
            .into_response();
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            return Err((resp, Some(principal.actor.clone())));
        }
    }
    // Only a job document is read here (for the audit log's job name); other bodies go to their
    // handlers as they come (a stream that never ends, too), held to the limit by the router's
    // `DefaultBodyLimit`.
    let (body, body_job) = if guard::is_write(&parts.method) && job_body(&route) {
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| (too_large(), Some(principal.actor.clone())))?;
        let job = job_named_in(&bytes);
        (Body::from(bytes), job)
    } else {
        (body, None)
    };
    parts.extensions.insert(principal.clone());
    Ok((Request::from_parts(parts, body), principal, body_job))
}

/// True for routes whose body is a job document.
fn job_body(route: &str) -> bool {
    let chronos = route.strip_prefix("/v1").unwrap_or(route);
    matches!(route, "/api/v1/jobs" | "/api/v1/jobs/{name}")
        || matches!(chronos, "/scheduler/iso8601" | "/scheduler/dependency")
}

/// The job a write's path names.
fn job_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let named = match segments.as_slice() {
        ["api", "v1", "jobs", name, ..] => Some(*name),
        ["scheduler" | "v1", .., "job" | "kill", name] if *name != "stat" => Some(*name),
        _ => None,
    };
    named.map(percent_decode)
}

/// The `name` of the job document in a body, JSON or TOML.
fn job_named_in(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    if let Ok(n) = serde_json::from_slice::<Named>(body) {
        return Some(n.name);
    }
    // A TOML job file: its top-level `name = "..."` line.
    std::str::from_utf8(body).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let c: BasicCredentials = "ops:pa:ss:read".parse().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str(), c.role), ("ops", "pa:ss", Role::Read));
        let c: BasicCredentials = "ops:secret".parse().unwrap();
        assert_eq!(c.role, Role::Admin);
        assert!("ops".parse::<BasicCredentials>().unwrap_err().contains("USER:PASSWORD"));
        assert!(":x".parse::<BasicCredentials>().is_err());
    }

    #[test]
    fn base64_and_job_names() {
        assert_eq!(decode_basic("dXNlcjpwYXNz"), Some(("user".into(), "pass".into())));
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode("!!"), None);
        assert_eq!(job_of("/api/v1/jobs/a%2Eb/run"), Some("a.b".into()));
        assert_eq!(job_named_in(br#"{"name":"x","command":"true"}"#), Some("x".into()));
        assert_eq!(job_named_in(b"name = \"t\"\ncommand = \"true\"\n"), Some("t".into()));
        assert!(job_body("/v1/scheduler/iso8601") && job_body("/api/v1/jobs") && !job_body("/api/v1/tokens"));
        assert_eq!(job_of("/scheduler/job/j1"), Some("j1".into()));
        assert_eq!(job_of("/v1/scheduler/task/kill/j2"), Some("j2".into()));
        assert_eq!(job_of("/api/v1/agents/a1/drain"), None);
    }
}
