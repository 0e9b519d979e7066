//! Follows Docker's events stream for this agent's containers and keeps a small cache of the
//! ones that died, so a dead warm container is replaced without asking Docker (no `inspect` per
//! container) and without first failing to reach its executor. Resubscribes when the stream ends
//! (daemon restart).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;

use super::Inner;
use super::spec::label;

/// Containers of this agent that died and were not destroyed yet.
#[derive(Default)]
pub struct Cache {
    dead: Mutex<HashSet<String>>,
}

impl Cache {
    /// Whether the container died (as far as the events said).
    pub fn is_dead(&self, id: &str) -> bool {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    fn record(&self, action: &str, id: String) {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        match action {
            "die" => {
                dead.insert(id);
            }
            "destroy" => {
                dead.remove(&id);
            }
            _ => {}
        }
    }
}

/// Follows the events until the runtime is dropped.
pub fn spawn(weak: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), vec![format!("{}={}", label::AGENT, inner.config.agent)]),
                ("event".to_string(), vec!["die".to_string(), "destroy".to_string()]),
            ]);
            let opts = bollard::query_parameters::EventsOptionsBuilder::new().filters(&filters).build();
            let mut stream = inner.docker.events(Some(opts));
            drop(inner);
            while let Some(item) = stream.next().await {
                let Some(inner) = weak.upgrade() else { return };
                match item {
                    Ok(ev) => {
                        if let (Some(action), Some(id)) = (ev.action, ev.actor.and_then(|a| a.id)) {
                            inner.events.record(&action, id);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %super::describe(&e), "the docker events stream failed; resubscribing");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
