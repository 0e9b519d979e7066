//! The container network on one machine: `tug up --vtep` plumbs its own networked containers, with
//! addresses from the embedded server's pools, and two of them in one pool reach each other.
//! Needs root, Docker, the test image and a static dwait (scripts/test provides them).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{Up, docker_test_image, ok};

fn json(server: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ok(server, args)).expect("--json prints JSON")
}

/// The first finished run of `job`, which must have succeeded.
fn finished(server: &str, job: &str) -> Value {
    for _ in 0..600 {
        let runs = json(server, &["runs", job, "--json"]);
        if let Some(r) = runs.as_array().unwrap().iter().find(|r| r["state"] != "running" && r["state"] != "starting" && r["state"] != "queued") {
            assert_eq!(r["state"], "succeeded", "{r}\n{}", ok(server, &["logs", &r["id"].to_string()]));
            return r.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no finished run of {job}");
}

fn job(dir: &std::path::Path, name: &str, image: &str, command: &str) -> String {
    let file = dir.join(format!("{name}.toml"));
    let spec = format!(
        "name = \"{name}\"\nschedule = \"@yearly\"\ncommand = [\"sh\", \"-c\", {command:?}]\nruntime = \"docker\"\n\
         network = {{ pool = \"upnet\" }}\n[docker]\nimage = \"{image}\"\npull = \"never\"\nidle_timeout = \"10m\"\n"
    );
    std::fs::write(&file, spec).unwrap();
    file.to_str().unwrap().to_owned()
}

/// The firewall rule the agent's preflight asks for on a host whose bridged traffic goes through
/// iptables (Docker's FORWARD policy drops it), for this test's bridge; removed on drop with the
/// bridge and VXLAN device, also when the test fails.
struct Links(u32);

impl Links {
    fn rule(&self, op: &str) -> Vec<String> {
        let br = format!("tbr{}", self.0);
        [op, "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"].map(str::to_owned).to_vec()
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = Command::new("iptables").args(self.rule("-D")).output();
        for l in [format!("tbr{}", self.0), format!("tvx{}", self.0)] {
            let _ = Command::new("ip").args(["link", "del", &l]).output();
        }
    }
}

#[test]
fn tug_up_plumbs_its_own_networked_containers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the container network needs root");
        return;
    }
    let Some(image) = docker_test_image() else { return };
    let vni = 4000 + std::process::id() % 1000;
    let links = Links(vni);
    let bridged_netfilter = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "1");
    if bridged_netfilter {
        assert!(Command::new("iptables").args(links.rule("-I")).status().unwrap().success());
    }
    let up = Up::start_with(&["--vtep", "127.0.0.1"]);
    let s = up.server.clone();
    let dir = tempfile::tempdir().unwrap();
    ok(&s, &["net", "pool", "add", "upnet", "--cidr", "10.204.0.0/24", "--vxlan", &vni.to_string(), "--gateway", "10.204.0.1"]);
    ok(&s, &["job", "add", "-f", &job(dir.path(), "a", &image, "ip -o -4 addr show eth0")]);
    ok(&s, &["job", "run", "a"]);
    let run = finished(&s, "a");
    let addrs = json(&s, &["net", "addr", "list", "--json"]);
    let claim = &addrs[0];
    assert_eq!((claim["name"].as_str(), claim["agent"].as_str()), (Some("job/a/0"), Some("local")), "{addrs}");
    let ip = claim["ip"].as_str().unwrap().to_owned();
    let log = ok(&s, &["logs", &run["id"].to_string()]);
    assert!(log.contains(&format!("inet {ip}/24")), "the container has its claimed address {ip}:\n{log}");

    // A second container in the pool reaches the first (its warm container stays up) over the
    // pool's bridge on this host.
    ok(&s, &["job", "add", "-f", &job(dir.path(), "b", &image, &format!("ping -c 1 -W 5 {ip}"))]);
    ok(&s, &["job", "run", "b"]);
    finished(&s, "b");

    // Stopping removes the warm containers and their network: no veth of the pool is left.
    let st = up.terminate();
    assert!(st.success(), "{st:?}");
    let left = String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    assert!(!left.contains("tv0acc00"), "{left}");
    drop(links);
}
