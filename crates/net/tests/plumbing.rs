//! Plumbing against the real kernel: two "hosts" as network namespaces joined by a veth underlay,
//! "containers" as processes in network namespaces of their own, VXLAN pools between the hosts.
//! Needs root; skipped (with a note) without it. Every name carries this process's id, and every
//! namespace goes at the end, so parallel runs on one machine do not meet.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use tug_net::claim::Mac;
use tug_net::plumb::{Attachment, HostNet, Plumber, host_link};
use tug_net::pool::Segment;

/// A suffix unique to this process and call: tests run in parallel threads of one process.
fn unique() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace under /run/netns, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("tug{tag}{}", unique());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process in a network namespace of its own: the container.
struct Container(Child);

impl Container {
    fn start() -> Container {
        let child = Command::new("unshare").args(["-n", "sleep", "300"]).stdin(Stdio::null()).spawn().unwrap();
        // Wait until it has its own namespace.
        let me = std::fs::read_link("/proc/self/ns/net").unwrap();
        for _ in 0..200 {
            if std::fs::read_link(format!("/proc/{}/ns/net", child.id())).is_ok_and(|n| n != me) {
                return Container(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("unshare did not make a namespace");
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Whether `ip` answers one of three pings (a loaded machine can lose the first one while
    /// a new link settles).
    fn pings(&self, ip: Ipv4Addr) -> bool {
        (0..3).any(|_| self.ping_once(ip))
    }

    fn ping_once(&self, ip: Ipv4Addr) -> bool {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "busybox", "ping", "-c", "1", "-W", "1", &ip.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
    /// Turns IPv6 off inside, as Docker does for a container without it.
    fn no_ipv6(&self) {
        let pid = self.pid().to_string();
        for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
            sh(&["nsenter", "-t", &pid, "-n", "sysctl", "-q", "-w", key]);
        }
    }
    fn ip(&self, args: &[&str]) -> String {
        let pid = self.pid().to_string();
        let mut full = vec!["nsenter", "-t", &pid, "-n", "ip"];
        full.extend(args);
        sh(&full)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two hosts with underlay addresses 192.168.77.1 and .2.
fn two_hosts() -> (Netns, Netns) {
    let (a, b) = (Netns::new("ha"), Netns::new("hb"));
    let u = unique();
    let (ua, ub) = (format!("tua{u}"), format!("tub{u}"));
    let (ua, ub) = (&ua[..ua.len().min(15)], &ub[..ub.len().min(15)]);
    sh(&["ip", "link", "add", ua, "type", "veth", "peer", "name", ub]);
    sh(&["ip", "link", "set", ua, "netns", &a.0]);
    sh(&["ip", "link", "set", ub, "netns", &b.0]);
    a.ip(&["link", "set", ua, "name", "uplink", "up"]);
    b.ip(&["link", "set", ub, "name", "uplink", "up"]);
    a.ip(&["addr", "add", "192.168.77.1/24", "dev", "uplink"]);
    b.ip(&["addr", "add", "192.168.77.2/24", "dev", "uplink"]);
    (a, b)
}

fn vxlan_host(ns: &Netns, vtep: &str) -> Plumber {
    Plumber::new(HostNet {
        netns: Some(ns.path()),
        vtep: Some(vtep.parse().unwrap()),
        underlay: Some("uplink".into()),
        ..HostNet::default()
    })
}

fn attach(ip: &str, vni: u32) -> Attachment {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let o = ip.octets();
    Attachment {
        ip,
        prefix: 24,
        mac: Mac::for_ip(ip),
        gateway: Ipv4Addr::new(o[0], o[1], o[2], 1),
        segment: Segment::Vxlan(vni),
        mtu: 1450,
    }
}

#[test]
fn vxlan_pools_join_containers_across_hosts_and_keep_pools_apart() {
    if !root() {
        eprintln!("skipped: plumbing needs root");
        return;
    }
    let (ha, hb) = two_hosts();
    let (pa, pb) = (vxlan_host(&ha, "192.168.77.1"), vxlan_host(&hb, "192.168.77.2"));
    let vtep_a: Ipv4Addr = "192.168.77.1".parse().unwrap();
    let vtep_b: Ipv4Addr = "192.168.77.2".parse().unwrap();
    let (c1, c2, c3) = (Container::start(), Container::start(), Container::start());
    let (a1, a2) = (attach("10.91.0.11", 9101), attach("10.91.0.12", 9101));
    let a3 = attach("10.92.0.13", 9102);
    pa.plumb(c1.pid(), &a1).unwrap();
    pb.plumb(c2.pid(), &a2).unwrap();
    pb.plumb(c3.pid(), &a3).unwrap();
    // The container's side: eth0 with the address, MAC, MTU and default route.
    let link = c1.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("02:74:0a:5b:00:0b") && link.contains("mtu 1450"), "{link}");
    assert!(c1.ip(&["-o", "addr", "show", "eth0"]).contains("10.91.0.11/24"));
    assert!(c1.ip(&["route"]).contains("default via 10.91.0.1 dev eth0"));
    // Nothing learned, nothing flooded: without the server's word the hosts cannot reach each other.
    assert!(!c1.pings(a2.ip), "reached a remote instance with no forwarding entry");
    pa.set_remote(9101, 1450, a2.mac, a2.ip, vtep_b).unwrap();
    pb.set_remote(9101, 1450, a1.mac, a1.ip, vtep_a).unwrap();
    pa.set_remote(9102, 1450, a3.mac, a3.ip, vtep_b).unwrap();
    if !c1.pings(a2.ip) {
        for ns in [&ha, &hb] {
            eprintln!("--- {}", ns.0);
            eprintln!("{}", sh(&["ip", "netns", "exec", &ns.0, "bridge", "fdb", "show"]));
            eprintln!("{}", ns.ip(&["neigh", "show"]));
            eprintln!("{}", ns.ip(&["-d", "link", "show"]));
        }
        eprintln!("c1 neigh: {}", c1.ip(&["neigh"]));
        panic!("same pool, different hosts");
    }
    assert!(c2.pings(a1.ip));
    assert!(!c1.pings(a3.ip), "different pools must not reach each other");

    // The instance moves from host A to host B: same address and MAC, reachable at once.
    drop(c1);
    pa.unplumb(a1.ip, a1.segment).unwrap();
    let moved = Container::start();
    pb.plumb(moved.pid(), &a1).unwrap();
    pb.remove_remote(9101, a1.mac, a1.ip).unwrap();
    // Host A's other instance of the pool (a new one) sees it behind B.
    let c4 = Container::start();
    let a4 = attach("10.91.0.14", 9101);
    pa.plumb(c4.pid(), &a4).unwrap();
    pa.set_remote(9101, 1450, a1.mac, a1.ip, vtep_b).unwrap();
    pb.set_remote(9101, 1450, a4.mac, a4.ip, vtep_a).unwrap();
    assert!(c4.pings(a1.ip), "the moved instance is reachable from host A");
    assert!(moved.pings(a2.ip), "and it reaches its neighbour on its new host");

    // Teardown leaves no veth and no forwarding entry.
    pa.unplumb(a4.ip, a4.segment).unwrap();
    pb.unplumb(a1.ip, a1.segment).unwrap();
    pa.remove_remote(9101, a1.mac, a1.ip).unwrap();
    let links = ha.ip(&["-o", "link"]);
    assert!(!links.contains(&host_link(a4.ip)), "{links}");
    let fdb = sh(&["ip", "netns", "exec", &ha.0, "bridge", "fdb", "show", "dev", "tvx9101"]);
    assert!(!fdb.contains(&a1.mac.to_string()), "{fdb}");
    // Unplumbing what is gone is fine.
    pa.unplumb(a4.ip, a4.segment).unwrap();
}

#[test]
fn a_container_that_is_gone_says_so() {
    if !root() {
        eprintln!("skipped: plumbing needs root");
        return;
    }
    let ha = Netns::new("hc");
    let p = vxlan_host(&ha, "192.168.78.1");
    let e = p.plumb(u32::MAX - 1, &attach("10.93.0.5", 9103)).unwrap_err().to_string();
    assert!(e.contains("is the container still running?"), "{e}");
    let vlan = Plumber::new(HostNet { netns: Some(ha.path()), ..HostNet::default() });
    let c = Container::start();
    let a = Attachment { segment: Segment::Vlan(77), ..attach("10.94.0.5", 1) };
    let e = vlan.plumb(c.pid(), &a).unwrap_err().to_string();
    assert!(e.contains("needs an Open vSwitch bridge on this host; start the agent with --ovs-bridge"), "{e}");
}

/// Open vSwitch for one host: its own database and switch daemon, in the host's namespace, with
/// every file in a directory of its own; both daemons stop on drop.
struct Ovs {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Ovs {
    fn start(host: &Netns) -> Option<Ovs> {
        if Command::new("ovs-vsctl").arg("--version").output().is_err() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        sh(&["ovsdb-tool", "create", &format!("{d}/conf.db"), "/usr/share/openvswitch/vswitch.ovsschema"]);
        let spawn = |args: Vec<String>| {
            let mut full = vec!["netns".to_string(), "exec".into(), host.0.clone()];
            full.extend(args);
            Command::new("ip")
                .args(&full)
                .env("OVS_RUNDIR", &d)
                .env("OVS_DBDIR", &d)
                .env("OVS_LOGDIR", &d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut ovs = Ovs { daemons: Vec::new(), dir };
        ovs.daemons.push(spawn(vec![
            "ovsdb-server".into(),
            format!("{d}/conf.db"),
            format!("--remote=punix:{d}/db.sock"),
            format!("--unixctl={d}/ovsdb.ctl"),
            format!("--log-file={d}/ovsdb.log"),
        ]));
        for _ in 0..500 {
            if std::path::Path::new(&format!("{d}/db.sock")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.daemons.push(spawn(vec![
            "ovs-vswitchd".into(),
            format!("unix:{d}/db.sock"),
            format!("--unixctl={d}/vswitchd.ctl"),
            format!("--log-file={d}/vswitchd.log"),
        ]));
        Some(ovs)
    }
    fn db(&self) -> String {
        format!("unix:{}/db.sock", self.dir.path().display())
    }
    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db={}", self.db());
        let mut full = vec!["ovs-vsctl", &db, "--timeout=10"];
        full.extend(args);
        sh(&full)
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

#[test]
fn vlan_pools_on_open_vswitch_reach_across_a_trunk_and_a_retag_cuts_off() {
    if !root() {
        eprintln!("skipped: plumbing needs root");
        return;
    }
    let (ha, hb) = two_hosts();
    let (Some(oa), Some(ob)) = (Ovs::start(&ha), Ovs::start(&hb)) else {
        eprintln!("skipped: Open vSwitch is not installed (scripts/test installs it)");
        return;
    };
    let mut plumbers = Vec::new();
    for (ovs, host) in [(&oa, &ha), (&ob, &hb)] {
        // The switch: userspace datapath, the uplink a trunk (no tag: every VLAN).
        ovs.vsctl(&["add-br", "br-tug", "--", "set", "bridge", "br-tug", "datapath_type=netdev"]);
        ovs.vsctl(&["add-port", "br-tug", "uplink"]);
        plumbers.push(Plumber::new(HostNet {
            netns: Some(host.path()),
            ovs_bridge: Some("br-tug".into()),
            ovs_db: Some(ovs.db()),
            ..HostNet::default()
        }));
    }
    let (pa, pb) = (&plumbers[0], &plumbers[1]);
    let vlan = |ip: &str, tag: u16| Attachment { segment: Segment::Vlan(tag), mtu: 1500, ..attach(ip, 1) };
    let (c1, c2) = (Container::start(), Container::start());
    c1.no_ipv6();
    c2.no_ipv6();
    let (a1, a2) = (vlan("10.97.0.11", 77), vlan("10.97.0.12", 77));
    pa.plumb(c1.pid(), &a1).unwrap();
    pb.plumb(c2.pid(), &a2).unwrap();
    assert!(oa.vsctl(&["get", "port", &host_link(a1.ip), "tag"]).trim() == "77");
    let reached = (0..10).any(|_| c1.pings(a2.ip));
    assert!(reached, "two access ports tagged 77 on two hosts reach each other over the trunk");

    // The instance moves from host A to host B, where its neighbour had just reached it across the
    // trunk: host B's switch had learned its MAC behind the uplink, and the neighbour's ARP entry
    // is fresh, so nothing but the new container's own announcement (gratuitous ARP as eth0 comes
    // up) tells the switch it is now behind a local port. The containers have no IPv6, so no other
    // packet from the new port could teach it.
    assert!(c2.pings(a1.ip), "the neighbour reaches the instance on host A");
    drop(c1);
    pa.unplumb(a1.ip, a1.segment).unwrap();
    let moved = Container::start();
    moved.no_ipv6();
    pb.plumb(moved.pid(), &a1).unwrap();
    assert!(c2.pings(a1.ip), "the moved instance is reached from its neighbour on host B at once");
    assert!(moved.pings(a2.ip));
    let c1 = moved;

    ob.vsctl(&["set", "port", &host_link(a2.ip), "tag=88"]);
    // The userspace datapath may forward a packet or two on a flow it cached before the retag, until
    // its revalidator catches up: wait for the first loss, then it must stay cut off.
    let lost = (0..20).any(|_| !c1.ping_once(a2.ip));
    assert!(lost, "retagged to 88, it is cut off");
    assert!(!c1.pings(a2.ip), "retagged to 88, it stays cut off");

    // Teardown removes the port and the veth.
    pb.unplumb(a1.ip, a1.segment).unwrap();
    pb.unplumb(a2.ip, a2.segment).unwrap();
    drop(c1);
    for (ovs, host) in [(&oa, &ha), (&ob, &hb)] {
        let ports = ovs.vsctl(&["list-ports", "br-tug"]);
        assert_eq!(ports.trim(), "uplink");
        assert!(!host.ip(&["-o", "link"]).contains("tv"), "{}", host.ip(&["-o", "link"]));
    }
}
