//! The container network end to end: `tug server` and `tug agent run` on simulated hosts (network
//! namespaces, see `hosts/mod.rs`), a VXLAN pool, docker jobs in warm containers whose `dwait`
//! waits for `dresponse` to plumb them. Needs root, Docker, the static dwait and the test image
//! (`scripts/test` provides them); skipped with a note otherwise.

mod hosts;

use std::time::Duration;

use hosts::{AgentArgs, Cluster, TOKEN};
use serde_json::{Value, json};

/// The test image and whether Docker answers.
fn docker_ready() -> Option<String> {
    let image = std::env::var("TUG_TEST_IMAGE").ok()?;
    std::env::var_os("TUG_DWAIT")?;
    let up = std::process::Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    up.then_some(image)
}

/// Removes the containers of these agents on drop (killed agents leave their warm containers).
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for agent in &self.0 {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=tugboat.agent={agent}")])
                .output();
            let ids = out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>());
            if let Ok(ids) = ids
                && !ids.is_empty()
            {
                let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
            }
        }
    }
}

/// A warm docker job on rack `rack` in pool `pool` that prints its address and MAC.
fn networked_job(name: &str, image: &str, pool: &str, rack: &str, command: &str) -> Value {
    json!({
        "name": name,
        "schedule": "@yearly",
        "command": ["sh", "-c", command],
        "runtime": "docker",
        "docker": {"image": image, "idle_timeout": "10m"},
        "network": {"pool": pool},
        "constraints": [["rack", "EQUALS", rack]],
        "resources": {"cpus": 0.1},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_container_gets_its_pool_address_before_its_first_run() {
    let Some(image) = docker_ready() else {
        eprintln!("skipped: needs Docker, TUG_DWAIT and TUG_TEST_IMAGE (run ./scripts/test)");
        return;
    };
    let (a, b) = (format!("net-a-{}", std::process::id()), format!("net-b-{}", std::process::id()));
    let _cleanup = Containers(vec![a.clone(), b.clone()]);
    let mut c = Cluster::new(2, &[]).await;
    for (i, (name, rack)) in [(a.as_str(), "a"), (b.as_str(), "b")].into_iter().enumerate() {
        let vtep = c.net.host(i).addr.clone();
        c.start_agent_with(i, &AgentArgs { name, attributes: &format!("rack={rack}"), cpus: "2", token: TOKEN }, &["--vtep".into(), vtep]);
    }
    c.wait_agents_up(&[&a, &b]).await;
    c.post("/net/pools", json!({"name": "blue", "cidr": "10.201.0.0/24", "segment": {"kind": "vxlan", "id": 4201}, "gateway": "10.201.0.1"})).await;

    let show = "ip -o -4 addr show eth0; cat /sys/class/net/eth0/address; ip route";
    c.create_and_run(networked_job("web", &image, "blue", "a", show)).await;
    let run = c.wait_run("web", Duration::from_secs(60), "web to succeed", |r| r["state"] == "succeeded").await;
    assert_eq!(run["agent"], a.as_str());
    let addrs = c.get("/net/addresses?pool=blue").await;
    let claim = &addrs[0];
    assert_eq!((claim["name"].as_str(), claim["agent"].as_str()), (Some("job/web/0"), Some(a.as_str())), "{addrs}");
    let (ip, mac) = (claim["ip"].as_str().unwrap(), claim["mac"].as_str().unwrap());
    let (_, log) = c.get_text(&format!("/runs/{}/log", run["id"])).await;
    assert!(log.contains(&format!("inet {ip}/24")), "the container has its claimed address {ip}:\n{log}");
    assert!(log.contains(mac), "and its MAC {mac}:\n{log}");
    assert!(log.contains("default via 10.201.0.1 dev eth0"), "and the pool's gateway:\n{log}");

    // A job naming a pool the agent's host cannot join is refused with what to do: net-b has a
    // VTEP but no Open vSwitch bridge for VLAN pools. Its dwait says so and exits.
    c.post("/net/pools", json!({"name": "red", "cidr": "10.202.0.0/24", "segment": {"kind": "vlan", "id": 202}, "gateway": "10.202.0.1"})).await;
    c.create_and_run(networked_job("vlanjob", &image, "red", "b", "true")).await;
    let run = c.wait_run("vlanjob", Duration::from_secs(60), "vlanjob to fail", |r| r["state"] == "failed").await;
    let (_, log) = c.get_text(&format!("/runs/{}/log", run["id"])).await;
    let why = format!("{}\n{log}", run["reason"]);
    assert!(why.contains("--ovs-bridge"), "{why}");
}

/// The address and MAC a run of `job` printed (`ip -o -4 addr show eth0` and the MAC file).
fn ip_and_mac(log: &str) -> (String, String) {
    let ip = log.split("inet ").nth(1).and_then(|s| s.split('/').next()).unwrap_or_default().to_owned();
    let mac = log.lines().find(|l| l.starts_with("02:74:")).unwrap_or_default().trim().to_owned();
    (ip, mac)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_moves_host_with_its_address_and_is_reached_over_vxlan() {
    let Some(image) = docker_ready() else {
        eprintln!("skipped: needs Docker, TUG_DWAIT and TUG_TEST_IMAGE (run ./scripts/test)");
        return;
    };
    let pid = std::process::id();
    let names = [format!("mv-a1-{pid}"), format!("mv-a2-{pid}"), format!("mv-b-{pid}")];
    let _cleanup = Containers(names.to_vec());
    let mut c = Cluster::new(3, &[]).await;
    for (i, (name, rack)) in [(&names[0], "a"), (&names[1], "a"), (&names[2], "b")].into_iter().enumerate() {
        let vtep = c.net.host(i).addr.clone();
        c.start_agent_with(i, &AgentArgs { name, attributes: &format!("rack={rack}"), cpus: "2", token: TOKEN }, &["--vtep".into(), vtep]);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.wait_agents_up(&refs).await;
    c.post(&format!("/agents/{}/drain", names[1]), json!({})).await;
    c.post("/net/pools", json!({"name": "green", "cidr": "10.203.0.0/24", "segment": {"kind": "vxlan", "id": 4203}, "gateway": "10.203.0.1"})).await;

    // web runs on a1.
    let show = "ip -o -4 addr show eth0; cat /sys/class/net/eth0/address";
    c.create_and_run(networked_job("web", &image, "green", "a", show)).await;
    let first = c.wait_run("web", Duration::from_secs(60), "web to succeed", |r| r["state"] == "succeeded").await;
    assert_eq!(first["agent"], names[0].as_str());
    let (_, log) = c.get_text(&format!("/runs/{}/log", first["id"])).await;
    let (ip, mac) = ip_and_mac(&log);
    assert!(ip.starts_with("10.203.0.") && mac.starts_with("02:74:"), "{log}");

    // peer, on host b in the same pool, reaches it across hosts (VXLAN entries from the server).
    let ping = format!("for i in 1 2 3; do ping -c 1 -W 1 {ip} && exit 0; done; exit 1");
    c.create_and_run(networked_job("peer", &image, "green", "b", &ping)).await;
    let reached = c.wait_run("peer", Duration::from_secs(60), "peer to finish", |r| r["state"] == "succeeded" || r["state"] == "failed").await;
    let (_, plog) = c.get_text(&format!("/runs/{}/log", reached["id"])).await;
    assert_eq!(reached["state"], "succeeded", "peer on host b pings web on host a1:\n{plog}");

    // a1's agent restarts: it adopts web's warm container, which keeps its address, and takes its
    // network over, so that the move below still tears it down and gives the address back.
    c.stop_agent(0);
    let vtep = c.net.host(0).addr.clone();
    c.start_agent_with(0, &AgentArgs { name: &names[0], attributes: "rack=a", cpus: "2", token: TOKEN }, &["--vtep".into(), vtep]);
    c.wait_agents_up(&[&names[0]]).await;
    c.post("/jobs/web/run", json!({})).await;
    let adopted = c
        .wait_run("web", Duration::from_secs(60), "web's run after a1 restarted", |r| r["id"] != first["id"] && (r["state"] == "succeeded" || r["state"] == "failed"))
        .await;
    let (_, log) = c.get_text(&format!("/runs/{}/log", adopted["id"])).await;
    assert_eq!((adopted["state"].as_str(), adopted["agent"].as_str()), (Some("succeeded"), Some(names[0].as_str())), "{adopted}\n{log}");
    assert_eq!(ip_and_mac(&log), (ip.clone(), mac.clone()), "the adopted container keeps its address:\n{log}");
    let first = adopted;

    // Drain a1: web's next run goes to a2. The move is ordered (a1 stops it, then a2 plumbs it)
    // and keeps the address and MAC.
    c.post(&format!("/agents/{}/drain", names[0]), json!({})).await;
    c.post(&format!("/agents/{}/undrain", names[1]), json!({})).await;
    c.post("/jobs/web/run", json!({})).await;
    let moved = c
        .wait_run("web", Duration::from_secs(60), "web's run on a2", |r| r["id"].as_u64() > first["id"].as_u64() && (r["state"] == "succeeded" || r["state"] == "failed"))
        .await;
    let (_, log) = c.get_text(&format!("/runs/{}/log", moved["id"])).await;
    assert_eq!(moved["state"], "succeeded", "{moved}\n{log}\n{}", c.logs());
    assert_eq!(moved["agent"], names[1].as_str());
    assert_eq!(ip_and_mac(&log), (ip.clone(), mac.clone()), "same IP and MAC on the new host:\n{log}");
    let claim = c.get("/net/addresses?pool=green").await;
    let web = claim.as_array().unwrap().iter().find(|a| a["name"] == "job/web/0").unwrap().clone();
    assert_eq!(web["agent"], names[1].as_str(), "{claim}");
    // Nothing of it is left on a1.
    let links = std::process::Command::new("ip").args(["-n", &c.net.host(0).ns, "-o", "link"]).output().unwrap();
    let host_end = format!("tv{:08x}", u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap()));
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&host_end), "a1 still has {host_end}");

    // And peer reaches it at its new place.
    c.post("/jobs/peer/run", json!({})).await;
    let again = c
        .wait_run("peer", Duration::from_secs(60), "peer's second run", |r| r["id"] != reached["id"] && (r["state"] == "succeeded" || r["state"] == "failed"))
        .await;
    let (_, plog) = c.get_text(&format!("/runs/{}/log", again["id"])).await;
    assert_eq!(again["state"], "succeeded", "peer reaches the moved web:\n{plog}");
}
