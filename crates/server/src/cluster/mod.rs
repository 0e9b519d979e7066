//! A group of servers on one etcd store: one leads (fires, takes agents, answers the API), the
//! others follow (answer `/api/v1/cluster` and reads of jobs and runs themselves, pass every
//! other request to the leader, and tell agents that connect where the leader is). The binary
//! drives the loop; this module holds its parts.
//!
//! ```text
//!  start ─► lease (TTL), kept alive ─► campaign (etcd election on P/leader) ──won──► lead
//!             ▲                             │ serve as follower meanwhile            │
//!             │                             ▼                                        │ lease not renewed for
//!             └──────── new lease ◄── lease lost ◄───────────────────────────────────┘ `step_down` (< TTL):
//!                                                                                      stop firing at once
//! ```
//!
//! - `election.rs`: the lease, its keep-alive and the step-down timer; the campaign.
//! - `front.rs`: the follower's HTTP front (cluster status and reads here, the rest to the leader).
//! - `redirect.rs`: the follower's agent endpoint, which names the leader's to every agent.
//!
//! Words: a *member* is a server in the election (its key lives on its lease); the *leader* is
//! the member whose key is oldest; its *term* is that key's create revision, which also fences
//! the store ([`tug_store::etcd::Fence`]): once another member leads, a write of the old leader
//! fails. The *epoch* is the store's leader epoch stamped on launches (agents refuse older ones).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_store::etcd::EtcdStore;

mod election;
mod front;
mod redirect;

pub use election::{Election, ElectionError, Lease, Won};
pub use front::{follower_router, serve_follower};
pub use redirect::Redirect;

/// What a member announces in the election (its key's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The server's name (`--name`, the host name by default).
    pub name: String,
    /// Its API's URL as others reach it, e.g. `http://10.0.0.1:4400`.
    pub api: String,
    /// Its agent endpoint, e.g. `http://10.0.0.1:4401`.
    pub agent: String,
    /// When it started leading (`None` while it campaigns).
    pub leading_since: Option<Timestamp>,
}

/// This server's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It leads.
    Leader,
    /// Another member leads, or none does yet.
    Follower,
    /// It is on its own (SQLite store): always the leader of a group of one.
    Single,
}

/// A member as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// What it announced.
    #[serde(flatten)]
    pub member: Member,
    /// Whether it leads.
    pub leader: bool,
    /// Its election key's create revision (the leader's is the term).
    pub revision: i64,
    /// Seconds left on its lease, as etcd counts them (`None` if unknown).
    pub lease_ttl_left: Option<i64>,
}

/// `GET /api/v1/cluster`: who is in the group and who leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The server that answered.
    pub this: String,
    /// Its role.
    pub role: Role,
    /// The store (`sqlite`, or the etcd endpoints and prefix).
    pub store: String,
    /// The leader's name, if there is one.
    pub leader: Option<String>,
    /// The leader's term (its election key's create revision).
    pub term: Option<i64>,
    /// The last leader epoch handed out.
    pub epoch: u64,
    /// How long the leader has led, in seconds.
    pub leader_for_secs: Option<f64>,
    /// The lease TTL the members were started with, in seconds.
    pub lease_ttl_secs: Option<f64>,
    /// Writes this server attempted after it was deposed, refused by the fence.
    pub fenced_writes: u64,
    /// Every member, oldest key (the leader) first.
    pub members: Vec<MemberStatus>,
}

/// A server's membership of a group: the election, and what `/api/v1/cluster` shows of it.
pub struct Group {
    election: Election,
    store: EtcdStore,
    role: std::sync::Mutex<Role>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("me", &self.election.me().name).finish()
    }
}

impl Group {
    /// A member `me` of the group on `store`'s etcd, with leases of `ttl`.
    pub async fn join(store: EtcdStore, me: Member, ttl: Duration) -> Result<Arc<Group>, ElectionError> {
        let election = Election::new(&store, me, ttl).await?;
        Ok(Arc::new(Group { election, store, role: std::sync::Mutex::new(Role::Follower) }))
    }

    /// The election.
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// The store.
    pub fn store(&self) -> &EtcdStore {
        &self.store
    }

    /// Records this server's role.
    pub fn set_role(&self, role: Role) {
        *self.role.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = role;
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The group as etcd sees it now.
    pub async fn status(&self, now: Timestamp) -> Result<ClusterStatus, ElectionError> {
        let members = self.election.members().await?;
        let leader = members.iter().find(|m| m.leader);
        let epoch = self.store.epoch().await.map_err(ElectionError::Store)?;
        Ok(ClusterStatus {
            this: self.election.me().name.clone(),
            role: self.role(),
            store: self.store.config().to_string(),
            leader: leader.map(|m| m.member.name.clone()),
            term: leader.map(|m| m.revision),
            epoch,
            leader_for_secs: leader
                .and_then(|m| m.member.leading_since)
                .map(|since| now.duration_since(since).as_secs_f64().max(0.0)),
            lease_ttl_secs: Some(self.election.ttl().as_secs_f64()),
            fenced_writes: self.store.fenced_writes(),
            members,
        })
    }
}
