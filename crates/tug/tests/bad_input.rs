//! Bad input gets the right status and a message that says what to fix.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let post = |body| (Method::POST, "/jobs", Some(body));

    let (m, p, b) = post(json!({"name": "a", "schedule": "61 * * * *", "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_schedule", "61").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "R/2026-13-01T00:00:00Z/PT1M", "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_schedule", "R/2026-13-01").await;
    // A count of repetitions all in the past would never run; R0 (never, on purpose) and an
    // unbounded R/ from long ago are taken.
    let (m, p, b) = post(json!({"name": "old", "schedule": "R3/2020-01-01T00:00:00Z/PT1H", "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_schedule", "job \"old\": every repetition of schedule \"R3/2020-01-01T00:00:00Z/PT1H\" is in the past").await;
    s.create(json!({"name": "never", "schedule": "R0/2020-01-01T00:00:00Z/PT1H", "command": "x"})).await;
    s.create(json!({"name": "old", "schedule": "R/2020-01-01T00:00:00Z/PT1H", "command": "x"})).await;
    let ended = json!({"name": "old", "schedule": "R3/2020-01-01T00:00:00Z/P1Y", "command": "x"});
    expect(&s, Method::PUT, "/jobs/old", Some(ended), 422, "invalid_schedule", "move the start forward, or write R/ for no end").await;
    // Started 3 days ago, every 2 days, 3 times: the last is tomorrow.
    let start = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72)).round(jiff::Unit::Second).unwrap();
    let (m, p, b) = post(json!({"name": "later", "schedule": format!("R3/{start}/P2D"), "command": "x"}));
    let (status, v) = s.req(m, p, b).await;
    assert_eq!(status, 201, "its last repetition is still to come: {v}");
    for name in ["never", "old", "later"] {
        assert_eq!(s.req(Method::DELETE, &format!("/jobs/{name}"), None).await.0, 204);
    }
    let (m, p, b) = post(json!({"name": "a", "schedule": "* * * * *", "tz": "Mars/Base", "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_tz", "job \"a\": `tz` \"Mars/Base\" is not a known IANA time zone").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "* * * * *", "command": "x", "colour": "red"}));
    expect(&s, m, p, b, 400, "invalid_body", "unknown field `colour`").await;
    // An unknown value of a field with a fixed set of values: the field, the values allowed.
    let (m, p, b) = post(json!({"name": "a", "schedule": "@yearly", "command": "x", "concurrency": "sometimes"}));
    expect(&s, m, p, b, 400, "invalid_body", "concurrency: expected one of allow, forbid, replace, got \"sometimes\"").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "@yearly", "command": "x", "docker": {"image": "i", "pull": "daily"}}));
    expect(&s, m, p, b, 400, "invalid_body", "docker.pull: expected one of if-not-present, always, never, got \"daily\"").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "@yearly", "command": "x", "misfire": 3}));
    expect(&s, m, p, b, 400, "invalid_body", "misfire: expected one of skip, run_once, run_all, got 3").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "@yearly", "command": "x", "retries": -1}));
    expect(&s, m, p, b, 400, "invalid_body", "retries: expected a count or a table, got -1").await;
    let (m, p, b) = post(json!({"name": "bad name", "schedule": "* * * * *", "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_job", "A-Z a-z 0-9").await;
    for name in [".", ".."] {
        let (m, p, b) = post(json!({"name": name, "schedule": "* * * * *", "command": "x"}));
        expect(&s, m, p, b, 422, "invalid_job", "(not `.` or `..` alone)").await;
    }
    let hot = json!({"name": "a", "schedule": "@yearly", "command": "x", "retries": {"count": 4294967295u32, "initial_delay": "0s"}});
    let (m, p, b) = post(hot);
    expect(&s, m, p, b, 422, "invalid_job", "at most 100 retries are allowed").await;
    let hot = json!({"name": "a", "schedule": "@yearly", "command": "x", "retries": {"count": 3, "initial_delay": "0s"}});
    let (m, p, b) = post(hot);
    expect(&s, m, p, b, 422, "invalid_job", "retried in a hot loop").await;
    let (m, p, b) = post(json!({"name": "a", "schedule": "* * * * *", "parents": ["b"], "command": "x"}));
    expect(&s, m, p, b, 422, "invalid_job", "not both").await;
    let (m, p, b) = post(json!({"name": "a", "parents": ["ghost"], "command": "x"}));
    expect(&s, m, p, b, 422, "unknown_parent", "\"ghost\" does not exist").await;
    let (st, v) = s.http.post(format!("{}/jobs", s.base)).header("content-type", "application/json").body("{not json").send().await.map(|r| (r.status().as_u16(), r)).unwrap();
    assert_eq!(st, 400);
    assert!(v.text().await.unwrap().contains("invalid job JSON"));

    // Duplicate name.
    s.create(manual_job("a", "true")).await;
    let (m, p, b) = post(manual_job("a", "true"));
    expect(&s, m, p, b, 409, "job_exists", "already exists").await;

    // A cycle a -> c -> b -> a is refused and named.
    s.create(json!({"name": "b", "parents": ["a"], "command": "true"})).await;
    s.create(json!({"name": "c", "parents": ["b"], "command": "true"})).await;
    let body = json!({"name": "a", "parents": ["c"], "command": "true"});
    expect(&s, Method::PUT, "/jobs/a", Some(body), 422, "dependency_cycle", "a -> c -> b -> a").await;
    // A parent cannot be deleted while a child depends on it.
    expect(&s, Method::DELETE, "/jobs/a", None, 409, "conflict", "parent of b").await;

    // Missing things.
    expect(&s, Method::GET, "/jobs/ghost", None, 404, "job_not_found", "\"ghost\" not found").await;
    expect(&s, Method::POST, "/jobs/ghost/run", None, 404, "job_not_found", "ghost").await;
    expect(&s, Method::GET, "/jobs/ghost/runs", None, 404, "job_not_found", "ghost").await;
    expect(&s, Method::GET, "/runs/999999", None, 404, "run_not_found", "999999").await;
    expect(&s, Method::GET, "/runs/abc", None, 400, "invalid_run_id", "not a number").await;
    expect(&s, Method::GET, "/jobs?limit=x", None, 400, "invalid_query", "limit").await;
    for garbage in ["garbage", "abc", "2e2e", "zz"] {
        let path = format!("/jobs?cursor={garbage}");
        expect(&s, Method::GET, &path, None, 400, "bad_cursor", &format!("invalid cursor \"{garbage}\": pass the `next_cursor`")).await;
    }
    expect(&s, Method::GET, "/jobs/a/runs?cursor=garbage", None, 400, "bad_cursor", "invalid cursor \"garbage\"").await;
    expect(&s, Method::GET, "/jobs/a/runs?state=done", None, 400, "invalid_state", "unknown run state").await;
    expect(&s, Method::PUT, "/jobs/a", Some(manual_job("other", "true")), 400, "name_mismatch", "renaming").await;
    expect(&s, Method::GET, "/schedule/preview?expr=*%20*", None, 422, "invalid_schedule", "*").await;
    let path = "/schedule/preview?expr=@hourly&tz=Mars/Base";
    expect(&s, Method::GET, path, None, 422, "invalid_tz", "unknown time zone \"Mars/Base\": use an IANA name").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_paginates_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    for i in 0..7 {
        let mut j = manual_job(&format!("job-{i}"), "true");
        j["labels"] = json!({"team": if i % 2 == 0 { "even" } else { "odd" }});
        j["description"] = json!(format!("number {i}"));
        s.create(j).await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor { Some(c) => format!("/jobs?limit=3&cursor={c}"), None => "/jobs?limit=3".into() };
        let page = s.get(&q).await;
        names.extend(page["items"].as_array().unwrap().iter().map(|j| j["spec"]["name"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    assert_eq!(s.get("/jobs?label=team=odd").await["items"].as_array().unwrap().len(), 3);
    assert_eq!(s.get("/jobs?q=NUMBER%205").await["items"].as_array().unwrap().len(), 1);
    let preview = s.get("/schedule/preview?expr=0%209%20*%20*%20MON&tz=Europe/Berlin&count=2&after=2026-11-25T00:00:00Z").await;
    assert_eq!(preview["fires"], json!(["2026-11-30T09:00:00+01:00", "2026-12-07T09:00:00+01:00"]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    for (method, path) in tug_server::api::openapi::ROUTES {
        let path = path.replace("{name}", "ghost").replace("{id}", "424242");
        let path = if path.starts_with("/agents/") { path.replace("ghost", "local") } else { path };
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let url = if path == "/schedule/preview" { format!("{path}?expr=@daily") } else { path.clone() };
        let (st, v) = s.req(m, &url, if *method == "post" || *method == "put" { Some(json!({})) } else { None }).await;
        assert_ne!(st, 405, "{method} {path}: method not allowed");
        assert_ne!(v["error"]["code"], "not_found", "{method} {path} is documented but not routed");
    }
    let doc = s.get("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    s.stop().await;
}

/// A real full disk under the server's data dir: writes get 507 with the directory to clean up,
/// reads keep working, and writes work again once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_507_that_names_the_directory() {
    let Some(disk) = tug_store::testing::Tmpfs::mount("2m") else { return };
    let mut s = TestServer::start(disk.path()).await;
    s.create(json!({"name": "before", "schedule": "@yearly", "command": "true"})).await;
    disk.fill("filler");
    let mut full = None;
    for i in 0..1000 {
        let job = json!({"name": format!("full-{i}"), "schedule": "@yearly", "command": "true", "description": "x".repeat(2000)});
        let (st, v) = s.req(Method::POST, "/jobs", Some(job)).await;
        if st != 201 {
            full = Some((st, v));
            break;
        }
    }
    let (st, v) = full.expect("writes fail once the disk is full");
    assert_eq!((st, v["error"]["code"].as_str()), (507, Some("storage_full")), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("holding {}", disk.path().display())) && msg.contains("free space"), "{msg}");
    assert_eq!(s.get("/jobs/before").await["spec"]["name"], "before", "reads still work");
    disk.free("filler");
    s.create(json!({"name": "after", "schedule": "@yearly", "command": "true"})).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_that_fire_more_often_than_the_server_allows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    for (schedule, gap) in [("@every 1ms", "1ms apart"), ("R/2026-01-01T00:00:00Z/PT0.5S", "500ms apart"), ("@every 999ms", "999ms apart")] {
        let job = json!({"name": "hot", "schedule": schedule, "command": "true"});
        expect(&s, Method::POST, "/jobs", Some(job), 422, "schedule_too_frequent", gap).await;
    }
    let job = json!({"name": "hot", "schedule": "@every 1ms", "command": "true"});
    expect(&s, Method::POST, "/jobs", Some(job), 422, "schedule_too_frequent", "at least 1s apart (its --min-interval").await;
    // Once a second is what cron's seconds field allows: fine. Changing it to faster is refused too.
    s.create(json!({"name": "tick", "schedule": "* * * * * *", "command": "true"})).await;
    let faster = json!({"name": "tick", "schedule": "@every 100ms", "command": "true"});
    expect(&s, Method::PUT, "/jobs/tick", Some(faster), 422, "schedule_too_frequent", "100ms apart").await;
    s.stop().await;

    // An admin may allow more (as tests and benchmarks do).
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(dir.path(), std::sync::Arc::new(tug_server::clock::SystemClock), |c| {
        c.min_interval = std::time::Duration::from_millis(100);
    })
    .await;
    s.create(json!({"name": "quick", "schedule": "@every 200ms", "command": "true", "misfire": "skip"})).await;
    let job = json!({"name": "hot", "schedule": "@every 50ms", "command": "true"});
    expect(&s, Method::POST, "/jobs", Some(job), 422, "schedule_too_frequent", "at least 100ms apart").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_errors_give_the_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let toml = "name = \"t\"\nschedule = \"@yearly\"\ncommand = \"true\"\nconcurrency = \"sometimes\"\n";
    let r = s.http.post(format!("{}/jobs", s.base)).header("content-type", "application/toml").body(toml).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("at line 4, column 15") && msg.contains("concurrency: expected one of allow, forbid, replace, got \"sometimes\""), "{msg}");
    let toml = "name = \"t\"\nschedule = \"@yearly\"\ncommand = \"true\"\nretries = -1\n";
    let r = s.http.post(format!("{}/jobs", s.base)).header("content-type", "application/toml").body(toml).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(msg, "invalid job file at line 4, column 11: retries: expected a count or a table, got -1");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_database_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = TestServer::start(&data).await;
    s.create(json!({"name": "secret", "schedule": "@yearly", "command": "true", "env": {"TOKEN": "s3cret"}})).await;
    // A run leaves its log (and the local agent its state) under the data dir too.
    let (st, run) = s.post("/jobs/secret/run").await;
    assert_eq!(st, 201, "{run}");
    let run = s.wait_run(run["id"].as_u64().unwrap(), 30).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data dir");
    for f in ["tug.db", "tug.db-wal", "tug.db.firelog"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // Everything below it: directories 0700, files 0600 (sockets and the like aside).
    let mut all = Vec::new();
    let mut todo = vec![data.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            } else if !meta.is_file() {
                continue;
            }
            all.push((path.strip_prefix(&data).unwrap().display().to_string(), meta.is_dir(), format!("{:o}", meta.permissions().mode() & 0o777)));
        }
    }
    let wrong: Vec<_> = all.iter().filter(|(_, dir, m)| m != if *dir { "700" } else { "600" }).collect();
    assert!(wrong.is_empty(), "readable by others: {wrong:?}; all: {all:?}");
    assert!(all.iter().any(|(p, dir, _)| !dir && p.contains("log")), "no run log found under the data dir: {all:?}");
    assert!(all.iter().any(|(_, dir, _)| *dir), "no agent or log directory under the data dir: {all:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_headers_and_paths_get_the_limit_in_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let r = s.http.get(format!("{}/jobs", s.base)).header("x-padding", "x".repeat(100 * 1024)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 431);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("the request headers are ") && msg.ends_with("bytes; the most accepted is 65536"), "{msg}");
    let r = s.http.get(format!("{}/jobs?q={}", s.base, "x".repeat(9 * 1024))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 414);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "uri_too_long", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().ends_with("the most accepted is 8192"), "{v}");
    // Headers within the limit are served.
    let r = s.http.get(format!("{}/jobs", s.base)).header("x-padding", "x".repeat(32 * 1024)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_larger_than_one_read_is_capped_and_says_where_to_read_on() {
    const MAX: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The agent keeps logs larger than one read may return.
    let config = tug_agent::AgentConfig { log_limit: 40 << 20, ..tug_agent::AgentConfig::default() };
    let agent = tug::local::local_agent(config, std::sync::Arc::new(tug_agent::runtime::process::ProcessRuntime::new()));
    let config = tug_server::embedded::EmbeddedConfig::new(dir.path());
    let clock = std::sync::Arc::new(tug_server::clock::SystemClock);
    let server = tug_server::embedded::Embedded::start(config, Some(agent), clock, Some(listener)).await.unwrap();
    let mut s = TestServer { base: format!("http://{addr}/api/v1"), server: Some(server), http: tug::http() };
    let size = MAX + 100_000;
    s.create(json!({"name": "loud", "schedule": "@yearly", "command": format!("head -c {size} /dev/zero | tr '\\0' x")})).await;
    let (st, run) = s.post("/jobs/loud/run").await;
    assert_eq!(st, 201, "{run}");
    let id = run["id"].as_u64().unwrap();
    assert_eq!(s.wait_run(id, 60).await["state"], "succeeded");

    let r = s.http.get(format!("{}/runs/{id}/log", s.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let header = |r: &reqwest::Response, name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header(&r, "x-tug-log-limit").as_deref(), Some("16777216"));
    assert_eq!(header(&r, "x-tug-log-next-offset").as_deref(), Some("16777216"));
    let first = r.bytes().await.unwrap();
    assert_eq!(first.len(), MAX, "one read returns the limit, no more");
    assert!(first.iter().all(|&b| b == b'x'));

    let r = s.http.get(format!("{}/runs/{id}/log?offset={MAX}", s.base)).send().await.unwrap();
    assert_eq!((header(&r, "x-tug-log-limit"), header(&r, "x-tug-log-next-offset")), (None, None), "the rest fits");
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    s.stop().await;
}
