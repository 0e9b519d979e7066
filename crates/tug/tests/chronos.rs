//! The Chronos-compatible API, driven with the job documents from Chronos's own API docs
//! (docs/docs/api.md), under both `/scheduler` and `/v1/scheduler`, against a real server.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Both prefixes Chronos serves its API under.
const PREFIXES: [&str; 2] = ["/scheduler", "/v1/scheduler"];

struct Chronos<'a> {
    s: &'a TestServer,
    root: String,
}

impl<'a> Chronos<'a> {
    fn new(s: &'a TestServer) -> Chronos<'a> {
        Chronos { s, root: s.base.trim_end_matches("/api/v1").to_string() }
    }

    /// Sends a request; returns the status and the body (JSON when it parses, else a string).
    async fn req(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut r = self.s.http.request(method, format!("{}{path}", self.root));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.req(Method::POST, path, Some(&body.to_string())).await
    }

    async fn ok_post(&self, path: &str, body: &Value) {
        let (st, v) = self.post(path, body).await;
        assert_eq!(st, 204, "POST {path} {body}: {v}");
    }

    async fn get(&self, path: &str) -> Value {
        let (st, v) = self.req(Method::GET, path, None).await;
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    async fn jobs(&self, prefix: &str) -> Vec<Value> {
        self.get(&format!("{prefix}/jobs")).await.as_array().unwrap().clone()
    }

    async fn job(&self, name: &str) -> Value {
        self.jobs("/scheduler").await.into_iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("no job {name}"))
    }
}

fn names(jobs: &[Value]) -> Vec<&str> {
    jobs.iter().map(|j| j["name"].as_str().unwrap()).collect()
}

/// The scheduled job example from Chronos's docs ("Adding a Scheduled Job").
fn sample_job1() -> Value {
    json!({
        "schedule": "R10/2030-10-01T05:52:00Z/PT2S",
        "name": "SAMPLE_JOB1",
        "epsilon": "PT15M",
        "command": "echo 'FOO' >> /tmp/JOB1_OUT",
        "owner": "bob@airbnb.com",
        "async": false
    })
}

/// The docker job example from Chronos's docs ("Adding a Docker Job"), its start moved forward.
fn docker_job() -> Value {
    json!({
        "schedule": "R/2030-09-25T17:22:00Z/PT2M",
        "name": "dockerjob",
        "container": {
            "type": "DOCKER",
            "image": "libmesos/ubuntu",
            "network": "BRIDGE",
            "volumes": [{"containerPath": "/var/log/", "hostPath": "/logs/", "mode": "RW"}]
        },
        "cpus": "0.5",
        "mem": "512",
        "fetch": [],
        "command": "while sleep 10; do date =u %T; done"
    })
}

/// The "Sample Job" from Chronos's docs, its start moved forward.
fn camus_job() -> Value {
    json!({
        "name": "camus_kafka2hdfs",
        "command": "/srv/data-infra/kafka/camus/kafka_hdfs_job.bash",
        "arguments": ["-verbose", "-debug"],
        "shell": false,
        "epsilon": "PT30M",
        "executor": "",
        "executorFlags": "",
        "retries": 2,
        "owner": "bofh@your-company.com",
        "async": false,
        "successCount": 190,
        "errorCount": 3,
        "lastSuccess": "2014-03-08T16:57:17.507Z",
        "lastError": "2014-03-01T00:10:15.957Z",
        "cpus": 1.0,
        "disk": 10240,
        "mem": 1024,
        "disabled": false,
        "fetch": [{"uri": "https://url-to-file", "cache": false, "extract": false, "executable": false}],
        "schedule": "R/2030-03-08T20:00:00.000Z/PT2H",
        "environmentVariables": [
            {"name": "JVMOPTS", "value": "-Xmx1000m"},
            {"name": "JAVA_LIBRARY_PATH", "value": "/usr/local/lib"}
        ]
    })
}

/// The dependent job example from Chronos's docs ("Adding a Dependent Job").
fn hostings_job() -> Value {
    json!({
        "async": true,
        "command": "bash -x /srv/data-infra/jobs/hive_query.bash run_hive hostings-earnings-summary",
        "epsilon": "PT30M",
        "errorCount": 0,
        "lastError": "",
        "lastSuccess": "2013-03-15T13:02:14.243Z",
        "name": "hostings_earnings_summary",
        "owner": "bob@airbnb.com",
        "parents": ["db_export-airbed_hostings", "db_export-airbed_reservation2s"],
        "retries": 2,
        "successCount": 100
    })
}

fn parent_job(name: &str) -> Value {
    json!({"name": name, "command": "true", "schedule": "R/2030-01-01T00:00:00Z/P1D", "owner": "bob@airbnb.com"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_examples_under_both_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);

    c.ok_post("/scheduler/iso8601", &sample_job1()).await;
    c.ok_post("/v1/scheduler/iso8601", &docker_job()).await;
    c.ok_post("/scheduler/iso8601", &camus_job()).await;
    c.ok_post("/v1/scheduler/iso8601", &parent_job("db_export-airbed_hostings")).await;
    c.ok_post("/scheduler/iso8601", &parent_job("db_export-airbed_reservation2s")).await;
    c.ok_post("/v1/scheduler/dependency", &hostings_job()).await;

    for prefix in PREFIXES {
        let jobs = c.jobs(prefix).await;
        assert_eq!(
            names(&jobs),
            [
                "SAMPLE_JOB1",
                "camus_kafka2hdfs",
                "db_export-airbed_hostings",
                "db_export-airbed_reservation2s",
                "dockerjob",
                "hostings_earnings_summary"
            ],
            "{prefix}"
        );
    }

    let j = c.job("SAMPLE_JOB1").await;
    assert_eq!(j["schedule"], "R10/2030-10-01T05:52:00Z/PT2S");
    assert_eq!(j["scheduleTimeZone"], "");
    assert_eq!(j["epsilon"], "PT15M");
    assert_eq!(j["command"], "echo 'FOO' >> /tmp/JOB1_OUT");
    assert_eq!(j["shell"], true);
    assert_eq!(j["owner"], "bob@airbnb.com");
    assert_eq!(j["async"], false);
    assert_eq!(j["retries"], 2, "Chronos's default");
    assert_eq!(j["disabled"], false);
    assert_eq!(j["concurrent"], false);
    assert_eq!((j["successCount"].clone(), j["errorCount"].clone()), (json!(0), json!(0)));
    assert_eq!((j["lastSuccess"].clone(), j["lastError"].clone()), (json!(""), json!("")));
    assert!(j.get("parents").is_none(), "a scheduled job has no parents field: {j}");

    let d = c.job("dockerjob").await;
    assert_eq!(d["container"]["type"], "DOCKER");
    assert_eq!(d["container"]["image"], "libmesos/ubuntu");
    assert_eq!(d["container"]["network"], "BRIDGE");
    assert_eq!(d["container"]["volumes"], json!([{"containerPath": "/var/log/", "hostPath": "/logs/", "mode": "RW"}]));
    assert_eq!(d["container"]["forcePullImage"], false);
    assert_eq!((d["cpus"].as_f64(), d["mem"].as_f64()), (Some(0.5), Some(512.0)));

    let k = c.job("camus_kafka2hdfs").await;
    assert_eq!(k["shell"], false);
    assert_eq!(k["command"], "/srv/data-infra/kafka/camus/kafka_hdfs_job.bash");
    assert_eq!(k["arguments"], json!(["-verbose", "-debug"]));
    assert_eq!(k["successCount"], 0, "read-only: computed, not taken from the body");
    assert_eq!(k["lastSuccess"], "");
    assert_eq!((k["disk"].as_f64(), k["mem"].as_f64(), k["cpus"].as_f64()), (Some(10240.0), Some(1024.0), Some(1.0)));
    assert_eq!(
        k["environmentVariables"],
        json!([{"name": "JAVA_LIBRARY_PATH", "value": "/usr/local/lib"}, {"name": "JVMOPTS", "value": "-Xmx1000m"}])
    );
    assert_eq!(k["fetch"][0]["uri"], "https://url-to-file", "unmapped fields read back as written");

    let h = c.job("hostings_earnings_summary").await;
    assert_eq!(h["parents"], json!(["db_export-airbed_hostings", "db_export-airbed_reservation2s"]));
    assert!(h.get("schedule").is_none(), "a dependent job has no schedule field: {h}");
    assert_eq!(h["async"], true);
    assert_eq!(h["epsilon"], "PT30M");
    assert_eq!(h["successCount"], 0);

    // The same jobs through the native API.
    let n = s.get("/jobs/camus_kafka2hdfs").await;
    assert_eq!(n["spec"]["command"], json!(["/srv/data-infra/kafka/camus/kafka_hdfs_job.bash", "-verbose", "-debug"]));
    assert_eq!(n["spec"]["env"]["JVMOPTS"], "-Xmx1000m");
    assert_eq!(n["spec"]["epsilon"], "30m");
    assert_eq!(n["spec"]["retries"]["count"], 2);
    let n = s.get("/jobs/dockerjob").await;
    assert_eq!(n["spec"]["runtime"], "docker");
    assert_eq!(n["spec"]["docker"]["volumes"], json!(["/logs/:/var/log/:rw"]));
    assert_eq!(n["spec"]["docker"]["network"], "bridge");
    let n = s.get("/jobs/hostings_earnings_summary").await;
    assert_eq!(n["spec"]["parents"], json!(["db_export-airbed_hostings", "db_export-airbed_reservation2s"]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_in_both_apis_and_post_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);

    // Native → Chronos.
    s.create(json!({"name": "native", "schedule": "R/2030-01-01T00:00:00Z/PT1H", "tz": "Europe/Berlin",
        "command": "echo native", "owner": "ops@example.com", "concurrency": "allow", "labels": {"team": "data"}}))
        .await;
    let j = c.job("native").await;
    assert_eq!(j["command"], "echo native");
    assert_eq!(j["schedule"], "R/2030-01-01T00:00:00Z/PT1H");
    assert_eq!(j["scheduleTimeZone"], "Europe/Berlin");
    assert_eq!(j["concurrent"], true);
    assert_eq!(j["retries"], 0);
    assert_eq!(j["epsilon"], "PT1M");

    // Chronos → native.
    c.ok_post("/scheduler/iso8601", &json!({"name": "chron", "command": "echo hi", "schedule": "R/2030-01-01T00:00:00Z/P1D",
        "scheduleTimeZone": "Asia/Shanghai", "disabled": true, "concurrent": true, "runAsUser": "nobody",
        "constraints": [["rack", "EQUALS", "rack-1"]], "softError": true, "ownerName": "Bob"})).await;
    let n = s.get("/jobs/chron").await;
    assert_eq!(n["spec"]["schedule"], "R/2030-01-01T00:00:00Z/P1D");
    assert_eq!(n["spec"]["tz"], "Asia/Shanghai");
    assert_eq!(n["spec"]["enabled"], false);
    assert_eq!(n["spec"]["concurrency"], "allow");
    assert_eq!(n["spec"]["user"], "nobody");
    assert_eq!(n["spec"]["constraints"], json!([["rack", "EQUALS", "rack-1"]]));
    assert_eq!(n["spec"]["chronos"]["softError"], true);
    let j = c.job("chron").await;
    assert_eq!((j["softError"].clone(), j["ownerName"].clone()), (json!(true), json!("Bob")));
    assert_eq!(j["constraints"], json!([["rack", "EQUALS", "rack-1"]]));

    // POST with an existing name updates it, keeping what only the native API knows (labels).
    c.ok_post("/v1/scheduler/iso8601", &json!({"name": "native", "command": "echo changed",
        "schedule": "R/2031-01-01T00:00:00Z/PT2H"})).await;
    let n = s.get("/jobs/native").await;
    assert_eq!(n["spec"]["command"], "echo changed");
    assert_eq!(n["spec"]["schedule"], "R/2031-01-01T00:00:00Z/PT2H");
    assert_eq!(n["spec"]["labels"]["team"], "data");
    assert_eq!(n["version"], 2);
    // chronos-python updates with PUT.
    let body = json!({"name": "native", "command": "echo put", "schedule": "R/2031-01-01T00:00:00Z/PT2H"});
    let (st, v) = c.req(Method::PUT, "/v1/scheduler/iso8601", Some(&body.to_string())).await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(s.get("/jobs/native").await["spec"]["command"], "echo put");
    // A scheduled job turned dependent through /dependency, and back.
    c.ok_post("/scheduler/dependency", &json!({"name": "native", "command": "echo dep", "parents": ["chron"]})).await;
    assert_eq!(s.get("/jobs/native").await["spec"]["parents"], json!(["chron"]));
    assert_eq!(c.job("native").await["parents"], json!(["chron"]));
    c.ok_post("/scheduler/iso8601", &json!({"name": "native", "command": "echo s", "schedule": "R//PT1H"})).await;
    let j = c.job("native").await;
    assert!(j.get("parents").is_none());
    assert!(j["schedule"].as_str().unwrap().starts_with("R/20"), "an empty start becomes now: {j}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);
    for p in PREFIXES {
        // Bad JSON.
        let (st, v) = c.req(Method::POST, &format!("{p}/iso8601"), Some("{not json")).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("invalid job JSON"), "{v}");
        // A schedule that does not parse: Chronos's {"status", "message"} document.
        let (st, v) = c.post(&format!("{p}/iso8601"), &json!({"name": "x", "command": "true", "schedule": "R/2030-13-01T00:00:00Z/PT1M"})).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["status"], "Bad Request");
        assert!(v["message"].as_str().unwrap().contains("R/2030-13-01"), "{v}");
        // The docs' own SAMPLE_JOB1 starts in 2012: Chronos refuses a start over a year ago.
        let mut old = sample_job1();
        old["schedule"] = json!("R10/2012-10-01T05:52:00Z/PT2S");
        let (st, v) = c.post(&format!("{p}/iso8601"), &old).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("more than 1 year in the past"), "{v}");
        // Missing fields and invalid names.
        let (st, v) = c.post(&format!("{p}/iso8601"), &json!({"name": "x"})).await;
        assert_eq!(st, 400);
        assert!(v["message"].as_str().unwrap().contains("`command`"), "{v}");
        let (st, v) = c.post(&format!("{p}/iso8601"), &json!({"name": "a b", "command": "true"})).await;
        assert_eq!(st, 400);
        assert!(v["message"].as_str().unwrap().contains("invalid"), "{v}");
        // Dependency with no parents, or an unknown one.
        let (st, v) = c.post(&format!("{p}/dependency"), &json!({"name": "d", "command": "true"})).await;
        assert_eq!(st, 400, "{v}");
        let (st, v) = c.post(&format!("{p}/dependency"), &json!({"name": "d", "command": "true", "parents": ["ghost"]})).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.as_str().unwrap().contains("\"ghost\" does not exist"), "{v}");
        // Unknown jobs: Chronos answers 400 "Job '...' not found".
        for (m, path) in [
            (Method::DELETE, "job/ghost"),
            (Method::PUT, "job/ghost"),
            (Method::GET, "job/stat/ghost"),
            (Method::GET, "job/ghost"),
            (Method::DELETE, "task/kill/ghost"),
        ] {
            let (st, v) = c.req(m.clone(), &format!("{p}/{path}"), None).await;
            assert_eq!(st, 400, "{m} {path}: {v}");
            assert_eq!(v, "Job 'ghost' not found", "{m} {path}");
        }
        // An unknown percentile gives an empty list.
        assert_eq!(c.get(&format!("{p}/stats/42ndPercentile")).await, json!([]));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_like_chronos() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);
    for (name, cmd) in [("alpha_daily", "run alpha"), ("beta_daily", "run beta"), ("gamma", "cleanup ALPHA")] {
        c.ok_post("/scheduler/iso8601", &json!({"name": name, "command": cmd, "schedule": "R/2030-01-01T00:00:00Z/P1D"})).await;
    }
    for p in PREFIXES {
        let search = |q: &str| {
            let path = format!("{p}/jobs/search?{q}");
            let c = &c;
            async move { names(c.get(&path).await.as_array().unwrap()).into_iter().map(String::from).collect::<Vec<_>>() }
        };
        assert_eq!(search("name=DAILY").await, ["alpha_daily", "beta_daily"]);
        assert_eq!(search("command=alpha").await, ["alpha_daily", "gamma"]);
        assert_eq!(search("name=daily&command=beta").await, ["beta_daily"]);
        assert_eq!(search("name=nothing&any=gamma").await, ["gamma"]);
        assert_eq!(search("any=alpha").await, ["alpha_daily", "beta_daily", "gamma"], "no name/command filter: all match");
        assert_eq!(search("limit=1&offset=1").await, ["beta_daily"]);
        assert_eq!(search("").await.len(), 3);
        let (st, _) = c.req(Method::GET, &format!("{p}/jobs/search?limit=x"), None).await;
        assert_eq!(st, 400);
    }
    s.stop().await;
}

/// Waits until the job has `n` finished runs and returns them (newest first).
async fn finished(s: &TestServer, job: &str, n: usize) -> Vec<Value> {
    s.wait_runs(job, 20, |r| r.iter().filter(|r| !["pending", "starting", "running"].contains(&state(r))).count() >= n)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_with_arguments_kill_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);
    let far = "R/2030-01-01T00:00:00Z/P1D";
    c.ok_post("/scheduler/iso8601", &json!({"name": "argv", "command": "/bin/echo", "shell": false,
        "arguments": ["one"], "schedule": far})).await;
    c.ok_post("/scheduler/iso8601", &json!({"name": "sh", "command": "echo shell", "schedule": far})).await;

    // Run now: 204, and ?arguments= appended to the command for that run.
    let (st, v) = c.req(Method::PUT, "/scheduler/job/argv?arguments=two%20three", None).await;
    assert_eq!(st, 204, "{v}");
    let runs = finished(&s, "argv", 1).await;
    assert_eq!(state(&runs[0]), "succeeded", "{}", runs[0]);
    assert_eq!(s.log(runs[0]["id"].as_u64().unwrap()).await.trim(), "one two three");
    let (st, _) = c.req(Method::PUT, "/v1/scheduler/job/sh?arguments=it's", None).await;
    assert_eq!(st, 204);
    let runs = finished(&s, "sh", 1).await;
    assert_eq!(s.log(runs[0]["id"].as_u64().unwrap()).await.trim(), "shell it's");
    // Without arguments the plain command runs.
    let (st, _) = c.req(Method::PUT, "/v1/scheduler/job/argv", None).await;
    assert_eq!(st, 204);
    let runs = finished(&s, "argv", 2).await;
    assert_eq!(s.log(runs[0]["id"].as_u64().unwrap()).await.trim(), "one");

    // Kill every task of a job.
    c.ok_post("/scheduler/iso8601", &json!({"name": "sleeper", "command": "sleep 30", "schedule": far})).await;
    let (st, _) = c.req(Method::PUT, "/scheduler/job/sleeper", None).await;
    assert_eq!(st, 204);
    s.wait_runs("sleeper", 10, |r| r.first().is_some_and(|r| state(r) == "running")).await;
    let csv = c.get("/scheduler/graph/csv").await;
    assert!(csv.as_str().unwrap().contains("node,sleeper,fresh,running\n"), "{csv}");
    let (st, v) = c.req(Method::DELETE, "/v1/scheduler/task/kill/sleeper", None).await;
    assert_eq!(st, 204, "{v}");
    let runs = finished(&s, "sleeper", 1).await;
    assert_eq!(state(&runs[0]), "killed");

    // Stats after real runs: three successes of a job that takes ~0.2 s, one failure of another.
    c.ok_post("/scheduler/iso8601", &json!({"name": "timed", "command": "sleep 0.2", "schedule": far})).await;
    c.ok_post("/scheduler/iso8601", &json!({"name": "failing", "command": "exit 3", "retries": 0, "schedule": far})).await;
    for i in 1..=3 {
        let (st, _) = c.req(Method::PUT, "/scheduler/job/timed", None).await;
        assert_eq!(st, 204);
        finished(&s, "timed", i).await;
    }
    c.req(Method::PUT, "/scheduler/job/failing", None).await;
    finished(&s, "failing", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = c.job("timed").await;
    assert_eq!((t["successCount"].clone(), t["errorCount"].clone()), (json!(3), json!(0)));
    assert!(t["lastSuccess"].as_str().unwrap().ends_with('Z'), "{t}");
    assert_eq!(t["lastError"], "");
    let f = c.job("failing").await;
    assert_eq!((f["successCount"].clone(), f["errorCount"].clone()), (json!(0), json!(1)));
    assert_eq!(f["errorsSinceLastSuccess"], 1);
    assert_ne!(f["lastError"], "");

    for p in PREFIXES {
        let stat = c.get(&format!("{p}/job/stat/timed")).await;
        let h = &stat["histogram"];
        assert_eq!(h["count"], 3, "{stat}");
        for k in ["75thPercentile", "95thPercentile", "98thPercentile", "99thPercentile", "median", "mean"] {
            let ms = h[k].as_f64().unwrap();
            assert!((150.0..5000.0).contains(&ms), "{k} = {ms} ms");
        }
        let hist = stat["taskStatHistory"].as_array().unwrap();
        assert_eq!(hist.len(), 3);
        assert_eq!(hist[0]["jobName"], "timed");
        assert_eq!(hist[0]["status"], "SUCCESS");
        assert_eq!(hist[0]["duration"], "0s");

        for pct in ["99thPercentile", "98thPercentile", "95thPercentile", "75thPercentile", "median", "mean"] {
            let rows = c.get(&format!("{p}/stats/{pct}")).await;
            let rows = rows.as_array().unwrap();
            assert_eq!(rows[0]["jobNameLabel"], "timed", "slowest first: {rows:?}");
            let secs = rows[0]["time"].as_f64().unwrap();
            assert!((0.15..5.0).contains(&secs), "{pct}: {secs} s");
            assert!(rows.iter().any(|r| r["jobNameLabel"] == "failing" && r["time"] == 0.0), "{rows:?}");
        }
    }
    let one = c.get("/v1/scheduler/job/timed").await;
    assert_eq!((one["name"].clone(), one["successCount"].clone()), (json!("timed"), json!(3)));
    let sum = c.get("/scheduler/jobs/summary").await;
    let row = sum["jobs"].as_array().unwrap().iter().find(|j| j["name"] == "failing").unwrap().clone();
    assert_eq!(row, json!({"name": "failing", "status": "idle", "state": "failure", "schedule": far, "parents": [], "disabled": false}));
    let csv = c.get("/scheduler/graph/csv").await;
    let csv = csv.as_str().unwrap();
    assert!(csv.contains("node,timed,success,idle\n"), "{csv}");
    assert!(csv.contains("node,failing,failure,idle\n"), "{csv}");
    assert!(csv.contains("node,sh,success,idle\n"), "{csv}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_graph_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);
    let far = "R/2030-01-01T00:00:00Z/P1D";
    c.ok_post("/scheduler/iso8601", &json!({"name": "a", "command": "true", "schedule": far, "scheduleTimeZone": "UTC"})).await;
    c.ok_post("/scheduler/dependency", &json!({"name": "b", "command": "true", "parents": ["a"]})).await;
    c.ok_post("/scheduler/dependency", &json!({"name": "c", "command": "true", "parents": ["b"]})).await;
    c.ok_post("/scheduler/iso8601", &json!({"name": "lone", "command": "true", "schedule": far})).await;

    for p in PREFIXES {
        let dot = c.get(&format!("{p}/graph/dot")).await;
        assert_eq!(
            dot.as_str().unwrap(),
            "digraph G {\n  1 [ label=\"a\" ];\n  2 [ label=\"b\" ];\n  3 [ label=\"c\" ];\n  4 [ label=\"lone\" ];\n  1 -> 2;\n  2 -> 3;\n}\n"
        );
        let csv = c.get(&format!("{p}/graph/csv")).await;
        assert_eq!(
            csv.as_str().unwrap(),
            "node,a,fresh,idle\nnode,b,fresh,idle\nnode,c,fresh,idle\nnode,lone,fresh,idle\nlink,a,b\nlink,b,c\n"
        );
    }

    // A dependent run follows its parent.
    let (st, _) = c.req(Method::PUT, "/scheduler/job/a", None).await;
    assert_eq!(st, 204);
    finished(&s, "c", 1).await;
    assert_eq!(c.job("c").await["successCount"], 1);

    // Deleting a dependent job gives its children its parents (as Chronos does).
    let (st, v) = c.req(Method::DELETE, "/scheduler/job/b", None).await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(c.job("c").await["parents"], json!(["a"]));
    // Deleting a scheduled job gives its dependent children its schedule.
    let (st, v) = c.req(Method::DELETE, "/v1/scheduler/job/a", None).await;
    assert_eq!(st, 204, "{v}");
    let j = c.job("c").await;
    assert_eq!(j["schedule"], far);
    assert!(j.get("parents").is_none(), "{j}");
    assert_eq!(s.req(Method::GET, "/jobs/a", None).await.0, 404, "gone from the native API too");

    // Delete everything.
    c.ok_post("/scheduler/dependency", &json!({"name": "d", "command": "true", "parents": ["c", "lone"]})).await;
    let (st, v) = c.req(Method::DELETE, "/scheduler/jobs", None).await;
    assert_eq!(st, 204, "{v}");
    assert!(c.jobs("/v1/scheduler").await.is_empty());
    assert_eq!(s.get("/jobs").await["items"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_listing_counts_every_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let c = Chronos::new(&s);
    for i in 0..60 {
        c.ok_post("/scheduler/iso8601", &json!({"name": format!("job{i:02}"), "command": "true",
            "schedule": "R/2030-01-01T00:00:00Z/P1D"})).await;
    }
    let (st, _) = c.req(Method::PUT, "/scheduler/job/job07", None).await;
    assert_eq!(st, 204);
    finished(&s, "job07", 1).await;
    let jobs = c.jobs("/v1/scheduler").await;
    assert_eq!(jobs.len(), 60);
    for j in &jobs {
        let want = if j["name"] == "job07" { 1 } else { 0 };
        assert_eq!(j["successCount"], want, "{}", j["name"]);
    }
    s.stop().await;
}
