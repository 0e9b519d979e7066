//! The container network on this host, for `tug agent run` and `tug up`: the flags that say how
//! the host joins the pools' segments, the preflight warnings, and `dresponse` serving the
//! networked containers.

use std::path::Path;
use std::sync::Arc;

use tug_agent::net::{Claims, NetAgent};
use tug_agent::runtime::docker::NetSetup;
use tug_net::plumb::{HostNet, Plumber};
use tug_net::protocol::NetPush;

/// How this host joins the pools' segments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HostNetArgs {
    /// Container network, VXLAN pools: this host's tunnel endpoint (an address on its underlay).
    #[arg(long, env = "TUG_VTEP", value_name = "ADDRESS")]
    pub vtep: Option<std::net::Ipv4Addr>,
    /// Container network, VXLAN pools: the interface tunnels leave through.
    #[arg(long, env = "TUG_UNDERLAY", value_name = "INTERFACE")]
    pub underlay: Option<String>,
    /// Container network, VLAN pools: the Open vSwitch bridge whose access ports containers get
    /// (its uplink a trunk).
    #[arg(long, env = "TUG_OVS_BRIDGE", value_name = "NAME")]
    pub ovs_bridge: Option<String>,
    /// Container network, VLAN pools: the OVSDB socket, e.g. unix:/run/openvswitch/db.sock
    /// (default: ovs-vsctl's own).
    #[arg(long, env = "TUG_OVS_DB", value_name = "SOCKET")]
    pub ovs_db: Option<String>,
}

impl HostNetArgs {
    /// The host's segments, when it has one to join (a VTEP or an Open vSwitch bridge).
    pub fn host(&self) -> Option<HostNet> {
        (self.vtep.is_some() || self.ovs_bridge.is_some()).then(|| HostNet {
            netns: None,
            vtep: self.vtep,
            underlay: self.underlay.clone(),
            ovs_bridge: self.ovs_bridge.clone(),
            ovs_db: self.ovs_db.clone(),
        })
    }
}

/// The container network of a host that has one: checks the host (warnings in the log), and
/// starts `dresponse` in `<data dir>/net`, which answers networked containers with addresses from
/// `claims` and applies what the server pushes on `pushes`. Returns what the docker runtime
/// needs, and the task serving dresponse.
pub fn start(
    host: HostNet,
    claims: Arc<dyn Claims>,
    data_dir: &Path,
    mut pushes: tokio::sync::mpsc::Receiver<NetPush>,
) -> (NetSetup, tokio::task::JoinHandle<()>) {
    for warning in tug_agent::net::preflight::check(&tug_agent::net::preflight::Host::default(), &host) {
        tracing::warn!("container network preflight: {warning}");
    }
    let net = Arc::new(NetAgent::new(claims, Plumber::new(host)));
    let dir = data_dir.join("net");
    let setup = NetSetup { agent: net.clone(), dir: dir.clone() };
    let applier = net.clone();
    let task = tokio::spawn(async move {
        // What the server pushes (routes, evictions), applied in order.
        tokio::spawn(async move {
            while let Some(p) = pushes.recv().await {
                applier.apply(p).await;
            }
        });
        if let Err(e) = tug_agent::net::serve(&dir, net, std::future::pending()).await {
            tracing::error!(dir = %dir.display(), "dresponse cannot listen: {e}");
        }
    });
    (setup, task)
}
