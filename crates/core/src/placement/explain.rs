//! Why a run fits nowhere, in words a user can act on.

use std::fmt;

use super::{Request, Snapshot, size};

/// Why no agent was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum NoFit {
    /// No agent is registered.
    NoAgents,
    /// Every agent is down or draining.
    NoneUp {
        /// How many agents there are.
        agents: usize,
    },
    /// No live agent satisfies the constraints.
    Constraints {
        /// The constraints, as written.
        constraints: Vec<String>,
    },
    /// Agents match, but none has the resources free.
    Resources {
        /// What is missing, e.g. "no agent has 4 cpus free; the most free is 2".
        detail: String,
    },
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoFit::NoAgents => write!(f, "no agent is connected; start one with `tug agent --server URL`"),
            NoFit::NoneUp { agents } => write!(f, "all {agents} agents are down or draining"),
            NoFit::Constraints { constraints } => {
                write!(f, "no live agent satisfies the constraints {}", constraints.join(", "))
            }
            NoFit::Resources { detail } => f.write_str(detail),
        }
    }
}

/// `candidates` are the agents satisfying the request's attribute constraints.
pub(super) fn why(snap: &Snapshot, req: &Request<'_>, candidates: &[usize]) -> NoFit {
    if !snap.agents.iter().any(|a| a.up && !a.draining) {
        return NoFit::NoneUp { agents: snap.agents.len() };
    }
    let eligible: Vec<usize> = candidates.iter().copied().filter(|&i| snap.eligible(i, req)).collect();
    if eligible.is_empty() {
        return NoFit::Constraints { constraints: req.constraints.iter().map(|c| c.constraint.to_string()).collect() };
    }
    let max_cpus = eligible.iter().map(|&i| snap.agents[i].free().cpus).fold(0.0_f64, f64::max);
    let max_mem = eligible.iter().map(|&i| snap.agents[i].free().mem).max().unwrap_or(0);
    let max_disk = eligible.iter().map(|&i| snap.agents[i].free().disk).max().unwrap_or(0);
    let mut parts = Vec::new();
    if req.needs.cpus > max_cpus + 1e-9 {
        parts.push(format!("no agent has {} cpus free; the most free is {}", trim(req.needs.cpus), trim(max_cpus)));
    }
    if req.needs.mem > max_mem {
        parts.push(format!("no agent has {} of memory free; the most free is {}", size(req.needs.mem), size(max_mem)));
    }
    if req.needs.disk > max_disk {
        parts.push(format!("no agent has {} of disk free; the most free is {}", size(req.needs.disk), size(max_disk)));
    }
    if parts.is_empty() {
        parts.push(format!(
            "no single agent has {} cpus, {} memory and {} disk free at once",
            trim(req.needs.cpus),
            size(req.needs.mem),
            size(req.needs.disk)
        ));
    }
    NoFit::Resources { detail: parts.join("; ") }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
