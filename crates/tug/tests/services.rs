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

    let out = ok(&s, &["service", "delete", "cache"]);
    assert_eq!(out.trim(), "deleted service cache");
    let list: Value = serde_json::from_str(&ok(&s, &["service", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}
