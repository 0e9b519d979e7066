//! Placement: which agent runs a run. A pure function of a cluster [`Snapshot`] and a
//! [`Request`], in the shape of Nomad's scheduler stack:
//!
//! ```text
//! agents ──► feasible (up, not draining, constraints, resources) ──► rank (affinity, binpack |
//!            spread, GROUP_BY) ──► pick best of a bounded sample ──► commit to the snapshot
//! ```
//!
//! To stay fast with thousands of agents a decision does not score every agent: it walks the
//! agents from a rotating start and stops after [`SAMPLE`] feasible ones (the "power of k
//! choices"), unless the job's warm-container agent is feasible, which wins outright. A request
//! that fits nowhere gets a [`NoFit`] that says why, in words.

use std::collections::{BTreeMap, HashMap};

use crate::bytesize::ByteSize;
use crate::constraint::{Constraint, Operator};
use crate::job::{PlacementStrategy, Resources};

mod explain;

pub use explain::NoFit;

/// Feasible agents scored per decision.
pub const SAMPLE: usize = 8;

/// Amounts of the resources placement counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Capacity {
    /// CPU cores.
    pub cpus: f64,
    /// Memory in bytes.
    pub mem: u64,
    /// Disk in bytes.
    pub disk: u64,
}

impl Capacity {
    /// The amounts a request asks for (absent = 0).
    pub fn of(r: &Resources) -> Capacity {
        Capacity { cpus: r.cpus.unwrap_or(0.0), mem: r.mem.map_or(0, |b| b.0), disk: r.disk.map_or(0, |b| b.0) }
    }

    fn fits_in(&self, free: &Capacity) -> bool {
        self.cpus <= free.cpus + 1e-9 && self.mem <= free.mem && self.disk <= free.disk
    }

    fn minus(&self, o: &Capacity) -> Capacity {
        Capacity { cpus: (self.cpus - o.cpus).max(0.0), mem: self.mem.saturating_sub(o.mem), disk: self.disk.saturating_sub(o.disk) }
    }

    fn plus(&self, o: &Capacity) -> Capacity {
        Capacity { cpus: self.cpus + o.cpus, mem: self.mem + o.mem, disk: self.disk + o.disk }
    }
}

/// What placement knows about one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// Its name.
    pub name: String,
    /// Attributes for constraints (`hostname` among them).
    pub attributes: BTreeMap<String, String>,
    /// What it offers.
    pub total: Capacity,
    /// What its runs use now.
    pub used: Capacity,
    /// Connected and heartbeating.
    pub up: bool,
    /// Being drained: takes no new runs.
    pub draining: bool,
}

impl AgentInfo {
    /// Free capacity.
    pub fn free(&self) -> Capacity {
        self.total.minus(&self.used)
    }
}

/// Runs by attribute name, then value.
type AttrRuns = HashMap<String, HashMap<String, u32>>;

/// The cluster as placement sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agents.
    pub agents: Vec<AgentInfo>,
    /// Active runs per job per agent index (for spread, UNIQUE and GROUP_BY).
    pub job_runs: HashMap<String, HashMap<usize, u32>>,
    /// Active runs per job per value of each attribute some UNIQUE or GROUP_BY constraint has
    /// asked about (`tracked`), kept in step with `job_runs` so each answer is one lookup.
    /// Attributes no such constraint names cost nothing.
    job_attr_runs: HashMap<String, AttrRuns>,
    tracked: Vec<String>,
    cursor: usize,
    /// Agents satisfying each distinct set of attribute-only constraints, computed on first use.
    candidates: HashMap<String, std::sync::Arc<Vec<usize>>>,
}

/// One placement request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The job.
    pub job: &'a str,
    /// What one run needs.
    pub needs: Capacity,
    /// Its constraints, with LIKE/UNLIKE regexes compiled.
    pub constraints: &'a [CompiledConstraint],
    /// Bin-pack or spread.
    pub strategy: PlacementStrategy,
    /// The agent holding the job's warm container, if any.
    pub warm_agent: Option<&'a str>,
}

/// A constraint with its regex compiled once.
#[derive(Debug, Clone)]
pub struct CompiledConstraint {
    /// The constraint.
    pub constraint: Constraint,
    regex: Option<regex::Regex>,
}

impl CompiledConstraint {
    /// Compiles a job's constraints (they were validated when the job was written).
    pub fn compile(cs: &[Constraint]) -> Vec<CompiledConstraint> {
        cs.iter()
            .map(|c| CompiledConstraint {
                regex: match c.operator {
                    Operator::Like | Operator::Unlike => {
                        c.value.as_deref().and_then(|v| regex::Regex::new(&format!("^(?:{v})$")).ok())
                    }
                    _ => None,
                },
                constraint: c.clone(),
            })
            .collect()
    }

    /// Whether `agent` (index `i`) satisfies it for `job`, given the snapshot's runs.
    fn allows(&self, snap: &Snapshot, i: usize, job: &str) -> bool {
        let c = &self.constraint;
        let value = snap.agents[i].attributes.get(&c.attribute);
        match c.operator {
            Operator::Equals => value == c.value.as_ref(),
            Operator::Like => value.is_some_and(|v| self.regex.as_ref().is_some_and(|r| r.is_match(v))),
            Operator::Unlike => value.is_none_or(|v| !self.regex.as_ref().is_some_and(|r| r.is_match(v))),
            Operator::Unique => {
                // No agent with the same value may hold an active run of the job.
                let Some(v) = value else { return false };
                snap.attr_runs(job, &c.attribute, v) == 0
            }
            Operator::GroupBy => value.is_some(),
        }
    }
}

impl Snapshot {
    /// A snapshot of these agents with no runs.
    pub fn new(agents: Vec<AgentInfo>) -> Snapshot {
        Snapshot {
            agents,
            job_runs: HashMap::new(),
            job_attr_runs: HashMap::new(),
            tracked: Vec::new(),
            cursor: 0,
            candidates: HashMap::new(),
        }
    }

    /// Active runs of `job` on agents whose attribute `attr` is `value`.
    fn attr_runs(&self, job: &str, attr: &str, value: &str) -> u32 {
        self.job_attr_runs.get(job).and_then(|m| m.get(attr)).and_then(|m| m.get(value)).copied().unwrap_or(0)
    }

    /// Indices of agents whose attributes satisfy the request's static constraints (all but
    /// UNIQUE, which depends on runs). Cached per constraint set: attributes do not change
    /// within a snapshot.
    fn candidates(&mut self, req: &Request<'_>) -> std::sync::Arc<Vec<usize>> {
        let key: String = req
            .constraints
            .iter()
            .filter(|c| c.constraint.operator != Operator::Unique)
            .map(|c| c.constraint.to_string())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if let Some(c) = self.candidates.get(&key) {
            return c.clone();
        }
        let list: Vec<usize> = (0..self.agents.len())
            .filter(|&i| {
                req.constraints
                    .iter()
                    .filter(|c| c.constraint.operator != Operator::Unique)
                    .all(|c| c.allows(self, i, req.job))
            })
            .collect();
        let list = std::sync::Arc::new(list);
        self.candidates.insert(key, list.clone());
        list
    }

    fn eligible(&self, i: usize, req: &Request<'_>) -> bool {
        let a = &self.agents[i];
        a.up && !a.draining && req.constraints.iter().all(|c| c.allows(self, i, req.job))
    }

    fn feasible(&self, i: usize, req: &Request<'_>) -> bool {
        req.needs.fits_in(&self.agents[i].free()) && self.eligible(i, req)
    }

    /// Higher is better.
    fn score(&self, i: usize, req: &Request<'_>) -> f64 {
        let a = &self.agents[i];
        let runs_here = self.job_runs.get(req.job).and_then(|m| m.get(&i)).copied().unwrap_or(0) as f64;
        let mut s = match req.strategy {
            PlacementStrategy::Binpack => {
                // Fraction of the agent in use after placing: fuller is better.
                let after = a.used.plus(&req.needs);
                let frac = |u: f64, t: f64| if t > 0.0 { u / t } else { 0.0 };
                (frac(after.cpus, a.total.cpus) + frac(after.mem as f64, a.total.mem as f64)) / 2.0
            }
            PlacementStrategy::Spread => -runs_here,
        };
        for c in req.constraints {
            if c.constraint.operator == Operator::GroupBy {
                // Fewer runs of the job in this agent's group is better.
                let attr = &c.constraint.attribute;
                let in_group = a.attributes.get(attr).map_or(0, |v| self.attr_runs(req.job, attr, v));
                s -= 1000.0 * f64::from(in_group);
            }
        }
        s
    }

    /// Chooses an agent for `req`, or says why none fits. Does not change the snapshot.
    pub fn place(&mut self, req: &Request<'_>) -> Result<usize, NoFit> {
        for c in req.constraints {
            if matches!(c.constraint.operator, Operator::Unique | Operator::GroupBy) {
                self.track(&c.constraint.attribute);
            }
        }
        let n = self.agents.len();
        if n == 0 {
            return Err(NoFit::NoAgents);
        }
        if let Some(w) = req.warm_agent
            && let Some(i) = self.agents.iter().position(|a| a.name == w)
            && self.feasible(i, req)
        {
            return Ok(i);
        }
        let candidates = self.candidates(req);
        let m = candidates.len();
        let start = if m == 0 { 0 } else { self.cursor % m };
        let mut best: Option<(f64, usize, usize)> = None;
        let mut found = 0;
        for k in 0..m {
            let i = candidates[(start + k) % m];
            if !self.feasible(i, req) {
                continue;
            }
            let s = self.score(i, req);
            if best.is_none_or(|(b, _, _)| s > b) {
                best = Some((s, i, k));
            }
            found += 1;
            if found >= SAMPLE {
                break;
            }
        }
        // Start the next decision just past the chosen agent: equal agents take turns (an agent
        // that cannot take the run, such as a drained one, passes its turn on to nobody in
        // particular), and samples differ between decisions.
        self.cursor = start + best.map_or(0, |(_, _, k)| k) + 1;
        best.map(|(_, i, _)| i).ok_or_else(|| explain::why(self, req, &candidates))
    }

    /// Adds an agent; returns its index. (Agents are added here, not pushed into `agents`
    /// directly, so the cached candidate lists are rebuilt.)
    pub fn add_agent(&mut self, agent: AgentInfo) -> usize {
        self.agents.push(agent);
        self.candidates.clear();
        self.agents.len() - 1
    }

    /// Call after changing an agent's attributes in place.
    pub fn attributes_changed(&mut self) {
        self.candidates.clear();
        self.job_attr_runs.clear();
        for attr in std::mem::take(&mut self.tracked) {
            self.track(&attr);
        }
    }

    /// Starts counting runs by the values of `attr` (once per attribute), from runs by agent.
    fn track(&mut self, attr: &str) {
        if self.tracked.iter().any(|t| t == attr) {
            return;
        }
        self.tracked.push(attr.to_string());
        for (job, per_agent) in &self.job_runs {
            let values = self.job_attr_runs.entry(job.clone()).or_default().entry(attr.to_string()).or_default();
            for (&i, &n) in per_agent {
                if let Some(v) = self.agents[i].attributes.get(attr) {
                    *values.entry(v.clone()).or_default() += n;
                }
            }
        }
    }

    /// Records a run of `job` with `needs` on agent `i`.
    pub fn commit(&mut self, i: usize, job: &str, needs: &Capacity) {
        let a = &mut self.agents[i];
        a.used = a.used.plus(needs);
        // Looked up before inserting: the job's name is copied once per job, not per run.
        if !self.job_runs.contains_key(job) {
            self.job_runs.insert(job.to_string(), HashMap::new());
        }
        if let Some(m) = self.job_runs.get_mut(job) {
            *m.entry(i).or_default() += 1;
        }
        if self.tracked.is_empty() {
            return;
        }
        if !self.job_attr_runs.contains_key(job) {
            self.job_attr_runs.insert(job.to_string(), AttrRuns::new());
        }
        let Some(counts) = self.job_attr_runs.get_mut(job) else { return };
        for k in &self.tracked {
            let Some(v) = a.attributes.get(k) else { continue };
            let values = match counts.get_mut(k) {
                Some(m) => m,
                None => counts.entry(k.clone()).or_default(),
            };
            match values.get_mut(v) {
                Some(n) => *n += 1,
                None => {
                    values.insert(v.clone(), 1);
                }
            }
        }
    }

    /// Releases a run of `job` with `needs` from agent `i`.
    pub fn release(&mut self, i: usize, job: &str, needs: &Capacity) {
        let a = &mut self.agents[i];
        a.used = a.used.minus(needs);
        if let Some(m) = self.job_runs.get_mut(job)
            && let Some(c) = m.get_mut(&i)
            && *c > 0
        {
            *c -= 1;
            if let Some(counts) = self.job_attr_runs.get_mut(job) {
                for k in &self.tracked {
                    let Some(v) = a.attributes.get(k) else { continue };
                    if let Some(n) = counts.get_mut(k).and_then(|m| m.get_mut(v)) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        }
    }
}

/// Formats a byte count for messages.
fn size(b: u64) -> String {
    let s = ByteSize(b).to_string();
    if s.chars().all(|c| c.is_ascii_digit()) { format!("{b} bytes") } else { s }
}

#[cfg(test)]
mod tests;
