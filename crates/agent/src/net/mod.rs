//! The agent's side of the container network: `dresponse`, the unix socket a networked
//! container's `dwait` asks for its network on, and what answering takes: the instance's address
//! claimed from the server ([`Claims`]), then plumbed on this host (`tug_net::plumb`).
//!
//! ```text
//! dwait ──ask {instance, pool}──► dresponse ── peer pid (SO_PEERCRED)
//!                                     │ claim(pool, instance) ─► server (agent stream)
//!                                     │ plumb(pid, attachment)  ─► netlink / ovs-vsctl
//!       ◄──ok {ip, prefix, mac, gw}───┘ or error {why}
//! ```

mod dresponse;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tug_net::plumb::{Attachment, Plumber};
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
    async fn claim(&self, pool: &str, instance: &str) -> Result<(PoolSpec, Claim), String>;
    /// Says that `instance` no longer runs here (its address stays its own).
    async fn release(&self, pool: &str, instance: &str) -> Result<(), String>;
}

/// What one container was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The pool.
    pub pool: String,
    /// The attachment plumbed.
    pub attachment: Attachment,
}

/// The container network on this host: claims, plumbing, and what is plumbed now.
pub struct NetAgent {
    claims: Arc<dyn Claims>,
    plumber: Plumber,
    /// Plumbed instances by claim name.
    plumbed: Mutex<HashMap<String, Given>>,
}

impl NetAgent {
    /// The network of a host plumbed by `plumber`, with addresses from `claims`.
    pub fn new(claims: Arc<dyn Claims>, plumber: Plumber) -> NetAgent {
        NetAgent { claims, plumber, plumbed: Mutex::new(HashMap::new()) }
    }

    fn plumbed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Given>> {
        self.plumbed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims and plumbs the container of `instance` whose process is `pid`; what it got.
    pub async fn ready(&self, instance: &str, pool: &str, pid: u32) -> Result<Given, String> {
        let (spec, claim) = self.claims.claim(pool, instance).await?;
        let mtu = match spec.segment {
            Segment::Vlan(_) => VLAN_MTU,
            Segment::Vxlan(_) => VXLAN_MTU,
        };
        let attachment =
            Attachment { ip: claim.ip, prefix: spec.cidr.prefix(), mac: claim.mac, gateway: spec.gateway, segment: spec.segment, mtu };
        let (plumber, a) = (self.plumber.clone(), attachment.clone());
        tokio::task::spawn_blocking(move || plumber.plumb(pid, &a))
            .await
            .map_err(|e| format!("plumbing panicked: {e}"))?
            .map_err(|e| format!("plumbing {instance} ({}) failed: {e}", claim.ip))?;
        let given = Given { pool: pool.to_owned(), attachment };
        self.plumbed().insert(instance.to_owned(), given.clone());
        tracing::info!(instance, pool, ip = %claim.ip, mac = %claim.mac, pid, "container network ready");
        Ok(given)
    }

    /// Tears down `instance`'s network on this host and tells the server it no longer runs here.
    /// Nothing plumbed: nothing to do.
    pub async fn teardown(&self, instance: &str) -> Result<(), String> {
        let Some(given) = self.plumbed().remove(instance) else { return Ok(()) };
        let (plumber, ip, segment) = (self.plumber.clone(), given.attachment.ip, given.attachment.segment);
        tokio::task::spawn_blocking(move || plumber.unplumb(ip, segment))
            .await
            .map_err(|e| format!("unplumbing panicked: {e}"))?
            .map_err(|e| format!("unplumbing {instance} ({ip}) failed: {e}"))?;
        self.claims.release(&given.pool, instance).await
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
