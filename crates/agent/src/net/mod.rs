//! The agent's side of the container network: `dresponse`, the unix socket a networked
//! container's `dwait` asks for its network on, and what answering takes: the instance's address
//! claimed from the server ([`Claims`]), then plumbed on this host (`tug_net::plumb`).
//!
//! ```text
//! dwait ──ask {instance, pool}──► dresponse ── peer pid (SO_PEERCRED)
//!                                     │ is that pid the instance's container? ([`Owner`])
//!                                     │ claim(pool, instance) ─► server (agent stream)
//!                                     │ plumb(pid, attachment)  ─► netlink / ovs-vsctl
//!       ◄──ok {ip, prefix, mac, gw}───┘ or error {why}
//! ```

mod dresponse;
pub mod preflight;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tug_net::plumb::{Attachment, Plumber};
use tug_net::protocol::{NetPush, Route};
use tug_net::{Claim, PoolSpec, Segment};

pub use dresponse::serve;

/// The MTU of a VLAN container's interface.
pub const VLAN_MTU: u32 = 1500;
/// The MTU of a VXLAN container's interface: the underlay's 1500 less the 50 bytes of tunnel
/// headers.
pub const VXLAN_MTU: u32 = 1450;

/// Addresses from the server: the agent protocol in production, a fixed table in tests.
#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Claims `instance`'s address in `pool` for this agent: its pool and claim, or why not.
    async fn claim(&self, pool: &str, instance: &str) -> Result<(PoolSpec, Claim), ClaimError>;
    /// Says that `instance` no longer runs here (its address stays its own).
    async fn release(&self, pool: &str, instance: &str) -> Result<(), ClaimError>;
}

/// Why the server did not grant a claim or take a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The server refused, in its own words (an unknown or full pool, the instance held by
    /// another live agent, ...): they travel over the agent stream as text.
    #[error("{0}")]
    Refused(String),
    /// The server answered a claim without an address.
    #[error("the server answered a claim without an address")]
    NoAddress,
    /// The agent is stopping: the request did not reach the server, or its answer did not come
    /// back.
    #[error("the agent is stopping")]
    Stopping,
    /// The server in this process (`tug up`) has not started yet.
    #[error("the server is still starting; start the container again")]
    ServerStarting,
}

/// Why a container's network could not be set up or taken down on this host.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The asking process is not the instance's container (or none of it was started here): it
    /// may not have the instance's network.
    #[error("{0}")]
    NotOwner(String),
    /// The server did not grant the instance's address.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The address was granted but the host could not be plumbed for it.
    #[error("plumbing {instance} ({ip}) failed: {source}")]
    Plumb {
        /// The instance.
        instance: String,
        /// Its address.
        ip: Ipv4Addr,
        /// What netlink or Open vSwitch said.
        #[source]
        source: tug_net::plumb::PlumbError,
    },
    /// Taking the instance's interface down failed.
    #[error("unplumbing {instance} ({ip}) failed: {source}")]
    Unplumb {
        /// The instance.
        instance: String,
        /// Its address.
        ip: Ipv4Addr,
        /// What netlink or Open vSwitch said.
        #[source]
        source: tug_net::plumb::PlumbError,
    },
    /// The blocking task doing the plumbing panicked.
    #[error("{what} panicked: {source}")]
    Panicked {
        /// Plumbing or unplumbing.
        what: &'static str,
        /// The task's end.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What one container was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The pool.
    pub pool: String,
    /// The attachment plumbed.
    pub attachment: Attachment,
    /// Whose it is.
    pub owner: Owner,
}

/// Where a container with `claim` joins `pool`: its address, and the pool's segment, gateway and
/// MTU.
fn attachment(pool: &PoolSpec, claim: &Claim) -> Attachment {
    let mtu = match pool.segment {
        Segment::Vlan(_) => VLAN_MTU,
        Segment::Vxlan(_) => VXLAN_MTU,
    };
    Attachment { ip: claim.ip, prefix: pool.cidr.prefix(), mac: claim.mac, gateway: pool.gateway, segment: pool.segment, mtu }
}

/// Who may ask for an instance's network. The runtime names it before the container starts
/// ([`NetAgent::expect`]); a process that asks for an instance it is not (another container
/// claiming a neighbour's name, to take its address) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A Docker container: the asking process must be in its cgroup (`/proc/PID/cgroup` names the
    /// container's id).
    Container(String),
    /// A process (and what runs as it): the asking pid itself.
    Process(u32),
}

impl Owner {
    /// Whether the process `pid` (as this host sees it) is this owner; if not, why not.
    fn check(&self, pid: u32, instance: &str) -> Result<(), String> {
        match self {
            Owner::Process(p) if *p == pid => Ok(()),
            Owner::Process(p) => Err(format!("process {pid} asked for the network of {instance}, which belongs to process {p}")),
            Owner::Container(id) => {
                let path = format!("/proc/{pid}/cgroup");
                let cgroups = std::fs::read_to_string(&path).map_err(|e| format!("reading {path} of the asking process: {e}"))?;
                if cgroups.lines().any(|l| l.contains(id.as_str())) {
                    Ok(())
                } else {
                    Err(format!(
                        "process {pid} asked for the network of {instance}, but it is not in that instance's container {}",
                        &id[..id.len().min(12)]
                    ))
                }
            }
        }
    }
}

/// Stops an instance's container on this host (the docker runtime registers one).
pub type Evictor = Box<dyn Fn(String) + Send + Sync>;

/// The container network on this host: claims, plumbing, and what is plumbed now.
pub struct NetAgent {
    claims: Arc<dyn Claims>,
    plumber: Plumber,
    /// Plumbed instances by claim name.
    plumbed: Mutex<HashMap<String, Given>>,
    /// Who may ask for each instance's network, by claim name.
    expected: Mutex<HashMap<String, Owner>>,
    /// Remote instances pointed at their hosts, by VNI.
    remote: Mutex<HashMap<u32, HashSet<Route>>>,
    evictor: Mutex<Option<Evictor>>,
}

impl NetAgent {
    /// The network of a host plumbed by `plumber`, with addresses from `claims`.
    pub fn new(claims: Arc<dyn Claims>, plumber: Plumber) -> NetAgent {
        NetAgent {
            claims,
            plumber,
            plumbed: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            evictor: Mutex::new(None),
        }
    }

    /// Registers how an instance's container is stopped here, for [`NetPush::Evict`].
    pub fn set_evictor(&self, evictor: Evictor) {
        *self.evictor.lock().unwrap_or_else(|p| p.into_inner()) = Some(evictor);
    }

    /// Acts on what the server pushed: points a VXLAN pool's remote MACs at their hosts (and
    /// forgets those gone or now here), or stops an instance that is moving away.
    pub async fn apply(&self, push: NetPush) {
        match push {
            NetPush::Evict { instance } => {
                tracing::info!(instance, "the instance is moving to another host; stopping it here");
                match self.evictor.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    Some(evict) => evict(instance),
                    None => tracing::warn!(instance, "asked to stop an instance, but no container runtime runs here"),
                }
            }
            NetPush::Routes { pool, vni, routes } => {
                let own = self.plumber.host().vtep;
                let wanted: HashSet<Route> = routes.into_iter().filter(|r| Some(r.vtep) != own).collect();
                let known = self.remote.lock().unwrap_or_else(|p| p.into_inner()).get(&vni).cloned().unwrap_or_default();
                let plumber = self.plumber.clone();
                let (add, gone): (Vec<Route>, Vec<Route>) = (
                    wanted.difference(&known).copied().collect(),
                    known.iter().filter(|k| !wanted.iter().any(|w| w.ip == k.ip && w.mac == k.mac)).copied().collect(),
                );
                let (n_add, n_gone) = (add.len(), gone.len());
                let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
                    for r in gone {
                        plumber.remove_remote(vni, r.mac, r.ip).map_err(|e| e.to_string())?;
                    }
                    for r in add {
                        plumber.set_remote(vni, VXLAN_MTU, r.mac, r.ip, r.vtep).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
                .await;
                match done {
                    Ok(Ok(())) => {
                        if n_add + n_gone > 0 {
                            tracing::info!(pool, vni, added = n_add, removed = n_gone, "VXLAN forwarding entries updated");
                        }
                        self.remote.lock().unwrap_or_else(|p| p.into_inner()).insert(vni, wanted);
                    }
                    Ok(Err(e)) => tracing::warn!(pool, vni, "updating VXLAN forwarding entries failed: {e}"),
                    Err(e) => tracing::warn!(pool, vni, "updating VXLAN forwarding entries panicked: {e}"),
                }
            }
        }
    }

    fn plumbed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Given>> {
        self.plumbed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says that `owner` is `instance` on this host from now on: only it may ask for the
    /// instance's network. Call it before the container starts.
    pub fn expect(&self, instance: &str, owner: Owner) {
        self.expected.lock().unwrap_or_else(|p| p.into_inner()).insert(instance.to_owned(), owner);
    }

    /// Claims and plumbs the container of `instance` whose process is `pid`, once it is known to
    /// be that instance's ([`NetAgent::expect`]); what it got.
    pub async fn ready(&self, instance: &str, pool: &str, pid: u32) -> Result<Given, NetError> {
        let owner = self.expected.lock().unwrap_or_else(|p| p.into_inner()).get(instance).cloned().ok_or_else(|| {
            NetError::NotOwner(format!("no container of {instance} was started on this host, so process {pid} cannot have its network"))
        })?;
        owner.check(pid, instance).map_err(NetError::NotOwner)?;
        let (spec, claim) = self.claims.claim(pool, instance).await?;
        let attachment = attachment(&spec, &claim);
        let (plumber, a) = (self.plumber.clone(), attachment.clone());
        tokio::task::spawn_blocking(move || plumber.plumb(pid, &a))
            .await
            .map_err(|source| NetError::Panicked { what: "plumbing", source })?
            .map_err(|source| NetError::Plumb { instance: instance.to_owned(), ip: claim.ip, source })?;
        let given = Given { pool: pool.to_owned(), attachment, owner };
        self.plumbed().insert(instance.to_owned(), given.clone());
        tracing::info!(instance, pool, ip = %claim.ip, mac = %claim.mac, pid, "container network ready");
        Ok(given)
    }

    /// Takes over the network of `instance`, plumbed by an earlier life of this agent for the
    /// container `owner` that is adopted now: its address is claimed again (the same one: the
    /// server has it on this agent) and recorded as plumbed, so that removing the container tears
    /// it down and gives the address back. Nothing is plumbed again.
    pub async fn adopt(&self, instance: &str, pool: &str, owner: Owner) -> Result<(), NetError> {
        self.expect(instance, owner.clone());
        let (spec, claim) = self.claims.claim(pool, instance).await?;
        let attachment = attachment(&spec, &claim);
        self.plumbed().insert(instance.to_owned(), Given { pool: pool.to_owned(), attachment, owner });
        tracing::info!(instance, pool, ip = %claim.ip, "took over the network of an adopted container");
        Ok(())
    }

    /// Tears down `instance`'s network on this host and tells the server it no longer runs here,
    /// when `owner` (a container being removed) is the instance's here: a container that replaced
    /// it keeps its network. Nothing plumbed: nothing to do.
    pub async fn teardown(&self, instance: &str, owner: &Owner) -> Result<(), NetError> {
        {
            let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            if expected.get(instance) == Some(owner) {
                expected.remove(instance);
            }
        }
        let given = {
            let mut plumbed = self.plumbed();
            match plumbed.get(instance) {
                Some(g) if g.owner == *owner => plumbed.remove(instance),
                _ => None,
            }
        };
        let Some(given) = given else { return Ok(()) };
        let (plumber, ip, segment) = (self.plumber.clone(), given.attachment.ip, given.attachment.segment);
        tokio::task::spawn_blocking(move || plumber.unplumb(ip, segment))
            .await
            .map_err(|source| NetError::Panicked { what: "unplumbing", source })?
            .map_err(|source| NetError::Unplumb { instance: instance.to_owned(), ip, source })?;
        Ok(self.claims.release(&given.pool, instance).await?)
    }

    /// What is plumbed now, by instance.
    pub fn given(&self) -> HashMap<String, Given> {
        self.plumbed().clone()
    }

    /// The address plumbed for `instance`, if any.
    pub fn address(&self, instance: &str) -> Option<Ipv4Addr> {
        self.plumbed().get(instance).map(|g| g.attachment.ip)
    }
}
