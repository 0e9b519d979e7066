//! The container network's control plane: address pools and the claims made from them.
//!
//! The server is the one place addresses are handed out (agents claim through their stream), so
//! one lock here serializes every pool change and claim: two instances never get one address,
//! and a claim is never handed to two hosts at once.
//!
//! | a claim for instance I on agent A, when the store holds ... | then |
//! | --- | --- |
//! | nothing for I | choose an address (`tug_net::claim::choose`), record it on A |
//! | I, held by nobody or by A | record it on A: the same IP and MAC as before |
//! | I, held by agent B that is live | refuse; an agent's claim asks B to stop I first ([`answer`]) |
//! | I, held by agent B that is lost or gone | take it over: B is fenced |

mod requests;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::{Mutex, broadcast};
use tug_net::claim::choose;
use tug_net::protocol::{NetPush, Route};
use tug_net::{Claim, Identity, Mac, PoolError, PoolSpec, Segment};
use tug_store::{PoolRecord, Store, StoreError};

use crate::clock::SharedClock;

pub use requests::answer;

/// Why a network operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The pool is invalid, clashes with another, or has no free address.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The instance's address is plumbed on a live agent.
    #[error(
        "{claim} (pool {pool:?}, {ip}) is held by the instance on agent {agent:?}, which is live; stop it there \
         (or drain that agent) before starting it elsewhere"
    )]
    HeldElsewhere {
        /// The pool.
        pool: String,
        /// The claim's name.
        claim: String,
        /// Its address.
        ip: std::net::Ipv4Addr,
        /// Where it is held.
        agent: String,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pools and claims, with the lock that orders them.
pub struct Network {
    store: Arc<dyn Store>,
    clock: SharedClock,
    lock: Mutex<()>,
    /// Agents' VXLAN tunnel endpoints, as their claims say.
    vteps: std::sync::Mutex<HashMap<String, Ipv4Addr>>,
    /// What agents are told unasked: for one agent (`Some`) or all.
    pushes: broadcast::Sender<(Option<String>, NetPush)>,
}

impl Network {
    /// The control plane over `store`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> Network {
        Network {
            store,
            clock,
            lock: Mutex::new(()),
            vteps: std::sync::Mutex::new(HashMap::new()),
            pushes: broadcast::channel(1024).0,
        }
    }

    /// What agents are told unasked, from now on: `(Some(agent), push)` is for that agent only.
    pub fn subscribe(&self) -> broadcast::Receiver<(Option<String>, NetPush)> {
        self.pushes.subscribe()
    }

    /// Records agent `agent`'s tunnel endpoint.
    pub fn set_vtep(&self, agent: &str, vtep: Ipv4Addr) {
        self.vteps.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.to_owned(), vtep);
    }

    /// Asks `agent` to stop `instance` (it is starting elsewhere).
    pub fn evict(&self, agent: &str, instance: &str) {
        let _ = self.pushes.send((Some(agent.to_owned()), NetPush::Evict { instance: instance.to_owned() }));
    }

    /// The routes of every VXLAN pool, as [`NetPush::Routes`]: where each placed instance lives.
    pub async fn routes(&self) -> Result<Vec<NetPush>, NetError> {
        let mut out = Vec::new();
        for p in self.store.list_pools().await? {
            if let Some(r) = self.routes_of(&p.spec).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn routes_of(&self, spec: &PoolSpec) -> Result<Option<NetPush>, NetError> {
        let Segment::Vxlan(vni) = spec.segment else { return Ok(None) };
        let claims = self.store.list_claims(Some(&spec.name)).await?;
        let vteps = self.vteps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let routes = claims
            .iter()
            .filter_map(|c| Some(Route { ip: c.ip, mac: c.mac, vtep: *vteps.get(c.agent.as_deref()?)? }))
            .collect();
        Ok(Some(NetPush::Routes { pool: spec.name.clone(), vni, routes }))
    }

    /// Tells every agent a VXLAN pool's routes after a change.
    async fn announce(&self, pool: &str) {
        match self.store.get_pool(pool).await {
            Ok(p) => match self.routes_of(&p.spec).await {
                Ok(Some(r)) => {
                    let _ = self.pushes.send((None, r));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(pool, "cannot compute the pool's routes: {e}"),
            },
            Err(e) => tracing::warn!(pool, "cannot read the pool to announce its routes: {e}"),
        }
    }

    /// Creates a pool after checking it on its own and against every other pool.
    pub async fn add_pool(&self, spec: PoolSpec) -> Result<PoolRecord, NetError> {
        spec.validate()?;
        let _held = self.lock.lock().await;
        let pools = self.store.list_pools().await?;
        if pools.iter().any(|p| p.spec.name == spec.name) {
            return Err(StoreError::PoolExists(spec.name).into());
        }
        spec.check_against(pools.iter().map(|p| &p.spec))?;
        Ok(self.store.create_pool(&spec, self.clock.now()).await?)
    }

    /// Deletes a pool none of whose addresses is claimed.
    pub async fn delete_pool(&self, name: &str) -> Result<(), NetError> {
        let _held = self.lock.lock().await;
        Ok(self.store.delete_pool(name).await?)
    }

    /// Claims `who`'s address in `pool` for `agent` (see the module's table). `live` says whether
    /// an agent is connected and not lost.
    pub async fn claim(
        &self,
        pool: &str,
        who: &Identity,
        agent: &str,
        live: impl Fn(&str) -> bool,
    ) -> Result<(PoolSpec, Claim), NetError> {
        let name = who.claim_name();
        let _held = self.lock.lock().await;
        let spec = self.store.get_pool(pool).await?.spec;
        let claims = self.store.list_claims(Some(pool)).await?;
        let claim = match claims.iter().find(|c| c.name == name) {
            Some(c) => {
                if let Some(holder) = c.agent.as_deref().filter(|h| *h != agent && live(h)) {
                    return Err(NetError::HeldElsewhere {
                        pool: pool.to_owned(),
                        claim: name,
                        ip: c.ip,
                        agent: holder.to_owned(),
                    });
                }
                Claim { agent: Some(agent.to_owned()), ..c.clone() }
            }
            None => {
                let taken: HashSet<_> = claims.iter().map(|c| c.ip).collect();
                let ip = choose(&spec, &name, &taken)?;
                Claim { pool: pool.to_owned(), name, ip, mac: Mac::for_ip(ip), agent: Some(agent.to_owned()) }
            }
        };
        self.store.put_claim(&claim).await?;
        drop(_held);
        self.announce(pool).await;
        Ok((spec, claim))
    }

    /// Records that `who`'s instance no longer runs on `agent` (stopped there): the address stays
    /// the instance's, for wherever it starts next. A release from an agent that no longer holds
    /// the claim changes nothing.
    pub async fn release(&self, pool: &str, who: &Identity, agent: &str) -> Result<(), NetError> {
        let name = who.claim_name();
        let _held = self.lock.lock().await;
        let claims = self.store.list_claims(Some(pool)).await?;
        if let Some(c) = claims.into_iter().find(|c| c.name == name && c.agent.as_deref() == Some(agent)) {
            self.store.put_claim(&Claim { agent: None, ..c }).await?;
            drop(_held);
            self.announce(pool).await;
        }
        Ok(())
    }

    /// Gives every address of job `job`'s instances back to its pool (the job is gone).
    pub async fn forget_job(&self, job: &str) -> Result<Vec<Claim>, NetError> {
        // Claim names of a job's instances: job/NAME/SLOT (Identity::JobSlot).
        self.forget_prefix(&format!("job/{job}/")).await
    }

    /// Gives every address of a deleted service's replicas back to its pool. A replica scaled
    /// in keeps its address until then: scaled out again, the same index gets the same address.
    pub async fn forget_service(&self, service: &str) -> Result<Vec<Claim>, NetError> {
        // Claim names of a service's replicas: service/NAME/INDEX (Identity::Replica).
        self.forget_prefix(&format!("service/{service}/")).await
    }

    async fn forget_prefix(&self, prefix: &str) -> Result<Vec<Claim>, NetError> {
        let _held = self.lock.lock().await;
        let mut gone = Vec::new();
        for c in self.store.list_claims(None).await?.into_iter().filter(|c| c.name.starts_with(prefix)) {
            gone.extend(self.store.remove_claim(&c.pool, &c.name).await?);
        }
        Ok(gone)
    }

    /// Gives `who`'s address back to the pool (its job or service is gone).
    pub async fn forget(&self, pool: &str, who: &Identity) -> Result<Option<Claim>, NetError> {
        let _held = self.lock.lock().await;
        Ok(self.store.remove_claim(pool, &who.claim_name()).await?)
    }
}

#[cfg(test)]
mod tests {
    use tug_store::mem::MemStore;

    use super::*;
    use crate::clock::SystemClock;

    fn pool(name: &str, cidr: &str, vlan: u16) -> PoolSpec {
        let gw = cidr.replace(".0/", ".1/");
        serde_json::from_value(serde_json::json!({
            "name": name, "cidr": cidr, "segment": {"kind": "vlan", "id": vlan}, "gateway": gw.split('/').next().unwrap(),
        }))
        .unwrap()
    }

    fn job(name: &str) -> Identity {
        Identity::JobSlot { job: name.into(), slot: 0 }
    }

    fn net() -> Network {
        Network::new(Arc::new(MemStore::new()), Arc::new(SystemClock))
    }

    #[tokio::test]
    async fn pools_are_checked_against_each_other() {
        let n = net();
        n.add_pool(pool("a", "10.1.0.0/24", 10)).await.unwrap();
        let e = n.add_pool(pool("b", "10.1.0.0/25", 11)).await.unwrap_err().to_string();
        assert!(e.contains("overlaps pool \"a\""), "{e}");
        let e = n.add_pool(pool("a", "10.2.0.0/24", 12)).await.unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let e = n.add_pool(pool("c", "10.3.0.0/24", 10)).await.unwrap_err().to_string();
        assert!(e.contains("vlan 10 is already pool \"a\"'s segment"), "{e}");
    }

    #[tokio::test]
    async fn an_instance_keeps_its_address_and_moves_in_order() {
        let n = net();
        n.add_pool(pool("a", "10.1.0.0/24", 10)).await.unwrap();
        let live = |a: &str| a == "h1" || a == "h2";
        let (_, first) = n.claim("a", &job("web"), "h1", live).await.unwrap();
        let (_, again) = n.claim("a", &job("web"), "h1", live).await.unwrap();
        assert_eq!(first, again);
        // Not on a second host while the first is live and holds it.
        let e = n.claim("a", &job("web"), "h2", live).await.unwrap_err().to_string();
        assert!(e.contains("held by the instance on agent \"h1\", which is live; stop it there"), "{e}");
        // Stopped on h1: h2 gets the same address and MAC.
        n.release("a", &job("web"), "h1").await.unwrap();
        let (_, moved) = n.claim("a", &job("web"), "h2", live).await.unwrap();
        assert_eq!((moved.ip, moved.mac, moved.agent.as_deref()), (first.ip, first.mac, Some("h2")));
        // A late release from h1 does not take it from h2.
        n.release("a", &job("web"), "h1").await.unwrap();
        assert_eq!(n.store.list_claims(Some("a")).await.unwrap()[0].agent.as_deref(), Some("h2"));
        // h2 is lost (fenced): h1 takes it over without a release.
        let (_, back) = n.claim("a", &job("web"), "h1", |a| a == "h1").await.unwrap();
        assert_eq!((back.ip, back.agent.as_deref()), (first.ip, Some("h1")));
        // Deleting the pool waits for the claim to go.
        assert!(n.delete_pool("a").await.unwrap_err().to_string().contains("1 claimed address"));
        n.forget("a", &job("web")).await.unwrap();
        n.delete_pool("a").await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_job_gives_its_addresses_back() {
        let n = net();
        n.add_pool(pool("a", "10.1.0.0/24", 10)).await.unwrap();
        n.add_pool(pool("b", "10.2.0.0/24", 11)).await.unwrap();
        n.claim("a", &job("web"), "h1", |_| true).await.unwrap();
        n.claim("b", &Identity::JobSlot { job: "web".into(), slot: 1 }, "h1", |_| true).await.unwrap();
        n.claim("a", &job("web2"), "h1", |_| true).await.unwrap();
        let gone: Vec<String> = n.forget_job("web").await.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(gone, ["job/web/0", "job/web/1"]);
        let left: Vec<String> = n.store.list_claims(None).await.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(left, ["job/web2/0"]);
    }

    #[tokio::test]
    async fn an_exhausted_pool_says_so() {
        let n = net();
        n.add_pool(pool("tiny", "10.9.0.0/29", 10)).await.unwrap();
        for i in 0..5 {
            n.claim("tiny", &job(&format!("j{i}")), "h1", |_| true).await.unwrap();
        }
        let e = n.claim("tiny", &job("j5"), "h1", |_| true).await.unwrap_err().to_string();
        assert!(e.contains("pool \"tiny\" (10.9.0.0/29) has no free address: all 5 addresses"), "{e}");
        let e = n.claim("ghost", &job("j5"), "h1", |_| true).await.unwrap_err().to_string();
        assert!(e.contains("network pool \"ghost\" not found"), "{e}");
    }
}
