//! What the store keeps for access control: API tokens (hashed, never the secret) and the audit
//! log of writes.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::access::{Role, Scope};

/// An API token as stored: its id and the hash of its secret, never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (also the token's prefix), unique.
    pub id: String,
    /// What it is for, as its creator said.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Which jobs it sees; `None`: every job.
    pub scope: Option<Scope>,
    /// The hex SHA-256 of the whole token. Not shown by the API.
    #[serde(skip_serializing)]
    pub hash: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked; `None`: not revoked.
    pub revoked_at: Option<Timestamp>,
}

impl TokenRecord {
    /// True when the token works at `now`: not revoked and not expired.
    pub fn live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// One write through the API: who, what, when, from where, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store, increasing; 0 on the way in.
    pub id: u64,
    /// When the write was answered.
    pub at: Timestamp,
    /// The token's id, `basic:USER` for Chronos basic auth, or `anonymous` on a server without auth.
    pub actor: String,
    /// The client's address.
    pub remote: String,
    /// HTTP method.
    pub method: String,
    /// Request path (no query string).
    pub path: String,
    /// The job it concerned, when the path names one.
    pub job: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// Filters for listing the audit log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this instant.
    pub since: Option<Timestamp>,
    /// Only entries about this job.
    pub job: Option<String>,
    /// Page size (capped at 1000; 0 means 100).
    pub limit: usize,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}
