//! What the agent's tests share: reading an agent's status updates off its channel.

#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use tug_core::protocol::{StatusUpdate, ToServer};

/// The next status update an agent sends (heartbeats and held runs skipped); panics when none
/// comes `within`, or when the agent has stopped.
pub async fn next_update(updates: &mut mpsc::Receiver<ToServer>, within: Duration) -> StatusUpdate {
    loop {
        let msg = tokio::time::timeout(within, updates.recv()).await;
        match msg.unwrap_or_else(|_| panic!("an update within {within:?}")).expect("agent still running") {
            ToServer::Status(u) => return u,
            ToServer::Heartbeat { .. } | ToServer::Held { .. } | ToServer::Health(_) | ToServer::BackSoon { .. } => continue,
        }
    }
}

/// The status updates already on the channel, without waiting (after the agent has stopped).
pub fn queued_updates(updates: &mut mpsc::Receiver<ToServer>) -> Vec<StatusUpdate> {
    std::iter::from_fn(|| updates.try_recv().ok())
        .filter_map(|m| match m {
            ToServer::Status(u) => Some(u),
            ToServer::Heartbeat { .. } | ToServer::Held { .. } | ToServer::Health(_) | ToServer::BackSoon { .. } => None,
        })
        .collect()
}
