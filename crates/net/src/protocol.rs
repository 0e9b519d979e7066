//! The container network's messages between an agent and the server, carried as JSON in the
//! agent protocol's `net_request` and `net_answer` frames. Every request gets one answer with its
//! `id`; the server's handling is idempotent, so an agent resends unanswered requests after a
//! reconnect.

use serde::{Deserialize, Serialize};

use crate::claim::Claim;
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
