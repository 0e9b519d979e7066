//! Staged releases through the API and the CLI: smoke, bake and rollout with process replicas
//! (and one with docker); brake, resume, retry and revoke; a release whose new spec fails its
//! health check stops and says which replica failed and why.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A process service whose replicas write the `V` they run with to `ver-N`, and are healthy while
/// it holds their own `V` and `SICK` is empty (an exec check, run with the replica's environment);
/// they take `DELAY` seconds to come up.
fn versioned(name: &str, dir: &std::path::Path, replicas: i64) -> Value {
    let d = dir.display();
    json!({
        "name": name, "replicas": replicas, "env": {"V": "1"},
        "command": format!("sleep ${{DELAY:-0}}; echo $V > {d}/ver-$TUG_REPLICA; exec sleep 1000"),
        "health": {"kind": "exec", "command": format!("test \"$(cat {d}/ver-$TUG_REPLICA)\" = \"$V\" && test -z \"$SICK\""),
                   "interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 3, "grace_period": "3s"},
        "restart": {"initial_delay": "100ms", "max_delay": "1s"},
        "stop_grace": "1s"
    })
}

fn versions(dir: &std::path::Path, n: u32) -> Vec<String> {
    (0..n).map(|i| std::fs::read_to_string(dir.join(format!("ver-{i}"))).unwrap_or_default().trim().to_owned()).collect()
}

/// Waits until release `id` satisfies `pred`; returns it.
async fn wait_release(s: &TestServer, id: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let r = s.get(&format!("/releases/{id}")).await;
        if pred(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "release {id}: {what} within {secs}s; it is now {r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn history(r: &Value) -> Vec<String> {
    r["history"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap().to_owned()).collect()
}

async fn release(s: &TestServer, service: &str, body: Value) -> Value {
    let (st, r) = s.req(Method::POST, &format!("/services/{service}/releases"), Some(body)).await;
    assert_eq!(st, 202, "{r}");
    r
}

/// A load balancer's hook: records each call (its JSON body, and the version the replica it names
/// was running when it came) and answers `status`.
async fn hook_server(files: std::path::PathBuf, status: u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(Value, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let (seen, files) = (seen.clone(), files.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    }
                };
                let v: Value = serde_json::from_str(&body).unwrap();
                let running = versions(&files, 2)[v["index"].as_u64().unwrap() as usize].clone();
                seen.lock().unwrap().push((v, running));
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_tells_the_load_balancer_before_stopping_a_replica_and_after_it_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::POST, "/services", Some(versioned("lb", files.path(), 2))).await;
    assert_eq!(st, 201, "{v}");
    wait_service(&s, "lb", 20, "2 healthy", |v| v["status"]["healthy"] == 2).await;
    let (url, calls) = hook_server(files.path().to_owned(), 200).await;
    let body = json!({"env": {"V": "2"}, "smoke": 1, "bake": "200ms", "batch": 1, "health_timeout": "20s", "pull_out": url, "pull_in": url});
    let r = release(&s, "lb", body).await;
    assert_eq!((r["hooks"]["pull_out"].as_str(), r["hooks"]["pull_in"].as_str()), (Some(url.as_str()), Some(url.as_str())), "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let r = wait_release(&s, &id, 40, "succeeded", |r| r["state"] == "succeeded").await;
    let calls = calls.lock().unwrap().clone();
    let seen: Vec<(String, u64, String)> =
        calls.iter().map(|(v, running)| (v["event"].as_str().unwrap().to_owned(), v["index"].as_u64().unwrap(), running.clone())).collect();
    // Each replica: pulled out while it still runs the old version, back in once it runs the new.
    let expected: Vec<(String, u64, String)> =
        [("pull_out", 0, "1"), ("pull_in", 0, "2"), ("pull_out", 1, "1"), ("pull_in", 1, "2")].map(|(e, i, v)| (e.to_owned(), i, v.to_owned())).to_vec();
    assert_eq!(seen, expected, "{:?}", history(&r));
    let (first, _) = &calls[0];
    assert_eq!((first["service"].as_str(), first["instance"].as_str(), first["release"].as_str()), (Some("lb"), Some("service/lb/0"), Some(id.as_str())), "{first}");
    assert!(first["agent"].is_string(), "{first}");

    expect(&s, Method::POST, "/services/lb/releases", Some(json!({"env": {"V": "4"}, "pull_in": "lb.example:80"})), 422, "invalid_service", "give the load balancer's hook as an http:// or https:// URL").await;
    // A hook that refuses stops the release before the replica is stopped, saying why.
    let (bad, _) = hook_server(files.path().to_owned(), 503).await;
    let r = release(&s, "lb", json!({"env": {"V": "3"}, "pull_out": bad})).await;
    let id = r["id"].as_str().unwrap().to_owned();
    let r = wait_release(&s, &id, 20, "failed", |r| r["state"] == "failed").await;
    let why = r["failure"].as_str().unwrap();
    assert!(why.starts_with(&format!("the load balancer's pull_out hook for replica 0 failed: {bad} answered 503")), "{why}");
    assert_eq!(versions(files.path(), 2), ["2", "2"], "no replica was stopped");
    let (st, _) = s.req(Method::DELETE, "/services/lb", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_through_smoke_bake_and_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::POST, "/services", Some(versioned("staged", files.path(), 5))).await;
    assert_eq!(st, 201, "{v}");
    wait_service(&s, "staged", 20, "5 healthy", |v| v["status"]["healthy"] == 5).await;
    let r = release(&s, "staged", json!({"env": {"V": "2"}, "smoke": 1, "bake": "500ms", "batch": 2, "health_timeout": "20s"})).await;
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!((r["service"].as_str(), r["plan"]["batch"].as_u64(), r["plan"]["bake"].as_str()), (Some("staged"), Some(2), Some("500ms")));
    // While the release goes on, the spec cannot be changed under it, nor a second one started.
    expect(&s, Method::PUT, "/services/staged", Some(versioned("staged", files.path(), 5)), 409, "conflict", "is being released").await;
    expect(&s, Method::POST, "/services/staged/releases", Some(json!({"env": {"V": "3"}})), 409, "conflict", "before starting another").await;
    let r = wait_release(&s, &id, 40, "succeeded", |r| r["state"] == "succeeded").await;
    let h = history(&r);
    let stage = |needle: &str| h.iter().position(|w| w.starts_with(needle)).unwrap_or_else(|| panic!("no {needle:?} in {h:?}"));
    assert!(stage("smoke") < stage("baking for 500ms") && stage("baking") < stage("rolling out") && stage("rolling out") < stage("succeeded"), "{h:?}");
    // Smoke replaces replica 0 alone; the rollout replaces two at a time, lowest index first.
    assert!(h[stage("smoke") + 1].starts_with("replica 0 pulled out"), "{h:?}");
    let order: Vec<&String> = h.iter().filter(|w| w.contains("pulled out")).collect();
    assert_eq!(order.len(), 5, "{h:?}");
    assert!(order[1].starts_with("replica 1") && order[2].starts_with("replica 2") && order[3].starts_with("replica 3"), "{h:?}");
    assert_eq!(h.iter().filter(|w| w.contains("back in service")).count(), 5, "{h:?}");
    assert_eq!(versions(files.path(), 5), ["2"; 5]);
    // The new spec is the service's now, durably.
    let v = s.get("/services/staged").await;
    assert_eq!((v["spec"]["env"]["V"].as_str(), v["version"].as_u64(), v["spec"]["replicas"].as_u64()), (Some("2"), Some(2), Some(5)), "{v}");
    for x in v["status"]["list"].as_array().unwrap() {
        assert_eq!((x["attempt"].as_u64(), x["restarts"].as_u64(), x["ready"].as_bool()), (Some(2), Some(0), Some(true)), "replaced once, no restart counted: {x}");
    }
    assert_eq!(v["status"]["ready"], 5);
    let list = s.get("/services/staged/releases").await;
    assert_eq!(list[0]["id"].as_str(), Some(id.as_str()));
    expect(&s, Method::POST, &format!("/releases/{id}/brake"), None, 409, "conflict", "it is over").await;
    expect(&s, Method::GET, "/releases/rel-999", None, 404, "release_not_found", "rel-999").await;
    expect(&s, Method::POST, &format!("/releases/{id}/pause"), None, 400, "invalid_action", "use brake, resume, retry or revoke").await;
    let (st, _) = s.req(Method::DELETE, "/services/staged", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_braked_resumed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.req(Method::POST, "/services", Some(versioned("braked", files.path(), 3))).await;
    wait_service(&s, "braked", 20, "3 healthy", |v| v["status"]["healthy"] == 3).await;
    // Each new replica takes a second to come up: time enough to brake while the first one does.
    let r = release(&s, "braked", json!({"env": {"V": "2", "DELAY": "1"}, "smoke": 2, "bake": "1h", "batch": "100%"})).await;
    let id = r["id"].as_str().unwrap().to_owned();
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/brake"), None).await;
    assert_eq!((st, r["braked"].as_bool()), (200, Some(true)), "{r}");
    // Braked in smoke: the replica being replaced finishes; the next one does not start.
    let r = wait_release(&s, &id, 20, "replica 0 replaced", |r| r["done"] == 1 && r["in_progress"].as_array().unwrap().is_empty()).await;
    assert_eq!(r["state"], "smoking");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = s.get(&format!("/releases/{id}")).await;
    assert_eq!((r["state"].as_str(), r["done"].as_u64(), r["on_release"].as_u64()), (Some("smoking"), Some(1), Some(1)), "braked: {r}");
    assert_eq!(versions(files.path(), 3), ["2", "1", "1"]);
    expect(&s, Method::POST, &format!("/releases/{id}/brake"), None, 409, "conflict", "braked already").await;
    expect(&s, Method::POST, &format!("/releases/{id}/retry"), None, 409, "conflict", "retry is for a failed release").await;
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/resume"), None).await;
    assert_eq!((st, r["braked"].as_bool()), (200, Some(false)), "{r}");
    expect(&s, Method::POST, &format!("/releases/{id}/resume"), None, 409, "conflict", "not braked").await;
    let r = wait_release(&s, &id, 20, "baking", |r| r["state"] == "baking").await;
    assert!(r["bake_left_ms"].as_u64().unwrap() > 3_000_000, "{r}");
    assert_eq!(versions(files.path(), 3), ["2", "2", "1"]);
    // Revoked while baking: the two replaced replicas go back to the previous spec.
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/revoke"), None).await;
    assert_eq!((st, r["state"].as_str()), (200, Some("revoking")), "{r}");
    let r = wait_release(&s, &id, 20, "revoked", |r| r["state"] == "revoked").await;
    assert!(history(&r).iter().any(|w| w == "replica 1 is healthy back on the previous spec and back in service"), "{r}");
    assert_eq!(versions(files.path(), 3), ["1", "1", "1"]);
    let v = s.get("/services/braked").await;
    assert_eq!((v["spec"]["env"]["V"].as_str(), v["version"].as_u64()), (Some("1"), Some(1)), "the stored spec is unchanged");
    let attempts: Vec<u64> = v["status"]["list"].as_array().unwrap().iter().map(|x| x["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [3, 3, 1]);
    assert!(v["status"]["list"].as_array().unwrap().iter().all(|x| x["on_release"] == false && x["ready"] == true), "{v}");
    // Over: the service can change again.
    let (st, _) = s.req(Method::PUT, "/services/braked", Some(versioned("braked", files.path(), 3))).await;
    assert_eq!(st, 200);
    let (st, _) = s.req(Method::DELETE, "/services/braked", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_failing_its_smoke_health_check_stops_and_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.req(Method::POST, "/services", Some(versioned("sick", files.path(), 3))).await;
    wait_service(&s, "sick", 20, "3 healthy", |v| v["status"]["healthy"] == 3).await;
    // The new spec's replicas never pass their check.
    let r = release(&s, "sick", json!({"env": {"V": "2", "SICK": "1"}, "bake": "0s", "health_timeout": "2s"})).await;
    let id = r["id"].as_str().unwrap().to_owned();
    let r = wait_release(&s, &id, 20, "failed", |r| r["state"] == "failed").await;
    let failure = r["failure"].as_str().unwrap();
    assert!(failure.starts_with("replica 0 "), "says which replica: {failure}");
    assert!(failure.contains("was not healthy within 2s") || failure.contains("unhealthy"), "and why: {failure}");
    assert!(history(&r).last().unwrap().starts_with("failed: replica 0"), "{r}");
    // Only the smoke replica was touched; it is out of service, the others are in.
    let v = s.get("/services/sick").await;
    let list = v["status"]["list"].as_array().unwrap();
    assert_eq!((list[0]["ready"].as_bool(), list[0]["on_release"].as_bool()), (Some(false), Some(true)), "{v}");
    assert!(list[1..].iter().all(|x| x["ready"] == true && x["attempt"] == 1), "{v}");
    // Retried, it fails the same way.
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/retry"), None).await;
    assert_eq!((st, r["state"].as_str()), (200, Some("smoking")), "{r}");
    let r = wait_release(&s, &id, 20, "failed again", |r| r["state"] == "failed").await;
    assert!(r["failure"].as_str().unwrap().starts_with("replica 0 "), "{r}");
    let (st, _) = s.req(Method::POST, &format!("/releases/{id}/revoke"), None).await;
    assert_eq!(st, 200);
    wait_release(&s, &id, 20, "revoked", |r| r["state"] == "revoked").await;
    let v = wait_service(&s, "sick", 20, "3 healthy and ready", |v| v["status"]["ready"] == 3).await;
    assert_eq!(v["spec"]["env"].get("SICK"), None);
    assert_eq!(versions(files.path(), 3), ["1", "1", "1"]);
    // Bad requests: what to fix, and nothing started.
    let cases = [
        (json!({}), 422, "invalid_service", "changes nothing"),
        (json!({"image": "busybox"}), 422, "invalid_service", "`image` is for docker services"),
        (json!({"env": {"V": "3"}, "smoke": 4}), 422, "invalid_service", "`smoke` is 4 but the service has 3 replicas"),
        (json!({"env": {"V": "3"}, "batch": "0"}), 400, "invalid_body", "replace at least 1 replica per batch"),
        (json!({"env": {"V": "3"}, "bake": "soon"}), 400, "invalid_body", "soon"),
        (json!({"env": {"V": "3"}, "colour": 1}), 400, "invalid_body", "unknown field `colour`"),
    ];
    for (body, status, code, needle) in cases {
        expect(&s, Method::POST, "/services/sick/releases", Some(body), status, code, needle).await;
    }
    expect(&s, Method::POST, "/services/ghost/releases", Some(json!({"env": {"V": "3"}})), 404, "service_not_found", "ghost").await;
    assert_eq!(s.get("/services/sick/releases").await.as_array().unwrap().len(), 1);
    let (st, _) = s.req(Method::DELETE, "/services/sick", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[test]
fn releases_through_the_cli() {
    let up = Up::start();
    let s = up.server.clone();
    let files = tempfile::tempdir().unwrap();
    let spec_file = files.path().join("svc.json");
    std::fs::write(&spec_file, versioned("clirel", files.path(), 2).to_string()).unwrap();
    ok(&s, &["service", "add", "-f", spec_file.to_str().unwrap()]);
    ok(&s, &["service", "scale", "clirel", "2", "--wait"]);
    let out = ok(&s, &["release", "start", "clirel", "--env", "V=2", "--smoke", "1", "--bake", "200ms", "--batch", "50%", "--wait"]);
    assert!(out.contains("succeeded [##############################] new spec 2/2"), "{out}");
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().to_owned();
    let show = ok(&s, &["release", "show", &id]);
    assert!(show.contains("plan: smoke 1, bake 200ms, batch 50%") && show.contains("baking for 200ms") && show.contains("succeeded: the new spec"), "{show}");
    assert_eq!(versions(files.path(), 2), ["2", "2"]);

    // Braked, resumed and revoked, each from the CLI.
    let out = ok(&s, &["release", "start", "clirel", "--env", "V=3", "--bake", "1h"]);
    assert!(out.starts_with("releasing clirel: release rel-") && out.contains("smoke 1, bake 1h, batch 25%"), "{out}");
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().trim_end_matches(':').to_owned();
    let out = ok(&s, &["release", "brake", &id]);
    assert!(out.starts_with(&format!("braked release {id} of clirel:")) && out.contains("(braked)"), "{out}");
    let out = ok(&s, &["release", "watch", &id]);
    assert!(out.contains("braked: resume it with tug release resume"), "{out}");
    ok(&s, &["release", "resume", &id]);
    let out = ok(&s, &["release", "revoke", &id]);
    assert!(out.starts_with(&format!("revoking release {id}")), "{out}");
    let done: Value = serde_json::from_str(&ok(&s, &["release", "watch", &id, "--json"])).unwrap();
    assert_eq!(done["state"], "revoked", "{done}");
    let list: Value = serde_json::from_str(&ok(&s, &["release", "list", "clirel", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let table = ok(&s, &["release", "list", "clirel"]);
    assert!(table.lines().next().unwrap().starts_with("ID") && table.contains("revoked") && table.contains("succeeded"), "{table}");

    // A failed release fails the command and says what to do.
    let e = fails(&s, &["release", "start", "clirel", "--env", "SICK=1", "--bake", "0s", "--health-timeout", "1s", "--wait"]);
    assert!(e.contains("failed: replica 0") && e.contains("tug release revoke"), "{e}");
    let e = fails(&s, &["release", "start", "clirel", "--env", "V"]);
    assert!(e.contains("--env \"V\": write NAME=VALUE"), "{e}");
    let e = fails(&s, &["release", "show", "rel-999"]);
    assert!(e.contains("no release \"rel-999\""), "{e}");
    up.terminate();
}

/// Polls `tug release show` until `pred` holds (or panics after `secs`).
fn wait_shown(s: &str, id: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let out = common::tug(s, &["release", "show", id, "--json"]);
        if out.status.success() {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            if pred(&r) {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "release {id}: {what} within {secs}s; it is now {r}");
        } else {
            assert!(std::time::Instant::now() < deadline, "release {id}: {what} within {secs}s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_release_carries_on_after_the_server_is_killed_in_its_bake() {
    let mut up = Up::start();
    let s = up.server.clone();
    let files = tempfile::tempdir().unwrap();
    let spec_file = files.path().join("svc.json");
    std::fs::write(&spec_file, versioned("survivor", files.path(), 3).to_string()).unwrap();
    ok(&s, &["service", "add", "-f", spec_file.to_str().unwrap()]);
    ok(&s, &["service", "scale", "survivor", "3", "--wait"]);
    let out = ok(&s, &["release", "start", "survivor", "--env", "V=2", "--smoke", "1", "--bake", "8s", "--batch", "2"]);
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().trim_end_matches(':').to_owned();
    wait_shown(&s, &id, 30, "baking", |r| r["state"] == "baking");
    assert_eq!(versions(files.path(), 3), ["2", "1", "1"], "the smoke replica runs the new spec");

    // kill -9 in the bake, and the same data directory again.
    up.kill9_and_restart();
    let r = wait_shown(&s, &id, 10, "shown after the restart", |_| true);
    assert_eq!((r["state"].as_str(), r["braked"].as_bool()), (Some("baking"), Some(false)), "{r}");
    assert!(history(&r).iter().any(|h| h.starts_with("picked up by a server that started")), "{r}");
    let done = wait_shown(&s, &id, 60, "succeeded", |r| r["state"] == "succeeded" || r["state"] == "failed");
    assert_eq!(done["state"], "succeeded", "{done}");
    let h = history(&done);
    assert!(h.iter().any(|l| l.starts_with("carrying on: 1 replica(s) done")), "{h:?}");
    assert_eq!(h.iter().filter(|l| l.starts_with("baking for")).count(), 1, "the bake went on, not over: {h:?}");
    assert_eq!(versions(files.path(), 3), ["2", "2", "2"]);
    let svc: Value = serde_json::from_str(&ok(&s, &["service", "show", "survivor", "--json"])).unwrap();
    assert_eq!(svc["spec"]["env"]["V"], "2", "the new spec is the service's: {svc}");

    // A braked release stays braked across a restart, and a revoke then puts the replica back.
    let out = ok(&s, &["release", "start", "survivor", "--env", "V=3", "--bake", "1h"]);
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().trim_end_matches(':').to_owned();
    wait_shown(&s, &id, 30, "baking", |r| r["state"] == "baking");
    ok(&s, &["release", "brake", &id]);
    up.kill9_and_restart();
    let r = wait_shown(&s, &id, 10, "shown after the restart", |_| true);
    assert_eq!((r["state"].as_str(), r["braked"].as_bool()), (Some("baking"), Some(true)), "{r}");
    let e = common::tug(&s, &["release", "start", "survivor", "--env", "V=4"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains(&format!("release {id} of service \"survivor\" is baking (braked)")), "{e:?}");
    // Revoke waits for the replicas to be known again (the agents' reports), then goes.
    let revoked = loop {
        let out = common::tug(&s, &["release", "revoke", &id]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("try again in a few seconds"), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(revoked.starts_with(&format!("revoking release {id}")), "{revoked}");
    let done = wait_shown(&s, &id, 60, "revoked", |r| r["state"] == "revoked" || r["state"] == "failed");
    assert_eq!(done["state"], "revoked", "{done}");
    assert_eq!(versions(files.path(), 3), ["2", "2", "2"]);
    // Ended releases, and scale operations, are kept for reading across a restart too.
    let out = ok(&s, &["service", "scale", "survivor", "4", "--json"]);
    let op: Value = serde_json::from_str(&out).unwrap();
    let op = op["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let shown: Value = serde_json::from_str(&ok(&s, &["op", "show", &op, "--json"])).unwrap();
        if shown["state"] == "succeeded" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scale operation {op} did not succeed within 60 s: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    up.kill9_and_restart();
    let shown: Value = serde_json::from_str(&ok(&s, &["op", "show", &op, "--json"])).unwrap();
    assert_eq!((shown["state"].as_str(), shown["to"].as_u64()), (Some("succeeded"), Some(4)), "{shown}");
    let list: Value = serde_json::from_str(&ok(&s, &["release", "list", "survivor", "--json"])).unwrap();
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["revoked", "succeeded"], "{list}");
    up.terminate();
}

#[test]
fn an_update_rolls_out_to_running_replicas_a_batch_at_a_time() {
    let up = Up::start();
    let s = up.server.clone();
    let files = tempfile::tempdir().unwrap();
    let spec_file = files.path().join("upd.json");
    let mut spec = versioned("upd", files.path(), 3);
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    ok(&s, &["service", "add", "-f", spec_file.to_str().unwrap()]);
    ok(&s, &["service", "scale", "upd", "3", "--wait"]);
    let attempts = || -> Vec<u64> {
        let v: Value = serde_json::from_str(&ok(&s, &["service", "show", "upd", "--json"])).unwrap();
        v["status"]["list"].as_array().unwrap().iter().map(|r| r["attempt"].as_u64().unwrap()).collect()
    };

    // More replicas and a label: applied at once, nothing replaced.
    spec["replicas"] = json!(4);
    spec["labels"] = json!({"tier": "web"});
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = ok(&s, &["service", "update", "upd", "-f", spec_file.to_str().unwrap()]);
    assert!(out.contains("nothing its replicas run changed, so none is replaced"), "{out}");
    ok(&s, &["service", "scale", "upd", "4", "--wait"]);
    assert_eq!(attempts(), [1, 1, 1, 1]);

    // A new environment: every replica is replaced on it, two at a time, each healthy.
    spec["env"]["V"] = json!("2");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = ok(&s, &["service", "update", "upd", "-f", spec_file.to_str().unwrap(), "--batch", "2", "--wait"]);
    assert!(out.contains("updated upd: its replicas move to the new spec through release rel-"), "{out}");
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(versions(files.path(), 4), ["2", "2", "2", "2"]);
    assert_eq!(attempts(), [2, 2, 2, 2], "each replaced once");
    let svc: Value = serde_json::from_str(&ok(&s, &["service", "show", "upd", "--json"])).unwrap();
    assert_eq!((svc["spec"]["env"]["V"].as_str(), svc["spec"]["labels"]["tier"].as_str()), (Some("2"), Some("web")), "{svc}");
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().to_owned();
    let r: Value = serde_json::from_str(&ok(&s, &["release", "show", &id, "--json"])).unwrap();
    assert_eq!((r["plan"]["smoke"].as_u64(), r["plan"]["batch"].as_u64()), (Some(0), Some(2)), "{r}");
    assert!(history(&r).iter().any(|h| h.starts_with("an update of the service's spec")), "{r}");
    let steps = history(&r).iter().filter(|h| h.contains("pulled out, replaced with the new spec")).count();
    assert_eq!(steps, 4, "{r}");

    // A bad rollout setting changes nothing.
    spec["env"]["V"] = json!("3");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let e = fails(&s, &["service", "update", "upd", "-f", spec_file.to_str().unwrap(), "--batch", "0"]);
    assert!(e.contains("invalid batch \"0\": replace at least 1 replica per batch"), "{e}");
    let e = fails(&s, &["service", "update", "other", "-f", spec_file.to_str().unwrap()]);
    assert!(e.contains("names service \"upd\", not \"other\""), "{e}");
    let svc: Value = serde_json::from_str(&ok(&s, &["service", "show", "upd", "--json"])).unwrap();
    assert_eq!(svc["spec"]["env"]["V"], "2");
    up.terminate();
}

#[test]
fn a_docker_release_of_a_new_image_replaces_each_container() {
    let Some(image) = docker_test_image() else { return };
    let up = Up::start();
    let s = up.server.clone();
    let name = format!("dockrel-{}", std::process::id());
    add_docker_service(&s, &name, 2, &image);
    ok(&s, &["service", "scale", &name, "2", "--wait"]);
    let before: Vec<Vec<String>> = (0..2).map(|i| replica_containers(&name, i)).collect();
    // The new version: the same image under a tag of this test's own.
    let tag = format!("tugboat-test-release:{}", std::process::id());
    let tagged = std::process::Command::new("docker").args(["tag", &image, &tag]).status().unwrap();
    assert!(tagged.success());
    let out = ok(&s, &["release", "start", &name, "--image", &tag, "--bake", "0s", "--batch", "1", "--wait", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    let v: Value = serde_json::from_str(&ok(&s, &["service", "show", &name, "--json"])).unwrap();
    assert_eq!(v["spec"]["docker"]["image"], tag.as_str());
    assert_eq!(v["status"]["ready"], 2, "{v}");
    for (i, old) in before.iter().enumerate() {
        let now = replica_containers(&name, i as u32);
        assert_eq!(now.len(), 1, "one container per replica: {now:?}");
        assert_ne!(&now, old, "replica {i} runs in a new container");
        let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.Config.Image}}", &now[0]]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tag, "replica {i} runs the new image");
    }
    ok(&s, &["service", "scale", &name, "0", "--wait"]);
    ok(&s, &["service", "delete", &name]);
    up.terminate();
    let left: Vec<String> = (0..2).flat_map(|i| replica_containers(&name, i)).collect();
    if !left.is_empty() {
        std::process::Command::new("docker").args(["rm", "-f"]).args(&left).output().unwrap();
    }
    std::process::Command::new("docker").args(["rmi", &tag]).output().unwrap();
    assert!(left.is_empty(), "containers left after a clean stop: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_braked_in_its_bake_and_its_rollout_resumes_to_success_and_revokes_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.req(Method::POST, "/services", Some(versioned("halts", files.path(), 4))).await;
    wait_service(&s, "halts", 20, "4 healthy", |v| v["status"]["healthy"] == 4).await;
    // Each new replica takes a second to come up: time enough to brake while a batch does.
    let body = json!({"env": {"V": "2", "DELAY": "1"}, "smoke": 1, "bake": "1s", "batch": "50%", "health_timeout": "20s"});
    let id = release(&s, "halts", body).await["id"].as_str().unwrap().to_owned();
    wait_release(&s, &id, 20, "baking", |r| r["state"] == "baking").await;

    // Braked in its bake: the bake's time runs out, but the rollout does not start.
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/brake"), None).await;
    assert_eq!((st, r["braked"].as_bool()), (200, Some(true)), "{r}");
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let r = s.get(&format!("/releases/{id}")).await;
    assert_eq!((r["state"].as_str(), r["on_release"].as_u64(), r["braked"].as_bool()), (Some("baking"), Some(1), Some(true)), "{r}");
    assert_eq!(versions(files.path(), 4), ["2", "1", "1", "1"]);

    // Resumed, then braked in its rollout while its first batch comes up: that batch finishes,
    // the next does not start.
    let (st, _) = s.req(Method::POST, &format!("/releases/{id}/resume"), None).await;
    assert_eq!(st, 200);
    wait_release(&s, &id, 20, "rolling out a batch", |r| r["state"] == "rolling_out" && !r["in_progress"].as_array().unwrap().is_empty()).await;
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/brake"), None).await;
    assert_eq!((st, r["braked"].as_bool()), (200, Some(true)), "{r}");
    wait_release(&s, &id, 20, "its batch done", |r| r["in_progress"].as_array().unwrap().is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = s.get(&format!("/releases/{id}")).await;
    assert_eq!((r["state"].as_str(), r["on_release"].as_u64(), r["braked"].as_bool()), (Some("rolling_out"), Some(3), Some(true)), "{r}");
    assert_eq!(versions(files.path(), 4), ["2", "2", "2", "1"]);
    let (st, _) = s.req(Method::POST, &format!("/releases/{id}/resume"), None).await;
    assert_eq!(st, 200);
    let r = wait_release(&s, &id, 30, "succeeded", |r| r["state"] == "succeeded").await;
    assert_eq!(versions(files.path(), 4), ["2"; 4]);
    let h = history(&r);
    assert_eq!(h.iter().filter(|w| w.contains("back in service")).count(), 4, "{h:?}");
    assert_eq!(s.get("/services/halts").await["spec"]["env"]["V"], "2");

    // A release that replaced all four replicas (smoke 4) is revoked in its bake: back to the
    // previous spec two at a time (50%), the second pair only once the first is healthy.
    let id = release(&s, "halts", json!({"env": {"V": "3"}, "smoke": 4, "bake": "1h", "batch": "50%", "health_timeout": "20s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_release(&s, &id, 40, "baking", |r| r["state"] == "baking").await;
    assert_eq!(versions(files.path(), 4), ["3"; 4]);
    let (st, r) = s.req(Method::POST, &format!("/releases/{id}/revoke"), None).await;
    assert_eq!((st, r["state"].as_str()), (200, Some("revoking")), "{r}");
    let r = wait_release(&s, &id, 30, "revoked", |r| r["state"] == "revoked").await;
    let h = history(&r);
    let at = |what: String| h.iter().position(|w| w.starts_with(&what)).unwrap_or_else(|| panic!("no {what:?} in {h:?}"));
    let out = |i: u32| at(format!("replica {i} pulled out, replaced with the previous spec"));
    let back = |i: u32| at(format!("replica {i} is healthy back on the previous spec"));
    let first = out(0).max(out(1));
    let first_back = back(0).max(back(1));
    assert!(first < back(0).min(back(1)), "both of the first batch step back together: {h:?}");
    assert!(first_back < out(2).min(out(3)), "the second batch waits for the first: {h:?}");
    assert!(out(2).max(out(3)) < back(2).min(back(3)), "{h:?}");
    assert_eq!(versions(files.path(), 4), ["2"; 4]);
    let v = s.get("/services/halts").await;
    assert_eq!(v["spec"]["env"]["V"], "2", "the stored spec is the one before the revoked release");
    let (st, _) = s.req(Method::DELETE, "/services/halts", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}
