//! Services through the API and the CLI: created, listed, shown, changed and deleted; bad specs
//! refused with what to fix, leaving nothing behind.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn web(replicas: i64) -> Value {
    json!({"name": "web", "replicas": replicas, "command": "sleep 1000", "labels": {"team": "web"},
           "health": {"kind": "http", "port": 8080, "path": "/healthz"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::POST, "/services", Some(web(3))).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!((v["version"].as_u64(), v["spec"]["replicas"].as_i64()), (Some(1), Some(3)), "{v}");
    // Defaults a service gets: spread placement, stop with TERM after 10 s, restarts backing off.
    assert_eq!(v["spec"]["placement"], "spread");
    assert_eq!((v["spec"]["stop_signal"].as_str(), v["spec"]["stop_grace"].as_str()), (Some("TERM"), Some("10s")));
    assert_eq!(v["spec"]["health"]["unhealthy_threshold"], 3);

    // TOML works too, as for jobs.
    let toml = "name = \"api\"\nreplicas = 2\ncommand = [\"sleep\", \"1000\"]\n[health]\nkind = \"tcp\"\nport = 9000\n";
    let resp = s.http.post(format!("{}/services", s.base)).header("content-type", "application/toml").body(toml).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let names: Vec<String> = s.get("/services").await.as_array().unwrap().iter().map(|v| v["spec"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(s.get("/services/api").await["spec"]["health"]["port"], 9000);

    let (st, v) = s.req(Method::PUT, "/services/web", Some(web(5))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["version"].as_u64(), v["spec"]["replicas"].as_i64()), (Some(2), Some(5)));
    expect(&s, Method::PUT, "/services/web", Some(json!({"name": "other", "replicas": 1, "command": "x"})), 400, "name_mismatch", "renaming is not supported").await;
    expect(&s, Method::PUT, "/services/ghost", Some(json!({"name": "ghost", "replicas": 1, "command": "x"})), 404, "service_not_found", "tug service list").await;
    expect(&s, Method::POST, "/services", Some(web(1)), 409, "service_exists", "already exists").await;

    // Bad specs: each refused with what to fix, and nothing created.
    let bad = |patch: Value| {
        let mut v = json!({"name": "bad", "replicas": 2, "command": "sleep 1000"});
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases = [
        (bad(json!({"replicas": -1})), 422, "invalid_service", "`replicas` is -1; give a count from 0 to 10000"),
        (bad(json!({"health": {"kind": "http", "path": "/"}})), 422, "invalid_service", "`health.port` is missing; a http check needs the port"),
        (bad(json!({"health": {"kind": "tcp"}})), 422, "invalid_service", "`health.port` is missing; a tcp check needs the port"),
        (bad(json!({"health": {"kind": "exec"}})), 422, "invalid_service", "`health.command` is missing"),
        (bad(json!({"colour": "red"})), 400, "invalid_body", "unknown field `colour`"),
        (
            bad(json!({"runtime": "docker", "docker": {"image": "busybox"}, "network": {"pool": "ghost"}})),
            422,
            "invalid_service",
            "network pool \"ghost\" does not exist; create it with `tug net pool add`",
        ),
        (bad(json!({"network": {"pool": "blue"}})), 422, "invalid_service", "`network` needs runtime = \"docker\""),
        (bad(json!({"name": "a b"})), 422, "invalid_service", "invalid service name \"a b\""),
    ];
    for (body, status, code, needle) in cases {
        expect(&s, Method::POST, "/services", Some(body), status, code, needle).await;
    }
    expect(&s, Method::GET, "/services/bad", None, 404, "service_not_found", "\"bad\" not found").await;
    assert_eq!(s.get("/services").await.as_array().unwrap().len(), 2);

    let (st, _) = s.req(Method::DELETE, "/services/api", None).await;
    assert_eq!(st, 204);
    expect(&s, Method::DELETE, "/services/api", None, 404, "service_not_found", "api").await;
    let doc = s.get("/openapi.json").await;
    assert!(doc["paths"]["/services/{name}"]["put"].is_object());
    s.stop().await;
}


#[test]
fn services_through_the_cli() {
    let up = Up::start();
    let s = up.server.clone();
    let out = ok(&s, &["service", "add", "web", "--replicas", "3", "--http", "8080/healthz", "--", "sleep", "1000"]);
    assert_eq!(out.trim(), "added service web (3 replicas)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.toml");
    std::fs::write(&file, "name = \"cache\"\nreplicas = 2\ncommand = \"sleep 1000\"\nplacement = \"binpack\"\n[health]\nkind = \"tcp\"\nport = 6379\ninterval = \"5s\"\n").unwrap();
    ok(&s, &["service", "add", "-f", file.to_str().unwrap()]);

    let table = ok(&s, &["service", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("REPLICAS") && lines[0].contains("HEALTH"), "{table}");
    assert!(lines[1].starts_with("cache") && lines[1].contains("tcp :6379 every 5s") && lines[1].contains("binpack"), "{table}");
    assert!(lines[2].starts_with("web") && lines[2].contains("http :8080/healthz every 10s") && lines[2].contains("spread"), "{table}");
    let list: Value = serde_json::from_str(&ok(&s, &["service", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let show = ok(&s, &["service", "show", "web"]);
    assert!(show.contains("stop: TERM after 10s") && show.contains("version 1"), "{show}");
    let one: Value = serde_json::from_str(&ok(&s, &["service", "show", "web", "--json"])).unwrap();
    assert_eq!(one["spec"]["health"]["path"], "/healthz");

    // Bad input: clear errors, before anything is sent or created.
    let e = fails(&s, &["service", "add", "neg", "--replicas", "-2", "--", "sleep", "1"]);
    assert!(e.contains("`replicas` is -2; give a count from 0 to 10000"), "{e}");
    let e = fails(&s, &["service", "add", "nocmd", "--replicas", "2"]);
    assert!(e.contains("no command: put it after `--`"), "{e}");
    std::fs::write(&file, "name = \"noport\"\nreplicas = 1\ncommand = \"x\"\nhealth = { kind = \"http\" }\n").unwrap();
    let e = fails(&s, &["service", "add", "-f", file.to_str().unwrap()]);
    assert!(e.contains("cache.toml") && e.contains("`health.port` is missing"), "{e}");
    let e = fails(&s, &["service", "show", "ghost"]);
    assert!(e.contains("service \"ghost\" not found"), "{e}");

    // Scale through an operation, followed with a progress bar until every replica is healthy.
    ok(&s, &["service", "add", "plain", "--replicas", "1", "--", "sleep", "1000"]);
    let out = ok(&s, &["service", "scale", "plain", "3"]);
    assert!(out.starts_with("scaling plain from 1 to 3 replicas: operation op-"), "{out}");
    let id = out.split_whitespace().find(|w| w.starts_with("op-")).unwrap().to_owned();
    let out = ok(&s, &["op", "watch", &id]);
    assert!(out.contains(&format!("{id} plain succeeded 1->3 [")) && out.contains("healthy 3/3"), "{out}");
    assert!(out.contains("AGENT") && out.contains("local"), "{out}");
    let op: Value = serde_json::from_str(&ok(&s, &["op", "show", &id, "--json"])).unwrap();
    assert_eq!((op["state"].as_str(), op["healthy"].as_u64(), op["agents"]["local"]["healthy"].as_u64()), (Some("succeeded"), Some(3), Some(3)));
    let op: Value = serde_json::from_str(&ok(&s, &["service", "scale", "plain", "2", "--wait", "--json"])).unwrap();
    assert_eq!((op["state"].as_str(), op["healthy"].as_u64()), (Some("succeeded"), Some(2)), "--wait --json prints the ended operation");
    let out = ok(&s, &["service", "scale", "plain", "1", "--wait"]);
    assert!(out.contains("succeeded 2->1") && out.contains("healthy 1/1"), "{out}");
    let table = ok(&s, &["service", "list"]);
    assert!(table.lines().any(|l| l.starts_with("plain") && l.contains(" 1/1 ")), "{table}");
    let show = ok(&s, &["service", "show", "plain"]);
    assert!(show.contains("INDEX") && show.lines().any(|l| l.starts_with("0") && l.contains("healthy") && l.contains("local")), "{show}");
    let e = fails(&s, &["service", "scale", "plain", "-1"]);
    assert!(e.contains("cannot scale to -1 replicas; give a count from 0 to 10000"), "{e}");
    let e = fails(&s, &["op", "show", "op-999"]);
    assert!(e.contains("no operation \"op-999\""), "{e}");

    let out = ok(&s, &["service", "delete", "cache"]);
    assert_eq!(out.trim(), "deleted service cache");
    let list: Value = serde_json::from_str(&ok(&s, &["service", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Leave no replica behind: a scale to 0 ends once every replica has stopped.
    for name in ["web", "plain"] {
        let out = ok(&s, &["service", "scale", name, "0", "--wait"]);
        assert!(out.contains("succeeded") && out.contains("replicas 0"), "{out}");
        ok(&s, &["service", "delete", name]);
    }
    up.terminate();
}

fn healthy(v: &Value) -> u64 {
    v["status"]["healthy"].as_u64().unwrap()
}

fn replicas(v: &Value) -> u64 {
    v["status"]["replicas"].as_u64().unwrap()
}

/// Waits for an operation to end; returns it.
async fn wait_op(s: &TestServer, id: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let op = s.get(&format!("/operations/{id}")).await;
        if op["state"] != "running" {
            return op;
        }
        assert!(tokio::time::Instant::now() < deadline, "operation {id} still running after {secs}s: {op}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A process service whose replicas say they are up with a file, and are healthy while it exists
/// and no `sick-N` file does: an exec check, run by the agent with the replica's environment.
fn files_service(name: &str, dir: &std::path::Path, replicas: i64) -> Value {
    let d = dir.display();
    json!({
        "name": name, "replicas": replicas,
        "command": format!("rm -f {d}/sick-$TUG_REPLICA; echo $$ > {d}/pid-$TUG_REPLICA; touch {d}/up-$TUG_REPLICA; exec sleep 1000"),
        "health": {"kind": "exec", "command": format!("test -f {d}/up-$TUG_REPLICA && ! test -f {d}/sick-$TUG_REPLICA"),
                   "interval": "100ms", "timeout": "100ms", "unhealthy_threshold": 3},
        "restart": {"initial_delay": "100ms", "max_delay": "1s"},
        "stop_grace": "1s"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_replicas_come_up_healthy_scale_and_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::POST, "/services", Some(files_service("pool5", files.path(), 5))).await;
    assert_eq!(st, 201, "{v}");
    let v = wait_service(&s, "pool5", 20, "5 healthy", |v| healthy(v) == 5).await;
    let list = v["status"]["list"].as_array().unwrap();
    let indices: Vec<u64> = list.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert!(list.iter().all(|r| r["state"] == "healthy" && r["agent"] == "local" && r["attempt"] == 1), "{v}");

    // A replica killed is replaced, at the same index.
    let pid: i32 = std::fs::read_to_string(files.path().join("pid-2")).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = wait_service(&s, "pool5", 20, "replica 2 restarted and healthy", |v| {
        let r = &v["status"]["list"][2];
        r["attempt"] == 2 && r["state"] == "healthy"
    })
    .await;
    let r2 = &v["status"]["list"][2];
    assert_eq!(r2["restarts"], 1);
    assert!(r2["reason"].as_str().is_some_and(|r| r.contains("exited (failed)")), "{r2}");
    let new_pid: i32 = std::fs::read_to_string(files.path().join("pid-2")).unwrap().trim().parse().unwrap();
    assert_ne!(new_pid, pid);

    // A replica that fails its health check is stopped and replaced.
    std::fs::write(files.path().join("sick-4"), "").unwrap();
    let v = wait_service(&s, "pool5", 20, "replica 4 replaced after failing its check", |v| {
        let r = &v["status"]["list"][4];
        r["attempt"] == 2 && r["state"] == "healthy"
    })
    .await;
    let why = v["status"]["list"][4]["reason"].as_str().unwrap();
    assert!(why.starts_with("unhealthy: the check command exited with exit status: 1"), "{why}");
    assert_eq!(healthy(&v), 5);

    // Scale 5 -> 20 -> 2 through operations that answer at once and end when done.
    let (st, op) = s.req(Method::POST, "/services/pool5/scale", Some(json!({"replicas": 20}))).await;
    assert_eq!(st, 202, "{op}");
    assert_eq!((op["from"].as_u64(), op["to"].as_u64(), op["state"].as_str()), (Some(5), Some(20), Some("running")));
    let done = wait_op(&s, op["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["healthy"].as_u64(), done["replicas"].as_u64()), (Some(20), Some(20)));
    assert_eq!(done["agents"]["local"]["healthy"], 20);
    assert_eq!(s.get("/services/pool5").await["spec"]["replicas"], 20);
    let (st, op) = s.req(Method::POST, "/services/pool5/scale", Some(json!({"replicas": 2}))).await;
    assert_eq!(st, 202);
    let done = wait_op(&s, op["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let v = s.get("/services/pool5").await;
    let indices: Vec<u64> = v["status"]["list"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1], "scale-in stops the newest (highest) indices");
    // The stopped replicas' processes are gone.
    for i in 2..20 {
        let pid: i32 = std::fs::read_to_string(files.path().join(format!("pid-{i}"))).unwrap().trim().parse().unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        });
        assert!(gone, "replica {i} (pid {pid}) still runs after the scale-in");
    }
    expect(&s, Method::POST, "/services/pool5/scale", Some(json!({"replicas": -3})), 422, "invalid_service", "cannot scale to -3 replicas").await;
    expect(&s, Method::POST, "/services/pool5/scale", Some(json!({"count": 3})), 400, "invalid_body", "unknown field `count`").await;
    expect(&s, Method::POST, "/services/ghost/scale", Some(json!({"replicas": 3})), 404, "service_not_found", "ghost").await;
    expect(&s, Method::GET, "/operations/op-999", None, 404, "operation_not_found", "op-999").await;

    // Deleting the service stops its replicas.
    let (st, _) = s.req(Method::DELETE, "/services/pool5", None).await;
    assert_eq!(st, 204);
    for i in 0..2 {
        let pid: i32 = std::fs::read_to_string(files.path().join(format!("pid-{i}"))).unwrap().trim().parse().unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        });
        assert!(gone, "replica {i} still runs after its service was deleted");
    }
    assert_eq!(s.server.as_ref().unwrap().scheduler.check_invariants().await.unwrap(), Ok(()));
    s.stop().await;
}

fn pids(dir: &std::path::Path, n: u32) -> Vec<i32> {
    (0..n).map(|i| std::fs::read_to_string(dir.join(format!("pid-{i}"))).unwrap().trim().parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replaces_every_replica_in_healthy_batches() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(Method::POST, "/services", Some(files_service("again", files.path(), 4))).await;
    assert_eq!(st, 201, "{v}");
    wait_service(&s, "again", 20, "4 healthy", |v| healthy(v) == 4).await;
    let before = pids(files.path(), 4);

    // Through the CLI: half the replicas at a time, each batch healthy before the next.
    let server = s.base.trim_end_matches("/api/v1").to_owned();
    let out = tokio::task::spawn_blocking(move || ok(&server, &["service", "restart", "again", "--batch", "50%", "--wait"])).await.unwrap();
    assert!(out.contains("restarting again") && out.contains("succeeded"), "{out}");
    let v = s.get("/services/again").await;
    assert_eq!(healthy(&v), 4, "{v}");
    assert!(v["status"]["list"].as_array().unwrap().iter().all(|r| r["attempt"] == 2 && r["state"] == "healthy"), "{v}");
    assert_eq!(v["spec"], s.get("/services/again").await["spec"]);
    let after = pids(files.path(), 4);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert_ne!(a, b, "replica {i} kept its process");
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(*a), None).is_err(), "replica {i}'s old process {a} still runs");
    }
    let releases = s.get("/services/again/releases").await;
    let r = &releases[0];
    assert_eq!((r["state"].as_str(), r["plan"]["batch"].as_str(), r["plan"]["smoke"].as_u64()), (Some("succeeded"), Some("50%"), Some(0)), "{r}");
    let history: Vec<&str> = r["history"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(history[0].starts_with("a restart: every replica is replaced on the same spec"), "{history:?}");
    // Two batches of two: replicas 2 and 3 are only pulled out once 0 and 1 are healthy again.
    let at = |what: &str| history.iter().position(|h| h.starts_with(what)).unwrap_or_else(|| panic!("no {what:?} in {history:?}"));
    assert!(at("replica 0 is healthy") < at("replica 2 pulled out") && at("replica 1 is healthy") < at("replica 3 pulled out"), "{history:?}");
    assert_eq!(s.get("/services/again").await["spec"], v["spec"]);

    // Through the API: answers at once with the release; a second restart meanwhile is refused.
    let (st, r) = s.req(Method::POST, "/services/again/restart?batch=1", None).await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["plan"]["batch"], 1);
    let (st, e) = s.req(Method::POST, "/services/again/restart", None).await;
    assert_eq!(st, 409, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("revoke it"), "{e}");
    let id = r["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = s.get(&format!("/releases/{id}")).await;
        if r["state"] == "succeeded" {
            break;
        }
        assert!(r["state"] != "failed" && tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v = wait_service(&s, "again", 20, "4 healthy", |v| healthy(v) == 4).await;
    assert!(v["status"]["list"].as_array().unwrap().iter().all(|r| r["attempt"] == 3), "{v}");
    assert!(pids(files.path(), 4).iter().zip(&after).all(|(a, b)| a != b));

    expect(&s, Method::POST, "/services/again/restart?batch=0", None, 400, "invalid_batch", "replace at least 1 replica").await;
    expect(&s, Method::POST, "/services/again/restart?batches=2", None, 400, "invalid_query", "batches").await;
    expect(&s, Method::POST, "/services/ghost/restart", None, 404, "service_not_found", "ghost").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_oldest_stops_the_longest_running_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut spec = files_service("elders", files.path(), 3);
    spec["scale_in"] = json!("oldest");
    let (st, v) = s.req(Method::POST, "/services", Some(spec)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["spec"]["scale_in"], "oldest");
    wait_service(&s, "elders", 20, "3 healthy", |v| healthy(v) == 3).await;
    // Replica 0 restarts, so it is the youngest now.
    let pid = pids(files.path(), 1)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_service(&s, "elders", 20, "replica 0 back", |v| v["status"]["list"][0]["attempt"] == 2 && healthy(v) == 3).await;
    let (st, op) = s.req(Method::POST, "/services/elders/scale", Some(json!({"replicas": 1}))).await;
    assert_eq!(st, 202, "{op}");
    let done = wait_op(&s, op["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let v = s.get("/services/elders").await;
    let indices: Vec<u64> = v["status"]["list"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0], "the two that ran longest stopped: {v}");
    // A scale-out fills the lowest free indices.
    let (_, op) = s.req(Method::POST, "/services/elders/scale", Some(json!({"replicas": 3}))).await;
    assert_eq!(wait_op(&s, op["id"].as_str().unwrap(), 30).await["state"], "succeeded");
    let v = s.get("/services/elders").await;
    let indices: Vec<u64> = v["status"]["list"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    let mut bad = files_service("elders", files.path(), 3);
    bad["scale_in"] = json!("random");
    let (st, e) = s.req(Method::PUT, "/services/elders", Some(bad)).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("invalid scale_in \"random\": give \"newest\""), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_health_check_passes_once_the_replica_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The replica serves only after a moment: it is running, not healthy, until then.
    let svc = json!({
        "name": "web1", "replicas": 1,
        "command": format!("sleep 0.5; exec python3 -m http.server --bind 127.0.0.1 {port}"),
        "health": {"kind": "http", "port": port, "path": "/", "interval": "100ms", "timeout": "100ms", "grace_period": "10s"}
    });
    let (st, v) = s.req(Method::POST, "/services", Some(svc)).await;
    assert_eq!(st, 201, "{v}");
    let v = wait_service(&s, "web1", 10, "running before it serves", |v| v["status"]["list"][0]["state"] == "running").await;
    assert_eq!(healthy(&v), 0);
    let v = wait_service(&s, "web1", 20, "healthy once it serves", |v| healthy(v) == 1).await;
    assert_eq!(replicas(&v), 1);
    let (st, _) = s.req(Method::DELETE, "/services/web1", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

/// A paused-time server (in-memory store, no-op runtime holding replicas) whose clock reads
/// `start`, with service `office` (2 replicas) and `rules`.
async fn ruled_service(dir: &std::path::Path, start: &str, rules: Value) -> tug_server::embedded::Embedded {
    use std::sync::Arc;
    let store: Arc<dyn tug_store::Store> = Arc::new(tug_store::mem::MemStore::new());
    let server = paused_server(store, dir, Arc::new(tug_agent::runtime::noop::NoopRuntime), clock_at(start)).await;
    let spec = json!({"name": "office", "replicas": 2, "command": "serve", "scale": rules});
    let spec = tug_core::ServiceSpec::from_json(&spec.to_string()).unwrap();
    server.scheduler.create_service(spec.validate().unwrap()).await.unwrap();
    server
}

async fn office(s: &tug_server::embedded::Embedded) -> (u32, u32) {
    let st = s.scheduler.service_status("office").await.unwrap().unwrap();
    (st.desired, st.healthy)
}

#[tokio::test(start_paused = true)]
async fn scaling_rules_fire_on_the_job_schedules_in_paused_time() {
    let dir = tempfile::tempdir().unwrap();
    // 2026-06-01 is a Monday.
    let rules = json!([
        {"schedule": "0 0 9 * * MON-FRI", "tz": "Asia/Shanghai", "replicas": 20},
        {"schedule": "0 0 20 * * *", "replicas": 4}
    ]);
    let server = ruled_service(dir.path(), START, rules).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(office(&server).await, (2, 2));
    // 09:00 in Shanghai is 01:00 UTC.
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    assert_eq!(office(&server).await, (20, 20));
    assert_eq!(server.store.get_service("office").await.unwrap().spec.replicas, 20, "the scale is durable");
    // 20:00 UTC.
    tokio::time::sleep(std::time::Duration::from_secs(19 * 3600)).await;
    assert_eq!(office(&server).await, (4, 4));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_scaling_rule_in_a_spring_forward_gap_fires_at_the_next_valid_instant() {
    let dir = tempfile::tempdir().unwrap();
    // Europe/Berlin springs forward on 2027-03-28 at 02:00 CET (01:00 UTC): 02:30 does not exist
    // that day, and the rule fires at the first valid instant after the gap, 03:00 CEST.
    let rules = json!([{"schedule": "0 30 2 * * *", "tz": "Europe/Berlin", "replicas": 7}]);
    let server = ruled_service(dir.path(), "2027-03-28T00:30:00Z", rules).await;
    tokio::time::sleep(std::time::Duration::from_secs(29 * 60)).await;
    assert_eq!(office(&server).await, (2, 2), "00:59 UTC: not yet");
    tokio::time::sleep(std::time::Duration::from_secs(2 * 60)).await;
    assert_eq!(office(&server).await, (7, 7), "01:01 UTC: fired at 03:00 CEST");
    server.shutdown().await;
}

#[test]
fn docker_replicas_come_up_healthy_each_in_its_container() {
    let Some(image) = docker_test_image() else { return };
    let up = Up::start();
    let s = up.server.clone();
    let name = format!("dock-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let spec = format!(
        "name = \"{name}\"\nreplicas = 0\ncommand = \"sleep 1000\"\nruntime = \"docker\"\n\
         [docker]\nimage = \"{image}\"\npull = \"never\"\n"
    );
    std::fs::write(&file, spec).unwrap();
    ok(&s, &["service", "add", "-f", file.to_str().unwrap()]);
    let out = ok(&s, &["service", "scale", &name, "3", "--wait"]);
    assert!(out.contains("succeeded 0->3") && out.contains("healthy 3/3"), "{out}");
    let ids: Vec<Vec<String>> = (0..3).map(|i| replica_containers(&name, i)).collect();
    assert!(ids.iter().all(|c| c.len() == 1), "one container per replica: {ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    // Each runs under dwait as its PID 1, as jobs' warm containers do.
    for c in ids.iter().flatten() {
        let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.Path}} {{.State.Pid}}", c]).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (path, pid) = out.split_once(' ').unwrap_or_else(|| panic!("docker inspect {c}: {out:?}"));
        assert_eq!(path, "/.tug/dwait", "container {c}'s entrypoint");
        // The container's first process, seen from the host: dwait serving its socket, PID 1 inside.
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv: Vec<String> = argv.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!((argv[0].as_str(), argv[1].as_str()), ("/.tug/dwait", "serve"), "container {c}'s PID 1: {argv:?}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or_default();
        assert_eq!(nspid.split_whitespace().last(), Some("1"), "container {c}: dwait is PID 1 in its namespace ({nspid:?})");
    }
    let out = ok(&s, &["service", "scale", &name, "0", "--wait"]);
    assert!(out.contains("succeeded 3->0"), "{out}");
    ok(&s, &["service", "delete", &name]);
    // A clean stop removes the replicas' containers, as it does jobs' warm containers.
    up.terminate();
    let left: Vec<String> = (0..3).flat_map(|i| replica_containers(&name, i)).collect();
    if !left.is_empty() {
        std::process::Command::new("docker").args(["rm", "-f"]).args(&left).output().unwrap();
    }
    assert!(left.is_empty(), "containers left after a clean stop: {left:?}");
}

/// An http check of docker replicas on Docker's bridge network reaches each replica at its
/// container's address (nothing listens on the host's port).
#[test]
fn http_checks_reach_bridge_networked_docker_replicas() {
    let Some(image) = docker_test_image() else { return };
    let up = Up::start();
    let s = up.server.clone();
    let name = format!("web-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let spec = format!(
        "name = \"{name}\"\nreplicas = 0\nruntime = \"docker\"\n\
         command = \"mkdir -p /www && echo ok > /www/ok && exec httpd -f -p 8080 -h /www\"\n\
         [docker]\nimage = \"{image}\"\npull = \"never\"\nnetwork = \"bridge\"\n\
         [health]\nkind = \"http\"\nport = 8080\npath = \"/ok\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
    );
    std::fs::write(&file, spec).unwrap();
    ok(&s, &["service", "add", "-f", file.to_str().unwrap()]);
    let out = ok(&s, &["service", "scale", &name, "2", "--wait"]);
    assert!(out.contains("succeeded 0->2") && out.contains("healthy 2/2"), "{out}");
    assert!(std::net::TcpStream::connect("127.0.0.1:8080").is_err(), "nothing may listen on the host's port 8080 for this test");
    ok(&s, &["service", "delete", &name]);
    up.terminate();
    let left: Vec<String> = (0..2).flat_map(|i| replica_containers(&name, i)).collect();
    if !left.is_empty() {
        std::process::Command::new("docker").args(["rm", "-f"]).args(&left).output().unwrap();
    }
}

/// Replicas outlive a kill -9 of `tug up`: its agent re-attaches them and the restarted server
/// adopts them as they run (same process, same run and attempt) instead of starting them afresh.
#[test]
fn replicas_outlive_a_kill_9_of_tug_up_and_are_adopted() {
    let mut up = Up::start();
    let s = up.server.clone();
    let files = tempfile::tempdir().unwrap();
    let d = files.path().display();
    let cmd = format!("echo $$ > {d}/pid-$TUG_REPLICA; exec sleep 1000");
    ok(&s, &["service", "add", "kept", "--replicas", "2", "--", &cmd]);
    ok(&s, &["service", "scale", "kept", "2", "--wait"]);
    let pid = |i: u32| std::fs::read_to_string(files.path().join(format!("pid-{i}"))).unwrap().trim().parse::<i32>().unwrap();
    let before: Vec<Value> = serde_json::from_str::<Value>(&ok(&s, &["service", "show", "kept", "--json"])).unwrap()["status"]["list"].as_array().unwrap().clone();
    let pids = [pid(0), pid(1)];
    up.kill9_and_restart();
    let mut v = Value::Null;
    for _ in 0..200 {
        v = serde_json::from_str(&ok(&s, &["service", "show", "kept", "--json"])).unwrap();
        if v["status"]["healthy"] == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(v["status"]["healthy"], 2, "{v}");
    let after = v["status"]["list"].as_array().unwrap();
    for (b, a) in before.iter().zip(after) {
        assert_eq!((&a["run_id"], &a["attempt"], &a["restarts"]), (&b["run_id"], &b["attempt"], &b["restarts"]), "adopted as it ran: {v}");
    }
    assert_eq!([pid(0), pid(1)], pids, "the same processes");
    for p in pids {
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok(), "replica {p} still runs");
    }
    ok(&s, &["service", "scale", "kept", "0", "--wait"]);
    up.terminate();
}

/// The service's `stop_signal` and `stop_grace` are the agent's when it stops a replica: a
/// replica that traps the signal and goes on is killed once the grace is over, not before (the
/// test agent's own grace is half a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_stopped_with_its_services_signal_and_grace() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let d = files.path().display();
    let svc = json!({
        "name": "stubborn", "replicas": 1, "stop_signal": "USR1", "stop_grace": "2s",
        "command": format!("trap 'echo USR1 >> {d}/got' USR1; trap 'echo TERM >> {d}/got' TERM; echo $$ > {d}/pid; while true; do sleep 0.05; done"),
    });
    let (st, v) = s.req(Method::POST, "/services", Some(svc)).await;
    assert_eq!(st, 201, "{v}");
    wait_service(&s, "stubborn", 20, "healthy", |v| healthy(v) == 1).await;
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(files.path().join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            break pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let t0 = tokio::time::Instant::now();
    let (st, _) = s.req(Method::POST, "/services/stubborn/scale", Some(json!({"replicas": 0}))).await;
    assert_eq!(st, 202);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(15), "the replica still runs");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let got = std::fs::read_to_string(files.path().join("got")).unwrap_or_default();
    assert!(got.contains("USR1") && !got.contains("TERM"), "the replica got {got:?}");
    assert!(took >= std::time::Duration::from_millis(1800), "killed after {took:?}, before the service's 2s grace");
    let (st, _) = s.req(Method::DELETE, "/services/stubborn", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[test]
fn replica_logs_through_the_api_and_the_cli() {
    let up = Up::start();
    let s = up.server.clone();
    ok(&s, &["service", "add", "talk", "--replicas", "2", "--", "echo hello from $TUG_REPLICA; exec sleep 1000"]);
    ok(&s, &["service", "scale", "talk", "2", "--wait"]);
    let mut out = String::new();
    for _ in 0..100 {
        out = ok(&s, &["service", "logs", "talk"]);
        if out.contains("[1] hello from 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(out.contains("[0] hello from 0") && out.contains("[1] hello from 1"), "{out}");
    let one = ok(&s, &["service", "logs", "talk", "--index", "1"]);
    assert_eq!(one.trim(), "hello from 1");
    // reqwest is built without a crypto provider of its own: install ours, as the CLI does.
    tug_tls::provider();
    let body = reqwest::blocking::get(format!("{s}/api/v1/services/talk/replicas/0/log")).unwrap().text().unwrap();
    assert_eq!(body.trim(), "hello from 0");
    let e = fails(&s, &["service", "logs", "talk", "--index", "7"]);
    assert!(e.contains("service \"talk\" has no replica 7 now (it has 2)"), "{e}");
    let e = fails(&s, &["service", "logs", "ghost"]);
    assert!(e.contains("service \"ghost\" not found"), "{e}");
    ok(&s, &["service", "scale", "talk", "0", "--wait"]);

    // -f follows every replica as it writes, each line whole with its index, and ends once the
    // replicas are scaled in.
    let cmd = "i=0; while true; do echo tick $TUG_REPLICA $i; i=$((i+1)); sleep 0.1; done";
    ok(&s, &["service", "add", "ticks", "--replicas", "2", "--", cmd]);
    ok(&s, &["service", "scale", "ticks", "2", "--wait"]);
    let mut f = std::process::Command::new(env!("CARGO_BIN_EXE_tug"))
        .args(["service", "logs", "ticks", "-f"])
        .env("TUG_SERVER", &s)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(f.stdout.take().unwrap()));
    let (mut last0, mut last1) = (0, 0);
    while last0 < 20 || last1 < 20 {
        let line = lines.next().expect("-f keeps printing while the replicas run").unwrap();
        let n = |l: &str, i: u32| l.strip_prefix(&format!("[{i}] tick {i} ")).and_then(|n| n.parse::<u32>().ok());
        match (n(&line, 0), n(&line, 1)) {
            (Some(n), _) => last0 = n,
            (_, Some(n)) => last1 = n,
            _ => panic!("a line that is not a whole tick of its replica: {line:?}"),
        }
    }
    ok(&s, &["service", "scale", "ticks", "0", "--wait"]);
    let started = tokio::time::Instant::now();
    for _ in lines.by_ref() {}
    let st = f.wait().unwrap();
    assert!(st.success() && started.elapsed() < std::time::Duration::from_secs(10), "{st:?} after {:?}", started.elapsed());
    up.terminate();
}

/// A docker service whose image does not exist: each replica is tried a few times, then given up
/// with the agent's error, and the scale operation fails saying which replica and why, instead
/// of pulling for ever. A release of an image that exists brings the replicas up.
#[test]
fn an_image_that_does_not_exist_fails_the_operation_and_is_not_retried_for_ever() {
    let Some(image) = docker_test_image() else { return };
    let up = Up::start();
    let s = up.server.clone();
    let name = format!("noimg-{}", std::process::id());
    let ghost = format!("tugboat-no-such-image-{}:1", std::process::id());
    add_docker_service(&s, &name, 0, &ghost);
    let e = fails(&s, &["service", "scale", &name, "2", "--wait"]);
    assert!(e.contains("failed: replica ") && e.contains("gave up after 3 failed starts in a row") && e.contains(&format!("image {ghost} is not on this host")), "{e}");
    let v: Value = serde_json::from_str(&ok(&s, &["service", "show", &name, "--json"])).unwrap();
    let attempts = |v: &Value| v["status"]["list"].as_array().unwrap().iter().map(|r| r["attempt"].as_u64().unwrap()).collect::<Vec<_>>();
    assert!(v["status"]["list"].as_array().unwrap().iter().all(|r| r["state"] == "failed" || r["state"] == "restarting"), "{v}");
    // No more tries: a given-up replica waits for a change.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let v: Value = serde_json::from_str(&ok(&s, &["service", "show", &name, "--json"])).unwrap();
    assert_eq!(attempts(&v), [3, 3], "{v}");
    assert_eq!(v["status"]["failed"], 2, "{v}");
    let show = ok(&s, &["service", "show", &name]);
    assert!(show.lines().any(|l| l.starts_with("0") && l.contains("failed") && l.contains("gave up after 3 failed starts")), "{show}");
    // A release of an image that exists starts them again.
    let out = ok(&s, &["release", "start", &name, "--image", &image, "--smoke", "0", "--batch", "100%", "--wait", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    let v: Value = serde_json::from_str(&ok(&s, &["service", "show", &name, "--json"])).unwrap();
    assert_eq!(v["status"]["healthy"], 2, "{v}");
    ok(&s, &["service", "scale", &name, "0", "--wait"]);
    ok(&s, &["service", "delete", &name]);
    up.terminate();
    let left: Vec<String> = (0..2).flat_map(|i| replica_containers(&name, i)).collect();
    if !left.is_empty() {
        std::process::Command::new("docker").args(["rm", "-f"]).args(&left).output().unwrap();
    }
}
