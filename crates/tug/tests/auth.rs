//! The API's gate against a real server: tokens and roles on every endpoint of both APIs, scopes,
//! expiry and revocation, browser guards, limits, the audit log, and JSON errors.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use common::*;
use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};
use tug_core::access::Role;
use tug_server::auth::{AuthMode, RateLimit};
use tug_server::clock::Clock;

/// The system clock, moved forward on demand (for expiry).
#[derive(Default)]
struct ShiftedClock(AtomicI64);

impl Clock for ShiftedClock {
    fn now(&self) -> Timestamp {
        Timestamp::now() + SignedDuration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// Sends a request with an optional bearer token; status and body (JSON when it parses).
async fn call(s: &TestServer, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let root = s.base.trim_end_matches("/api/v1");
    let mut r = s.http.request(method, format!("{root}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Every endpoint of both APIs, with the role it needs.
fn endpoints() -> Vec<(Method, &'static str, Role)> {
    use Method as M;
    use Role::*;
    let mut all = vec![
        (M::GET, "/metrics", Read),
        (M::GET, "/api/v1/jobs", Read),
        (M::POST, "/api/v1/jobs", Admin),
        (M::GET, "/api/v1/jobs/j", Read),
        (M::PUT, "/api/v1/jobs/j", Admin),
        (M::DELETE, "/api/v1/jobs/j", Admin),
        (M::POST, "/api/v1/jobs/j/run", Operate),
        (M::POST, "/api/v1/jobs/j/pause", Operate),
        (M::POST, "/api/v1/jobs/j/resume", Operate),
        (M::POST, "/api/v1/jobs/j/kill", Operate),
        (M::GET, "/api/v1/jobs/j/runs", Read),
        (M::GET, "/api/v1/runs/1", Read),
        (M::POST, "/api/v1/runs/1/kill", Operate),
        (M::GET, "/api/v1/runs/1/log", Read),
        (M::GET, "/api/v1/schedule/preview?expr=@daily", Read),
        (M::GET, "/api/v1/agents", Read),
        (M::GET, "/api/v1/agents/local", Read),
        (M::POST, "/api/v1/agents/local/drain", Admin),
        (M::POST, "/api/v1/agents/local/undrain", Admin),
        (M::GET, "/api/v1/net/pools", Read),
        (M::POST, "/api/v1/net/pools", Admin),
        (M::GET, "/api/v1/net/pools/p", Read),
        (M::DELETE, "/api/v1/net/pools/p", Admin),
        (M::GET, "/api/v1/net/addresses", Read),
        (M::GET, "/api/v1/cluster", Read),
        // A bad parameter: a token that passes gets 400 at once rather than an endless stream.
        (M::GET, "/api/v1/events?colour=red", Read),
        (M::GET, "/api/v1/services", Read),
        (M::POST, "/api/v1/services", Admin),
        (M::GET, "/api/v1/services/s", Read),
        (M::PUT, "/api/v1/services/s", Admin),
        (M::DELETE, "/api/v1/services/s", Admin),
        (M::POST, "/api/v1/services/s/scale", Operate),
        (M::GET, "/api/v1/services/s/replicas/0/log", Read),
        (M::GET, "/api/v1/operations/1", Read),
        (M::GET, "/api/v1/services/s/releases", Read),
        (M::POST, "/api/v1/services/s/releases", Admin),
        (M::GET, "/api/v1/releases/rel-1", Read),
        (M::POST, "/api/v1/releases/rel-1/brake", Operate),
        (M::POST, "/api/v1/releases/rel-1/resume", Operate),
        (M::POST, "/api/v1/releases/rel-1/retry", Operate),
        (M::POST, "/api/v1/releases/rel-1/revoke", Operate),
        (M::GET, "/", Read),
        (M::GET, "/jobs/j", Read),
        (M::GET, "/agents", Read),
        (M::GET, "/graph", Read),
        (M::GET, "/runs/1", Read),
        (M::POST, "/ui/jobs/j/pause", Operate),
        (M::POST, "/ui/jobs/j/delete", Admin),
        (M::POST, "/ui/runs/1/kill", Operate),
        (M::POST, "/ui/agents/local/drain", Admin),
        (M::GET, "/new", Read),
        (M::GET, "/jobs/j/edit", Read),
        (M::POST, "/ui/job-form", Admin),
        (M::GET, "/services", Read),
        (M::GET, "/services/s", Read),
        (M::GET, "/releases/rel-1", Read),
        (M::POST, "/ui/services/s/scale", Operate),
        (M::POST, "/ui/releases/rel-1/brake", Operate),
        (M::GET, "/api/v1/tokens", Admin),
        (M::POST, "/api/v1/tokens", Admin),
        (M::DELETE, "/api/v1/tokens/x", Admin),
        (M::GET, "/api/v1/audit", Admin),
    ];
    for prefix in ["/scheduler", "/v1/scheduler"] {
        let chronos: [(Method, &str, Role); 16] = [
            (M::GET, "/jobs", Read),
            (M::DELETE, "/jobs", Admin),
            (M::GET, "/jobs/search", Read),
            (M::GET, "/jobs/summary", Read),
            (M::POST, "/iso8601", Admin),
            (M::PUT, "/iso8601", Admin),
            (M::POST, "/dependency", Admin),
            (M::PUT, "/dependency", Admin),
            (M::GET, "/job/j", Read),
            (M::PUT, "/job/j", Operate),
            (M::DELETE, "/job/j", Admin),
            (M::GET, "/job/stat/j", Read),
            (M::DELETE, "/task/kill/j", Operate),
            (M::GET, "/graph/dot", Read),
            (M::GET, "/graph/csv", Read),
            (M::GET, "/stats/99thPercentile", Read),
        ];
        for (m, p, r) in chronos {
            all.push((m, Box::leak(format!("{prefix}{p}").into_boxed_str()), r));
        }
    }
    all
}

async fn token(s: &TestServer, admin: &str, body: Value) -> String {
    let (st, v) = call(s, Some(admin), Method::POST, "/api/v1/tokens", Some(body)).await;
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn required(c: &mut tug_server::embedded::EmbeddedConfig) {
    c.auth.mode = AuthMode::Required;
    c.auth.rate = None;
}

async fn admin_of(s: &TestServer) -> String {
    let auth = &s.server.as_ref().unwrap().auth;
    auth.create_token("admin", Role::Admin, None, None).await.unwrap().token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_a_token_with_a_large_enough_role() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), required).await;
    let admin = admin_of(&s).await;
    let read = token(&s, &admin, json!({"role": "read"})).await;
    let operate = token(&s, &admin, json!({"role": "operate"})).await;

    let (st, v) = call(&s, None, Method::GET, "/api/v1/healthz", None).await;
    assert_eq!(st, 200, "{v}");
    // The API's description is public, as its documentation is.
    let (st, v) = call(&s, None, Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!((st, v["openapi"].is_string()), (200, true), "{v}");
    tug_tls::provider();
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = s.base.trim_end_matches("/api/v1");
    for (method, path, role) in endpoints() {
        if method == Method::GET && matches!(path, "/" | "/jobs/j" | "/agents" | "/graph" | "/new" | "/jobs/j/edit" | "/services" | "/services/s" | "/releases/rel-1" | "/runs/1") {
            // A browser on a page is sent to the login form instead.
            let r = no_redirects.get(format!("{root}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 303, "{path}");
            assert!(r.headers()["location"].to_str().unwrap().starts_with("/login?next="), "{path}");
        } else {
            let (st, v) = call(&s, None, method.clone(), path, None).await;
            assert_eq!(st, 401, "{method} {path} without a token: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("TUG_TOKEN") && msg.contains("Authorization: Bearer"), "{msg}");
        }
        for (weaker, t) in [(Role::Read, &read), (Role::Operate, &operate)] {
            let (st, v) = call(&s, Some(t), method.clone(), path, None).await;
            if weaker < role {
                assert_eq!(st, 403, "{method} {path} with role {weaker}: {v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains(&format!("needs a token with role {role}")), "{msg}");
            } else {
                assert!(st != 401 && st != 403, "{method} {path} with role {weaker}: {st} {v}");
            }
        }
    }
    // A wrong secret for a real id, and garbage.
    let forged = format!("{}{}", &read[..17], "0".repeat(64));
    let (st, v) = call(&s, Some(&forged), Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("is not valid here"), "{v}");
    let (st, v) = call(&s, Some("hunter2"), Method::GET, "/api/v1/jobs", None).await;
    assert_eq!((st, v["error"]["message"].as_str().unwrap()), (401, "the token is malformed: tokens look like tug_<id>_<secret>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_are_revoked_and_their_secret_is_never_shown_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ShiftedClock::default());
    let s = TestServer::start_with(dir.path(), clock.clone(), required).await;
    let admin = admin_of(&s).await;
    let short = token(&s, &admin, json!({"role": "read", "ttl": "1h", "name": "short"})).await;
    let doomed = token(&s, &admin, json!({"role": "read"})).await;
    assert_eq!(call(&s, Some(&short), Method::GET, "/api/v1/jobs", None).await.0, 200);

    let (_, list) = call(&s, Some(&admin), Method::GET, "/api/v1/tokens", None).await;
    let text = list.to_string();
    assert!(!text.contains(&short[17..]) && !text.contains("hash"), "{text}");
    assert_eq!(list.as_array().unwrap().len(), 3);

    let id = &doomed[4..16];
    let (st, v) = call(&s, Some(&admin), Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["revoked_at"].is_string());
    let (st, v) = call(&s, Some(&doomed), Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(st, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains(&format!("token {id} was revoked")), "{v}");

    clock.0.store(7200, Ordering::SeqCst);
    let (st, v) = call(&s, Some(&short), Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(st, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired at"), "{v}");

    for (body, needle) in [
        (json!({"role": "root"}), "invalid role \"root\": expected one of read, operate, admin"),
        (json!({"role": "read", "scope": "team=data"}), "invalid scope \"team=data\""),
        (json!({"role": "read", "ttl": "soon"}), "ttl: invalid duration \"soon\""),
        (json!({"role": "read", "ttl": "0s"}), "ttl: must be more than zero"),
        (json!({"role": "read", "colour": "red"}), "unknown field `colour`"),
    ] {
        let (st, v) = call(&s, Some(&admin), Method::POST, "/api/v1/tokens", Some(body)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
    }
    let (st, v) = call(&s, Some(&admin), Method::DELETE, "/api/v1/tokens/nope", None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("token_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_sees_and_changes_only_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), required).await;
    let admin = admin_of(&s).await;
    let data = token(&s, &admin, json!({"role": "admin", "scope": "label:team=data"})).await;
    let job = |name: &str, team: &str| json!({"name": name, "schedule": "@yearly", "command": "true", "labels": {"team": team}});
    assert_eq!(call(&s, Some(&admin), Method::POST, "/api/v1/jobs", Some(job("theirs", "web"))).await.0, 201);
    assert_eq!(call(&s, Some(&data), Method::POST, "/api/v1/jobs", Some(job("ours", "data"))).await.0, 201);
    let (st, v) = call(&s, Some(&data), Method::POST, "/api/v1/jobs", Some(job("sneaky", "web"))).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("label (team = \"data\")"), "{v}");

    let (_, list) = call(&s, Some(&data), Method::GET, "/api/v1/jobs", None).await;
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|j| j["spec"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ours"]);
    let (st, run) = call(&s, Some(&admin), Method::POST, "/api/v1/jobs/theirs/run", None).await;
    assert_eq!(st, 201, "{run}");
    let run_id = run["id"].as_u64().unwrap();
    for (method, path) in [
        (Method::GET, "/api/v1/jobs/theirs".to_owned()),
        (Method::GET, "/api/v1/jobs/theirs/runs".to_owned()),
        (Method::POST, "/api/v1/jobs/theirs/run".to_owned()),
        (Method::POST, "/api/v1/jobs/theirs/pause".to_owned()),
        (Method::DELETE, "/api/v1/jobs/theirs".to_owned()),
        (Method::GET, format!("/api/v1/runs/{run_id}")),
        (Method::GET, format!("/api/v1/runs/{run_id}/log")),
        (Method::POST, format!("/api/v1/runs/{run_id}/kill")),
    ] {
        let (st, v) = call(&s, Some(&data), method.clone(), &path, None).await;
        assert_eq!(st, 404, "{method} {path}: {v}");
    }
    // Moving its own job out of its scope is refused too.
    let (st, _) = call(&s, Some(&data), Method::PUT, "/api/v1/jobs/ours", Some(job("ours", "web"))).await;
    assert_eq!(st, 403);
    assert_eq!(call(&s, Some(&data), Method::POST, "/api/v1/jobs/ours/pause", None).await.0, 200);
    // Agents, tokens and the Chronos API need an unscoped token.
    for (method, path) in [
        (Method::POST, "/api/v1/agents/local/drain"),
        (Method::GET, "/api/v1/tokens"),
        (Method::GET, "/scheduler/jobs"),
        (Method::GET, "/api/v1/events"),
        (Method::GET, "/api/v1/cluster"),
        (Method::GET, "/api/v1/services"),
        (Method::POST, "/api/v1/services"),
        (Method::GET, "/api/v1/services/s/replicas/0/log"),
        (Method::POST, "/api/v1/services/s/scale"),
        (Method::GET, "/api/v1/operations/1"),
        (Method::GET, "/api/v1/releases/rel-1"),
        (Method::POST, "/api/v1/releases/rel-1/brake"),
        (Method::GET, "/scheduler/graph/csv"),
        (Method::GET, "/scheduler/stats/99thPercentile"),
        (Method::GET, "/"),
        (Method::GET, "/jobs/ours"),
        (Method::GET, "/runs/1"),
    ] {
        let (st, v) = call(&s, Some(&data), method, path, None).await;
        assert_eq!(st, 403, "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_drive_the_api_even_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let url = format!("{}/jobs", s.base);
    let job = json!({"name": "pwn", "schedule": "@yearly", "command": "id"}).to_string();
    let tries = [
        ("origin", "http://evil.example", "application/json", "foreign_origin", 403),
        ("origin", "null", "application/json", "foreign_origin", 403),
        ("host", "evil.example:4400", "application/json", "foreign_host", 403),
        ("x-nothing", "-", "text/plain", "unsupported_media_type", 415),
        ("x-nothing", "-", "application/x-www-form-urlencoded", "unsupported_media_type", 415),
    ];
    for (header, value, content_type, code, status) in tries {
        let resp = s
            .http
            .post(&url)
            .header(header, value)
            .header("content-type", content_type)
            .body(job.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{header}: {value}, {content_type}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let (st, v) = s.req(Method::GET, "/jobs/pwn", None).await;
    assert_eq!(st, 404, "nothing was created: {v}");
    // The server's own pages (same origin) may write.
    let own = format!("http://{}", s.base.trim_start_matches("http://").trim_end_matches("/api/v1"));
    let resp = s.http.post(&url).header("origin", own).header("content-type", "application/json").body(job).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_their_status_and_say_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c| {
        c.auth.mode = AuthMode::Required;
        // One request a minute, after the first: the second in a row is refused.
        c.auth.rate = Some(RateLimit { per_second: 1.0 / 60.0, burst: 1.0 });
    })
    .await;
    let admin = admin_of(&s).await;
    // A body announced as 20 MiB is refused from its header, before any of it is read: the
    // client sends none (a client still writing it would see the connection close under it).
    let (status, body) = announce_big_body(&s, &admin, 20 << 20).await;
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["message"], "the request body is larger than the limit of 1048576 bytes");

    let long = format!("/api/v1/jobs?q={}", "x".repeat(10_000));
    assert_eq!(call(&s, Some(&admin), Method::GET, &long, None).await.0, 414);

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let resp = s.http.get(format!("{}/jobs", s.base)).bearer_auth(&admin).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    }
    // The 413 and the 414 above were refused before they were counted.
    assert_eq!(statuses, [200, 429, 429]);
    assert!(retry_after.is_some_and(|s| (1..=61).contains(&s)), "{retry_after:?}");
}

/// Sends `POST /jobs` whose header announces `len` bytes of body, and none of them; returns the
/// answer's status and body.
async fn announce_big_body(s: &TestServer, token: &str, len: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(&s.base).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut conn = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST {}/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        url.path().trim_end_matches('/')
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer within 10 s to a request whose body never came; got so far: {answer}");
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (headers, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // One chunk: its size line, the data, then the last chunk.
        body.split("\r\n").nth(1).unwrap_or("").to_string()
    } else {
        body.to_string()
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_audited_and_no_read_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), required).await;
    let admin = admin_of(&s).await;
    let admin_id = &admin[4..16];
    let read = token(&s, &admin, json!({"role": "read"})).await;
    call(&s, Some(&admin), Method::POST, "/api/v1/jobs", Some(manual_job("au", "true"))).await;
    call(&s, Some(&admin), Method::GET, "/api/v1/jobs/au", None).await;
    call(&s, Some(&admin), Method::POST, "/api/v1/jobs/au/run", None).await;
    call(&s, Some(&read), Method::DELETE, "/api/v1/jobs/au", None).await;
    call(&s, None, Method::POST, "/api/v1/jobs/au/pause", None).await;
    let chronos = json!({"name": "au2", "command": "true", "schedule": "R/2030-01-01T00:00:00Z/P1D"});
    call(&s, Some(&admin), Method::POST, "/scheduler/iso8601", Some(chronos)).await;

    let (st, page) = call(&s, Some(&admin), Method::GET, "/api/v1/audit?since=1h", None).await;
    assert_eq!(st, 200, "{page}");
    let rows: Vec<(String, String, String, Option<String>, u64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["job"].as_str().map(str::to_owned),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let read_id = read[4..16].to_owned();
    let a = admin_id.to_owned();
    let expected = vec![
        (a.clone(), "POST".into(), "/api/v1/tokens".into(), None, 201),
        (a.clone(), "POST".into(), "/api/v1/jobs".into(), Some("au".into()), 201),
        (a.clone(), "POST".into(), "/api/v1/jobs/au/run".into(), Some("au".into()), 201),
        (read_id, "DELETE".into(), "/api/v1/jobs/au".into(), Some("au".into()), 403),
        ("unauthenticated".into(), "POST".into(), "/api/v1/jobs/au/pause".into(), Some("au".into()), 401),
        (a.clone(), "POST".into(), "/scheduler/iso8601".into(), Some("au2".into()), 204),
    ];
    assert_eq!(rows, expected);
    let (_, by_job) = call(&s, Some(&admin), Method::GET, "/api/v1/audit?job=au2", None).await;
    assert_eq!(by_job["items"].as_array().unwrap().len(), 1);
    for bad in ["/api/v1/audit?since=yesterday", "/api/v1/audit?cursor=garbage"] {
        assert_eq!(call(&s, Some(&admin), Method::GET, bad, None).await.0, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_are_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::PATCH, "/jobs", None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("PATCH is not allowed on /api/v1/jobs"), "{v}");
    let (st, v) = s.req(Method::GET, "/nowhere", None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let resp = s
        .http
        .post(format!("{}/jobs", s.base))
        .header("content-type", "application/json")
        .body(vec![0xff, 0xfe, b'{'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "the request body is not valid UTF-8; send JSON (or TOML for a job file)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_their_headers_slowly_are_cut_off_and_starve_no_one() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c| {
        c.auth.header_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = s.base.trim_start_matches("http://").trim_end_matches("/api/v1").to_string();
    // 300 clients, each sending a request's headers a byte every 100 ms (a slowloris).
    let mut slow = Vec::new();
    for _ in 0..300 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            c.write_all(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if c.write_all(b"X").await.is_err() {
                    break;
                }
                // The server closes the connection: a read ends (0 bytes, or reset).
                let mut buf = [0u8; 64];
                if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
                    assert!(!matches!(r, Ok(n) if n > 0), "a slow client got an answer");
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "a slow client was never cut off");
            }
            start.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile others are served at once, each on a new connection.
    for _ in 0..20 {
        let started = tokio::time::Instant::now();
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let r = fresh.get(format!("{}/jobs", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1), "a request took {:?} among slow clients", started.elapsed());
    }
    for h in slow {
        let lasted = h.await.unwrap();
        assert!(lasted < Duration::from_secs(6), "cut off after {lasted:?}, not about the 1 s header timeout");
    }
    // A long answer (the event stream) is not a slow request: it stays open past the timeout.
    let mut events = s.http.get(format!("{}/events?kind=job", s.base)).send().await.unwrap();
    assert_eq!(events.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.create(json!({"name": "after-a-while", "schedule": "@yearly", "command": "true"})).await;
    let mut seen = String::new();
    while !seen.contains("after-a-while") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk()).await.expect("the stream went quiet").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream was closed")));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_may_create_only_so_many_jobs_in_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c| {
        required(c);
        c.auth.max_jobs_per_scope = Some(3);
    })
    .await;
    let admin = admin_of(&s).await;
    let data = token(&s, &admin, json!({"role": "admin", "scope": "label:team=data"})).await;
    let mine = token(&s, &admin, json!({"role": "admin", "scope": "owner:ana"})).await;
    let job = |name: &str, extra: Value| {
        let mut j = json!({"name": name, "schedule": "@yearly", "command": "true"});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        j
    };
    for i in 0..3 {
        let (st, v) = call(&s, Some(&data), Method::POST, "/api/v1/jobs", Some(job(&format!("d{i}"), json!({"labels": {"team": "data"}})))).await;
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = call(&s, Some(&data), Method::POST, "/api/v1/jobs", Some(job("d3", json!({"labels": {"team": "data"}})))).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("job_limit")), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("scope label:team=data already has 3 jobs") && msg.contains("--max-jobs-per-scope 3") && msg.contains("delete jobs"),
        "{msg}"
    );
    // Other scopes and unscoped tokens are not held by it; deleting one makes room.
    let (st, v) = call(&s, Some(&mine), Method::POST, "/api/v1/jobs", Some(job("a0", json!({"owner": "ana"})))).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = call(&s, Some(&admin), Method::POST, "/api/v1/jobs", Some(job("d4", json!({"labels": {"team": "data"}})))).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(call(&s, Some(&data), Method::DELETE, "/api/v1/jobs/d0", None).await.0, 204);
    assert_eq!(call(&s, Some(&data), Method::DELETE, "/api/v1/jobs/d4", None).await.0, 204);
    let (st, v) = call(&s, Some(&data), Method::POST, "/api/v1/jobs", Some(job("d3", json!({"labels": {"team": "data"}})))).await;
    assert_eq!(st, 201, "{v}");
}
