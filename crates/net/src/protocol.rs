//! The container network's messages between an agent and the server, carried as JSON in the
//! agent protocol's `net_request` and `net_answer` frames. Every request gets one answer with its
//! `id`; the server's handling is idempotent, so an agent resends unanswered requests after a
//! reconnect.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::claim::{Claim, Mac};
use crate::pool::PoolSpec;

/// What an agent asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRequest {
    /// Per-agent request number; the answer carries it back.
    pub id: u64,
    /// The question.
    pub op: NetOp,
}

/// A question about one instance's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetOp {
    /// Claim `instance`'s address in `pool` for this agent (its container is starting here).
    Claim {
        /// The pool.
        pool: String,
        /// The instance's claim name.
        instance: String,
        /// This agent's VXLAN tunnel endpoint, so other hosts can reach the instance here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vtep: Option<Ipv4Addr>,
    },
    /// `instance` no longer runs on this agent; its address stays the instance's.
    Release {
        /// The pool.
        pool: String,
        /// The instance's claim name.
        instance: String,
    },
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAnswer {
    /// The request's id.
    pub id: u64,
    /// A claim: the pool and the claim; a release: nothing. `Err`: why not, to show the user.
    pub result: Result<Option<(PoolSpec, Claim)>, String>,
}

/// What the server tells agents unasked, in the agent protocol's `net_push` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetPush {
    /// Where every placed instance of a VXLAN pool lives now (sent on every change and when an
    /// agent connects): each agent points the MACs that are not its own at their hosts.
    Routes {
        /// The pool.
        pool: String,
        /// Its VNI.
        vni: u32,
        /// Every instance that is plumbed somewhere, with its host's tunnel endpoint.
        routes: Vec<Route>,
    },
    /// Stop `instance` here: it is starting on another host, and takes its address along once
    /// this agent has released it (a move is ordered).
    Evict {
        /// The instance's claim name.
        instance: String,
    },
}

/// One instance of a VXLAN pool and the tunnel endpoint of its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: Mac,
    /// Its host's tunnel endpoint.
    pub vtep: Ipv4Addr,
}
