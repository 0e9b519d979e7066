//! Plumbing on a host (feature `plumbing`): a container's veth pair, its address inside the
//! container's network namespace, and the host end on the pool's segment. Links, addresses,
//! routes and forwarding entries go over netlink (`rtnetlink`); Open vSwitch ports through
//! `ovs-vsctl`, its own interface.
//!
//! ```text
//! container netns            host                                      other hosts
//! eth0 (IP, MAC, MTU,  ◄──►  tvXXXXXXXX ─┬─ VLAN:  OVS access port tag=ID ── uplink trunk ──► ...
//! default route)                         └─ VXLAN: bridge tbr<VNI> ── tvx<VNI> (VXLAN, no learning,
//!                                                  ARP answered from static neighbour entries) ──► ...
//! ```
//!
//! The host end is named after the address (`tv` + its 8 hex digits), so teardown needs nothing
//! but the address, and a stale pair from an earlier life of the instance is found and replaced.
//! VXLAN never floods to learn: every remote instance's MAC is a static forwarding entry towards
//! its host's tunnel endpoint, and its IP a static neighbour entry the VXLAN device answers ARP
//! from, both programmed from the server's record ([`Plumber::set_remote`]).
//!
//! Netlink sockets belong to the network namespace of the thread that opens them, so each
//! operation runs on a thread of its own that enters the host's namespace (when the plumber was
//! given one) and, for the container's side, the container's.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::claim::Mac;
use crate::pool::Segment;

/// Where a container joins: its address, and the pool's segment and gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The pool's prefix length.
    pub prefix: u8,
    /// Its MAC.
    pub mac: Mac,
    /// The default route.
    pub gateway: Ipv4Addr,
    /// The pool's segment.
    pub segment: Segment,
    /// The link MTU (VXLAN pools: 50 less than the underlay's).
    pub mtu: u32,
}

/// How this host's segments are reached.
#[derive(Debug, Clone, Default)]
pub struct HostNet {
    /// Run every host-side operation in this network namespace (`/run/netns/NAME`); `None`: the
    /// plumber's own.
    pub netns: Option<PathBuf>,
    /// VXLAN: this host's tunnel endpoint, an address on its underlay.
    pub vtep: Option<Ipv4Addr>,
    /// VXLAN: the underlay interface the tunnels leave through.
    pub underlay: Option<String>,
    /// VLAN: the Open vSwitch bridge whose access ports the containers get.
    pub ovs_bridge: Option<String>,
    /// VLAN: the OVSDB socket `ovs-vsctl` talks to (`unix:/path`); `None`: its default.
    pub ovs_db: Option<String>,
}

/// Why plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A namespace could not be entered.
    #[error("{what}: {source}; is the container still running?")]
    Namespace {
        /// Which.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ovs-vsctl` failed or is missing.
    #[error("ovs-vsctl {args}: {why}; is Open vSwitch installed and running (ovsdb-server and ovs-vswitchd)?")]
    Ovs {
        /// Its arguments.
        args: String,
        /// What it said.
        why: String,
    },
    /// The host lacks what the segment needs.
    #[error("{0}")]
    Config(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let what = what.into();
    move |source| PlumbError::Netlink { what, source }
}

/// The host end's name for a container at `ip`.
pub fn host_link(ip: Ipv4Addr) -> String {
    format!("tv{:08x}", u32::from(ip))
}

fn bridge_name(vni: u32) -> String {
    format!("tbr{vni}")
}

fn vxlan_name(vni: u32) -> String {
    format!("tvx{vni}")
}

/// Enters the network namespace at `path` on this thread.
fn enter(path: &Path) -> Result<(), PlumbError> {
    let what = || format!("entering the network namespace {}", path.display());
    let f = File::open(path).map_err(|source| PlumbError::Namespace { what: what(), source })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| PlumbError::Namespace { what: what(), source: e.into() })
}

/// Runs `f` with a netlink handle, on a thread of its own inside `netns` (if any): a netlink
/// socket acts on the namespace of the thread that opened it.
fn run_in<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, PlumbError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, PlumbError>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                if let Some(ns) = netns {
                    enter(ns)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| PlumbError::Config(format!("starting a netlink runtime: {e}")))?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()
                        .map_err(|e| PlumbError::Config(format!("opening a netlink socket: {e}")))?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            })
            .join()
            .unwrap_or_else(|_| Err(PlumbError::Config("a plumbing thread panicked".into())))
    })
}

/// The index of link `name`, if it exists.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, PlumbError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<(), PlumbError> {
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nl(format!("bringing {what} up")))
}

/// Plumbs containers into this host's segments.
#[derive(Debug, Clone)]
pub struct Plumber {
    host: HostNet,
    /// Bridge index by VNI of the pools whose bridge and VXLAN device are known to be up, so a
    /// container's plumbing does not check them again.
    bridges: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, u32>>>,
}

/// What [`Plumber::plumb`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plumbed {
    /// The host end of the veth pair.
    pub host_link: String,
}

impl Plumber {
    /// A plumber for a host reached as `host` says.
    pub fn new(host: HostNet) -> Plumber {
        Plumber { host, bridges: Default::default() }
    }

    /// The host's settings.
    pub fn host(&self) -> &HostNet {
        &self.host
    }

    /// Gives the container whose process is `pid` its interface `eth0` with the attachment's
    /// address, MAC, MTU and default route, and joins the host end to the segment. Replaces a
    /// pair left from an earlier life of the same address. Blocks: call it off the async runtime.
    pub fn plumb(&self, pid: u32, a: &Attachment) -> Result<Plumbed, PlumbError> {
        let host_end = host_link(a.ip);
        let peer = format!("tc{:08x}", u32::from(a.ip));
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let ns_file = File::open(&ns_path).map_err(|source| PlumbError::Namespace {
            what: format!("opening the network namespace of process {pid}"),
            source,
        })?;
        let (segment, mtu) = (a.segment, a.mtu);
        let host = self.host.clone();
        let bridge_index = match segment {
            Segment::Vxlan(vni) => {
                let known = self.bridges.lock().unwrap_or_else(|p| p.into_inner()).get(&vni).copied();
                match known {
                    Some(i) => Some(i),
                    None => {
                        let i = self.ensure_vxlan(vni, mtu)?;
                        self.bridges.lock().unwrap_or_else(|p| p.into_inner()).insert(vni, i);
                        Some(i)
                    }
                }
            }
            Segment::Vlan(_) => None,
        };
        let host_side = {
            let (host_end, peer, ns_fd) = (host_end.clone(), peer.clone(), ns_file.as_raw_fd());
            run_in(host.netns.as_deref(), async move |h: Handle| {
                if let Some(old) = index_of(&h, &host_end).await? {
                    h.link().del(old).execute().await.map_err(nl(format!("removing the stale link {host_end}")))?;
                }
                let veth = LinkVeth::new(&host_end, &peer).mtu(mtu).build();
                h.link().add(veth).execute().await.map_err(nl(format!("creating the veth pair {host_end}/{peer}")))?;
                let peer_index = index_of(&h, &peer).await?.ok_or_else(|| PlumbError::Config(format!("{peer} vanished")))?;
                h.link()
                    .set(LinkUnspec::new_with_index(peer_index).setns_by_fd(ns_fd).build())
                    .execute()
                    .await
                    .map_err(nl(format!("moving {peer} into the container's namespace")))?;
                let index = index_of(&h, &host_end).await?.ok_or_else(|| PlumbError::Config(format!("{host_end} vanished")))?;
                if let Some(br) = bridge_index {
                    h.link()
                        .set(LinkUnspec::new_with_index(index).controller(br).build())
                        .execute()
                        .await
                        .map_err(nl(format!("attaching {host_end} to its bridge")))?;
                }
                set_up(&h, index, &host_end).await
            })
        };
        if let Err(e) = host_side {
            // The bridge may have gone (removed by hand): look again next time.
            if let Segment::Vxlan(vni) = segment {
                self.bridges.lock().unwrap_or_else(|p| p.into_inner()).remove(&vni);
            }
            return Err(e);
        }
        if let Segment::Vlan(tag) = segment {
            let bridge = self.host.ovs_bridge.clone().ok_or_else(|| {
                PlumbError::Config("a VLAN pool needs an Open vSwitch bridge on this host; start the agent with --ovs-bridge".into())
            })?;
            self.ovs(&["--may-exist", "add-port", &bridge, &host_end, &format!("tag={tag}")])?;
        }
        let a = a.clone();
        run_in(Some(&ns_path), async move |h: Handle| {
            let index = index_of(&h, &peer).await?.ok_or_else(|| PlumbError::Config(format!("{peer} is not in the container")))?;
            let eth = LinkUnspec::new_with_index(index).name("eth0").address(a.mac.0.to_vec()).mtu(a.mtu).build();
            h.link().set(eth).execute().await.map_err(nl("naming the container's interface eth0"))?;
            h.address()
                .add(index, IpAddr::V4(a.ip), a.prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {}/{} to the container", a.ip, a.prefix)))?;
            set_up(&h, index, "eth0").await?;
            if let Some(lo) = index_of(&h, "lo").await? {
                set_up(&h, lo, "lo").await?;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(a.gateway).output_interface(index).build();
            h.route().add(route).execute().await.map_err(nl(format!("adding the default route via {}", a.gateway)))
        })?;
        drop(ns_file);
        Ok(Plumbed { host_link: host_end })
    }

    /// Removes the container's veth pair (its other end goes with it) and its switch port. What is
    /// already gone is fine.
    pub fn unplumb(&self, ip: Ipv4Addr, segment: Segment) -> Result<(), PlumbError> {
        let host_end = host_link(ip);
        if let (Segment::Vlan(_), Some(bridge)) = (segment, &self.host.ovs_bridge) {
            self.ovs(&["--if-exists", "del-port", bridge, &host_end])?;
        }
        run_in(self.host.netns.as_deref(), async move |h: Handle| {
            if let Some(index) = index_of(&h, &host_end).await? {
                h.link().del(index).execute().await.map_err(nl(format!("removing {host_end}")))?;
            }
            Ok(())
        })
    }

    /// The pool's bridge and VXLAN device, created on first use; returns the bridge's index.
    fn ensure_vxlan(&self, vni: u32, mtu: u32) -> Result<u32, PlumbError> {
        let vtep = self.host.vtep.ok_or_else(|| {
            PlumbError::Config("a VXLAN pool needs this host's tunnel endpoint; start the agent with --vtep ADDRESS".into())
        })?;
        let underlay = self.host.underlay.clone();
        run_in(self.host.netns.as_deref(), async move |h: Handle| {
            let (br, vx) = (bridge_name(vni), vxlan_name(vni));
            let br_index = match index_of(&h, &br).await? {
                Some(i) => i,
                None => {
                    let msg = LinkBridge::new(&br).mtu(mtu).build();
                    match h.link().add(msg).execute().await {
                        Ok(()) => {}
                        // Another container of the pool made it first.
                        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
                        Err(e) => return Err(nl(format!("creating bridge {br}"))(e)),
                    }
                    index_of(&h, &br).await?.ok_or_else(|| PlumbError::Config(format!("{br} vanished")))?
                }
            };
            if index_of(&h, &vx).await?.is_none() {
                let mut b = LinkVxlan::new(&vx, vni).local(vtep).port(4789).learning(false).proxy(true).mtu(mtu);
                if let Some(dev) = &underlay {
                    let i = index_of(&h, dev).await?.ok_or_else(|| PlumbError::Config(format!("underlay {dev} not found")))?;
                    b = b.dev(i);
                }
                match h.link().add(b.build()).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
                    Err(e) => return Err(nl(format!("creating VXLAN device {vx} (VNI {vni})"))(e)),
                }
                let vx_index = index_of(&h, &vx).await?.ok_or_else(|| PlumbError::Config(format!("{vx} vanished")))?;
                h.link()
                    .set(LinkUnspec::new_with_index(vx_index).controller(br_index).build())
                    .execute()
                    .await
                    .map_err(nl(format!("attaching {vx} to {br}")))?;
                // Where a remote MAC lives is the server's word (set_remote), not what the bridge
                // last saw: a moved instance must not stay behind the tunnel until an entry ages.
                h.link()
                    .set_port(LinkBridgePort::new(vx_index).learning(false).build())
                    .execute()
                    .await
                    .map_err(nl(format!("turning learning off on {vx}")))?;
                set_up(&h, vx_index, &vx).await?;
            }
            set_up(&h, br_index, &br).await?;
            Ok(br_index)
        })
    }

    /// VXLAN: tells this host that the instance with `mac` and `ip` lives behind the tunnel
    /// endpoint `remote` (a forwarding entry and a neighbour entry on the pool's VXLAN device,
    /// replacing whatever said otherwise).
    pub fn set_remote(&self, vni: u32, mtu: u32, mac: Mac, ip: Ipv4Addr, remote: Ipv4Addr) -> Result<(), PlumbError> {
        self.ensure_vxlan(vni, mtu)?;
        run_in(self.host.netns.as_deref(), async move |h: Handle| {
            let vx = vxlan_name(vni);
            let index = index_of(&h, &vx).await?.ok_or_else(|| PlumbError::Config(format!("{vx} vanished")))?;
            h.neighbours()
                .add_bridge(index, &mac.0)
                .destination(IpAddr::V4(remote))
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("pointing {mac} at {remote} on {vx}")))?;
            h.neighbours()
                .add(index, IpAddr::V4(ip))
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the neighbour entry {ip} -> {mac} on {vx}")))
        })
    }

    /// VXLAN: forgets a remote instance (it stopped, or now lives here).
    pub fn remove_remote(&self, vni: u32, mac: Mac, ip: Ipv4Addr) -> Result<(), PlumbError> {
        run_in(self.host.netns.as_deref(), async move |h: Handle| {
            let vx = vxlan_name(vni);
            let Some(index) = index_of(&h, &vx).await? else { return Ok(()) };
            use rtnetlink::packet_route::AddressFamily;
            use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
            // The forwarding entry, by MAC, on the device itself ...
            let mut fdb = NeighbourMessage::default();
            fdb.header.family = AddressFamily::Bridge;
            fdb.header.ifindex = index;
            fdb.header.flags = NeighbourFlags::Own;
            fdb.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            // ... and the neighbour entry, by IP.
            let mut neigh = NeighbourMessage::default();
            neigh.header.family = AddressFamily::Inet;
            neigh.header.ifindex = index;
            neigh.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            for (what, msg) in [("forwarding", fdb), ("neighbour", neigh)] {
                match h.neighbours().del(msg).execute().await {
                    // ENOENT: already gone.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -2 => {}
                    r => r.map_err(nl(format!("removing the {what} entry of {ip} ({mac}) on {vx}")))?,
                }
            }
            Ok(())
        })
    }

    fn ovs(&self, args: &[&str]) -> Result<(), PlumbError> {
        let mut cmd = Command::new("ovs-vsctl");
        if let Some(db) = &self.host.ovs_db {
            cmd.arg(format!("--db={db}"));
        }
        cmd.arg("--timeout=5").args(args);
        let shown = args.join(" ");
        let out = cmd.output().map_err(|e| PlumbError::Ovs { args: shown.clone(), why: e.to_string() })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(PlumbError::Ovs { args: shown, why: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
        }
    }
}
