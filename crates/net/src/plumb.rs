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
//! Netlink sockets belong to the network namespace of the thread that opens them. The host's
//! side goes over one long-lived connection opened by a thread that entered the host's namespace
//! (when the plumber was given one); the container's side over a connection opened by a
//! short-lived thread inside the container's namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
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

/// The container's end of its veth pair, as the container sees it.
const CONTAINER_LINK: &str = "eth0";

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
    /// The long-lived netlink connection in the host's namespace ([`Plumber::host_handle`]).
    host_nl: std::sync::Arc<std::sync::Mutex<Option<Handle>>>,
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
        Plumber { host, bridges: Default::default(), host_nl: Default::default() }
    }

    /// The host's settings.
    pub fn host(&self) -> &HostNet {
        &self.host
    }

    /// Gives the container whose process is `pid` its interface `eth0` with the attachment's
    /// address, MAC, MTU and default route, and joins the host end to the segment. Replaces a
    /// pair left from an earlier life of the same address. Blocks: call it off the async runtime.
    ///
    /// The pair is made in one request on the host's long-lived netlink connection, its
    /// container end created inside the container's namespace already named `eth0` (moving a
    /// link between namespaces afterwards waits for an RCU grace period: milliseconds each).
    /// The container's side then gets its address before it comes up, with `arp_notify` on, so
    /// the kernel announces the address (gratuitous ARP) the moment `eth0` is up: switches and
    /// neighbours that knew the MAC behind another port (the instance ran on another host) learn
    /// its new place at once.
    pub fn plumb(&self, pid: u32, a: &Attachment) -> Result<Plumbed, PlumbError> {
        let host_end = host_link(a.ip);
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let ns_file = File::open(&ns_path).map_err(|source| PlumbError::Namespace {
            what: format!("opening the network namespace of process {pid}"),
            source,
        })?;
        let (segment, mtu) = (a.segment, a.mtu);
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
        let h = self.host_handle()?;
        let pair = || {
            let peer = LinkUnspec::new_with_name(CONTAINER_LINK).address(a.mac.0.to_vec()).mtu(mtu).setns_by_fd(ns_file.as_raw_fd()).build();
            let mut pair = LinkVeth::new(&host_end, CONTAINER_LINK).mtu(mtu).up();
            if let Some(br) = bridge_index {
                pair = pair.controller(br);
            }
            pair.set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build()
        };
        let host_side = futures::executor::block_on(async {
            match h.link().add(pair()).execute().await {
                // EEXIST: a pair from an earlier life of this address (or an eth0 the container
                // already has): remove ours and try once more.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {
                    if let Some(old) = index_of(&h, &host_end).await? {
                        h.link().del(old).execute().await.map_err(nl(format!("removing the stale link {host_end}")))?;
                    }
                    h.link().add(pair()).execute().await.map_err(nl(format!("creating the veth pair {host_end}/{CONTAINER_LINK}")))
                }
                r => r.map_err(nl(format!("creating the veth pair {host_end}/{CONTAINER_LINK}"))),
            }
        });
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
            if let Err(e) = self.ovs(&["--may-exist", "add-port", &bridge, &host_end, &format!("tag={tag}")]) {
                let _ = self.unplumb(a.ip, segment);
                return Err(e);
            }
        }
        let a = a.clone();
        run_in(Some(&ns_path), async move |h: Handle| {
            let index = index_of(&h, CONTAINER_LINK).await?.ok_or_else(|| PlumbError::Config(format!("{CONTAINER_LINK} is not in the container")))?;
            // This thread is in the container's namespace, so is what /proc/sys/net shows it.
            let notify = format!("/proc/sys/net/ipv4/conf/{CONTAINER_LINK}/arp_notify");
            std::fs::write(&notify, "1").map_err(|source| PlumbError::Namespace { what: format!("writing {notify}"), source })?;
            h.address()
                .add(index, IpAddr::V4(a.ip), a.prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {}/{} to the container", a.ip, a.prefix)))?;
            set_up(&h, index, CONTAINER_LINK).await?;
            // The loopback device is the first link of every namespace.
            set_up(&h, 1, "lo").await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(a.gateway).output_interface(index).build();
            h.route().add(route).execute().await.map_err(nl(format!("adding the default route via {}", a.gateway)))
        })?;
        drop(ns_file);
        Ok(Plumbed { host_link: host_end })
    }

    /// Runs `f` on the host's netlink connection, blocking this thread until it is done.
    fn on_host<T, F, Fut>(&self, f: F) -> Result<T, PlumbError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, PlumbError>>,
    {
        let h = self.host_handle()?;
        futures::executor::block_on(f(h))
    }

    /// The netlink connection in the host's namespace, opened on first use on a thread of its
    /// own that lives as long as this plumber (and its clones).
    fn host_handle(&self) -> Result<Handle, PlumbError> {
        let mut slot = self.host_nl.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let netns = self.host.netns.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tug-netlink".into())
            .spawn(move || {
                let opened = (|| {
                    if let Some(ns) = &netns {
                        enter(ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()
                        .map_err(|e| PlumbError::Config(format!("starting a netlink runtime: {e}")))?;
                    let (conn, handle, _) = rt
                        .block_on(async { rtnetlink::new_connection() })
                        .map_err(|e| PlumbError::Config(format!("opening a netlink socket: {e}")))?;
                    Ok((rt, conn, handle))
                })();
                match opened {
                    Ok((rt, conn, handle)) => {
                        let _ = tx.send(Ok(handle));
                        // Ends once every handle is dropped.
                        rt.block_on(conn);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| PlumbError::Config(format!("starting the netlink thread: {e}")))?;
        let h = rx.recv().map_err(|_| PlumbError::Config("the netlink thread ended before it opened its socket".into()))??;
        *slot = Some(h.clone());
        Ok(h)
    }

    /// Removes the container's veth pair (its other end goes with it) and its switch port. What is
    /// already gone is fine.
    pub fn unplumb(&self, ip: Ipv4Addr, segment: Segment) -> Result<(), PlumbError> {
        let host_end = host_link(ip);
        if let (Segment::Vlan(_), Some(bridge)) = (segment, &self.host.ovs_bridge) {
            self.ovs(&["--if-exists", "del-port", bridge, &host_end])?;
        }
        self.on_host(async move |h: Handle| {
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
        self.on_host(async move |h: Handle| {
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
        self.on_host(async move |h: Handle| {
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
        self.on_host(async move |h: Handle| {
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
