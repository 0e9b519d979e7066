//! Host preflight for the container network: what the platform learned the hard way, checked when
//! the agent starts, each problem with its fix. Warnings, not errors: the agent runs anyway.

use std::path::{Path, PathBuf};
use std::process::Command;

use tug_net::plumb::HostNet;

/// Keyrings a host needs to start many containers: each takes a key of root's quota, and
/// Debian's default of 200 keys stops new containers long before the host is full.
pub const MIN_ROOT_MAXKEYS: u64 = 1_000_000;
/// The bytes those keys take.
pub const MIN_ROOT_MAXBYTES: u64 = 25_000_000;

/// Where the checks read: `/proc/sys` and `/sys/class/net`, or copies in tests.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/sys`.
    pub sysctl: PathBuf,
    /// `/sys/class/net`.
    pub links: PathBuf,
}

impl Default for Host {
    fn default() -> Host {
        Host { sysctl: "/proc/sys".into(), links: "/sys/class/net".into() }
    }
}

fn read_u64(root: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(root.join(key)).ok()?.trim().parse().ok()
}

/// What is wrong with this host for the container network, each with what to do.
pub fn check(host: &Host, net: &HostNet) -> Vec<String> {
    let mut out = Vec::new();
    for (key, min) in [("kernel/keys/root_maxkeys", MIN_ROOT_MAXKEYS), ("kernel/keys/root_maxbytes", MIN_ROOT_MAXBYTES)] {
        if let Some(v) = read_u64(&host.sysctl, key).filter(|v| *v < min) {
            let name = key.replace('/', ".");
            out.push(format!(
                "{name} is {v}: every container takes a kernel keyring, and too few keys stop new containers \
                 (Debian's default is 200); raise it: sysctl -w {name}={min}"
            ));
        }
    }
    if read_u64(&host.sysctl, "net/ipv4/ip_forward") == Some(0) {
        out.push(
            "net.ipv4.ip_forward is 0: if this host routes for its containers (it is their gateway), enable it: \
             sysctl -w net.ipv4.ip_forward=1"
                .into(),
        );
    }
    if read_u64(&host.sysctl, "net/bridge/bridge-nf-call-iptables") == Some(1) {
        out.push(
            "net.bridge.bridge-nf-call-iptables is 1: bridged container and tunnel traffic goes through iptables, \
             where a FORWARD policy of DROP (Docker sets one) drops it; set it to 0, or accept the pools' bridges: \
             iptables -I FORWARD -i tbr+ -o tbr+ -j ACCEPT"
                .into(),
        );
    }
    if net.vtep.is_some() && !host.links.as_os_str().is_empty() {
        if let Some(dev) = &net.underlay
            && !host.links.join(dev).exists()
        {
            out.push(format!("the underlay interface {dev} does not exist here; pass the one VXLAN tunnels leave through (--underlay)"));
        }
    }
    if let Some(bridge) = &net.ovs_bridge {
        let mut cmd = Command::new("ovs-vsctl");
        if let Some(db) = &net.ovs_db {
            cmd.arg(format!("--db={db}"));
        }
        match cmd.args(["--timeout=5", "br-exists", bridge]).output() {
            Ok(o) if o.status.success() => {}
            Ok(_) => out.push(format!(
                "Open vSwitch has no bridge {bridge}; create it with its uplink as a trunk: ovs-vsctl add-br {bridge} -- \
                 add-port {bridge} UPLINK"
            )),
            Err(e) => out.push(format!("cannot run ovs-vsctl ({e}); install Open vSwitch (Debian: openvswitch-switch) for VLAN pools")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in files {
            let p = dir.path().join("sys").join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("net/eth1")).unwrap();
        let h = Host { sysctl: dir.path().join("sys"), links: dir.path().join("net") };
        (dir, h)
    }

    #[test]
    fn each_problem_comes_with_its_fix() {
        let (_d, h) = host(&[
            ("kernel/keys/root_maxkeys", "200\n"),
            ("kernel/keys/root_maxbytes", "25000000\n"),
            ("net/ipv4/ip_forward", "0\n"),
            ("net/bridge/bridge-nf-call-iptables", "1\n"),
        ]);
        let net = HostNet { vtep: Some("10.0.0.1".parse().unwrap()), underlay: Some("eth9".into()), ..HostNet::default() };
        let w = check(&h, &net);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w[0].contains("kernel.keys.root_maxkeys is 200") && w[0].contains("sysctl -w kernel.keys.root_maxkeys=1000000"));
        assert!(w[1].contains("sysctl -w net.ipv4.ip_forward=1"));
        assert!(w[2].contains("FORWARD policy of DROP"));
        assert!(w[3].contains("the underlay interface eth9 does not exist"));
    }

    #[test]
    fn a_good_host_has_nothing_to_say() {
        let (_d, h) = host(&[
            ("kernel/keys/root_maxkeys", "1000000"),
            ("kernel/keys/root_maxbytes", "25000000"),
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "0"),
        ]);
        let net = HostNet { vtep: Some("10.0.0.1".parse().unwrap()), underlay: Some("eth1".into()), ..HostNet::default() };
        assert_eq!(check(&h, &net), Vec::<String>::new());
    }
}
