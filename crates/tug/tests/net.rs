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
