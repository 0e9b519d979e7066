//! `/api/v1/net`: pools are created, listed, shown and deleted; bad pools and jobs naming a
//! missing pool are refused with a message that says what to fix; a pool's selector gives the
//! jobs and services whose labels match it their pool.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn pool(name: &str, cidr: &str, kind: &str, id: u64, gateway: &str) -> Value {
    json!({"name": name, "cidr": cidr, "segment": {"kind": kind, "id": id}, "gateway": gateway})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut blue = pool("blue", "10.77.0.0/24", "vlan", 77, "10.77.0.1");
    blue["reserve"] = json!(["10.77.0.2-10.77.0.9"]);
    blue["select"] = json!({"team": "web"});
    let (st, v) = s.req(Method::POST, "/net/pools", Some(blue.clone())).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!((v["usable"].as_u64(), v["claimed"].as_u64()), (Some(245), Some(0)), "{v}");
    assert_eq!(v["segment"], json!({"kind": "vlan", "id": 77}));
    let (st, _) = s.req(Method::POST, "/net/pools", Some(pool("green", "10.78.0.0/24", "vxlan", 5078, "10.78.0.1"))).await;
    assert_eq!(st, 201);
    let list = s.get("/net/pools").await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["blue", "green"]);
    assert_eq!(s.get("/net/pools/blue").await["select"], json!({"team": "web"}));
    assert_eq!(s.get("/net/addresses").await, json!([]));
    assert_eq!(s.get("/net/addresses?pool=green").await, json!([]));

    // Bad pools, each refused with what to fix.
    let post = |body| (Method::POST, "/net/pools", Some(body));
    let cases = [
        (pool("p", "10.1.0.0/33", "vlan", 5, "10.1.0.1"), 400, "invalid_body", "prefix length must be a number from 0 to 32"),
        (pool("p", "10.1.0.7/24", "vlan", 5, "10.1.0.1"), 400, "invalid_body", "did you mean 10.1.0.0/24?"),
        (pool("p", "10.1.0.0/24", "vlan", 5, "10.2.0.1"), 422, "invalid_pool", "gateway 10.2.0.1 is outside 10.1.0.0/24"),
        (pool("p", "10.1.0.0/24", "vlan", 4095, "10.1.0.1"), 422, "invalid_pool", "VLAN 4095 is out of range; use 1-4094"),
        (pool("p", "10.1.0.0/24", "vxlan", 0, "10.1.0.1"), 422, "invalid_pool", "VNI 0 is out of range"),
        (pool("p", "10.77.0.128/25", "vlan", 5, "10.77.0.129"), 422, "invalid_pool", "overlaps pool \"blue\" (10.77.0.0/24)"),
        (pool("p", "10.1.0.0/24", "vlan", 77, "10.1.0.1"), 422, "invalid_pool", "vlan 77 is already pool \"blue\"'s segment"),
        (pool("blue", "10.1.0.0/24", "vlan", 5, "10.1.0.1"), 409, "pool_exists", "already exists"),
        (json!({"name": "p", "cidr": "10.1.0.0/24", "vlan": 5, "gateway": "10.1.0.1"}), 400, "invalid_body", "unknown field `vlan`"),
    ];
    for (body, status, code, needle) in cases {
        let (m, p, b) = post(body);
        expect(&s, m, p, b, status, code, needle).await;
    }
    expect(&s, Method::GET, "/net/pools/ghost", None, 404, "pool_not_found", "\"ghost\" not found").await;
    expect(&s, Method::GET, "/net/addresses?pool=ghost", None, 404, "pool_not_found", "tug net pool list").await;
    expect(&s, Method::DELETE, "/net/pools/ghost", None, 404, "pool_not_found", "ghost").await;

    // A job names a pool that exists, or is refused.
    let job = |pool: &str| {
        json!({"name": "web", "parents": ["x"], "command": "true", "runtime": "docker",
               "docker": {"image": "busybox"}, "network": {"pool": pool}})
    };
    s.create(manual_job("x", "true")).await;
    expect(&s, Method::POST, "/jobs", Some(job("ghost")), 422, "invalid_job", "network pool \"ghost\" does not exist; create it with `tug net pool add`").await;
    let (st, v) = s.req(Method::POST, "/jobs", Some(job("blue"))).await;
    assert_eq!(st, 201, "{v}");
    expect(&s, Method::PUT, "/jobs/web", Some(job("ghost")), 422, "invalid_job", "does not exist").await;

    let (st, _) = s.req(Method::DELETE, "/net/pools/green", None).await;
    assert_eq!(st, 204);
    let (st, _) = s.req(Method::DELETE, "/jobs/web", None).await;
    assert_eq!(st, 204);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_selector_gives_matching_jobs_and_services_their_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut blue = pool("blue", "10.77.0.0/24", "vlan", 77, "10.77.0.1");
    blue["select"] = json!({"team": "web"});
    let (st, v) = s.req(Method::POST, "/net/pools", Some(blue)).await;
    assert_eq!(st, 201, "{v}");
    s.create(manual_job("x", "true")).await;
    let job = |name: &str, labels: Value, docker: Value| {
        json!({"name": name, "parents": ["x"], "command": "true", "runtime": "docker", "labels": labels, "docker": docker})
    };
    let warm = json!({"image": "busybox"});
    // A warm docker job with the selected labels draws from the pool, and shows it.
    let (st, v) = s.req(Method::POST, "/jobs", Some(job("web", json!({"team": "web", "tier": "front"}), warm.clone()))).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(s.get("/jobs/web").await["spec"]["network"], json!({"pool": "blue"}));
    // Other labels, a docker network of its own, a container per run, or a process job: none.
    let others = [
        job("api", json!({"team": "api"}), warm.clone()),
        job("own", json!({"team": "web"}), json!({"image": "busybox", "network": "bridge"})),
        job("once", json!({"team": "web"}), json!({"image": "busybox", "mode": "per-run"})),
        json!({"name": "proc", "parents": ["x"], "command": "true", "labels": {"team": "web"}}),
    ];
    for j in others {
        let name = j["name"].as_str().unwrap().to_owned();
        let (st, v) = s.req(Method::POST, "/jobs", Some(j)).await;
        assert_eq!(st, 201, "{v}");
        assert!(s.get(&format!("/jobs/{name}")).await["spec"]["network"].is_null(), "{name} drew from a pool");
    }
    // A service too.
    let svc = json!({"name": "front", "runtime": "docker", "labels": {"team": "web"}, "docker": {"image": "busybox"},
                     "command": "sleep 1000", "replicas": 0});
    let (st, v) = s.req(Method::POST, "/services", Some(svc.clone())).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(s.get("/services/front").await["spec"]["network"], json!({"pool": "blue"}));
    // Labels that two pools select: the job must name one.
    let mut green = pool("green", "10.78.0.0/24", "vxlan", 5078, "10.78.0.1");
    green["select"] = json!({"tier": "front"});
    let (st, v) = s.req(Method::POST, "/net/pools", Some(green)).await;
    assert_eq!(st, 201, "{v}");
    expect(
        &s,
        Method::PUT,
        "/jobs/web",
        Some(job("web", json!({"team": "web", "tier": "front"}), warm.clone())),
        422,
        "invalid_job",
        "job \"web\": its labels match the selectors of pools \"blue\", \"green\"; name the one to draw from, e.g. network = { pool = \"blue\" }",
    )
    .await;
    let mut named = job("web", json!({"team": "web", "tier": "front"}), warm);
    named["network"] = json!({"pool": "green"});
    let (st, v) = s.req(Method::PUT, "/jobs/web", Some(named)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.get("/jobs/web").await["spec"]["network"], json!({"pool": "green"}));
    s.stop().await;
}
