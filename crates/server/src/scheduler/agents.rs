//! The agent registry as the scheduler sees it: each agent's command channel, when it was last
//! heard from, and its place in the placement snapshot (resources, attributes, runs).
//!
//! An agent silent for longer than the agent timeout is `lost`: it takes no new runs and the
//! scheduler marks its active runs `lost` (retried by their jobs' policies, elsewhere). The
//! attempts given up that way are remembered, so that when the agent comes back they are stopped
//! there (whatever still runs of them has been replaced).
//!
//! An agent that says it is restarting (`BackSoon`) is *restarting*: it takes no new runs, and
//! its runs stay on it, until it registers again or the time it gave (at least the agent
//! timeout) passes, when it is lost as above.
//!
//! After a server restart, the agents named by the runs that were starting or running are
//! *awaited*: entries with no connection yet, holding those runs, until the agent registers and
//! says what it holds (see `reconcile.rs`), or the agent timeout passes and the runs are lost.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tug_core::placement::{AgentInfo, Capacity, Snapshot};
use tug_core::protocol::ToAgent;
use tug_core::run::RunId;

/// How an agent looks to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum AgentState {
    /// Connected and heard from within the timeout.
    Up,
    /// Up, but takes no new runs.
    Draining,
    /// Not heard from within the timeout.
    Lost,
    /// Held runs before the server restarted; not reconnected yet.
    Awaited,
    /// Said it is restarting; its runs wait for it until its deadline.
    Restarting,
}

/// An agent joining: who it is, what it offers, and how to reach it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Unique name.
    pub name: String,
    /// Its command channel.
    pub tx: mpsc::Sender<ToAgent>,
    /// What it offers.
    pub resources: Capacity,
    /// Attributes for constraints; `hostname` is added when missing.
    pub attributes: BTreeMap<String, String>,
}

/// A registered agent.
pub(crate) struct Registered {
    pub tx: mpsc::Sender<ToAgent>,
    pub last_seen: Instant,
    /// Known from runs recovered at start-up, not connected since: lost at the timeout.
    pub awaited: bool,
    /// Attempts given up when the agent was lost, to stop if it comes back.
    pub given_up: Vec<(RunId, u32)>,
    /// Warm containers it last said it holds.
    pub warm_containers: u32,
    /// It said it is restarting and will be back by then.
    pub back_by: Option<Instant>,
    /// Which connection of the agent this is (each registration counts one more): a report of
    /// what the agent holds speaks only for launches sent on an earlier connection.
    pub connection: u64,
}

/// All agents, indexed alike in `snapshot.agents` and `links`.
#[derive(Default)]
pub(crate) struct Agents {
    pub snapshot: Snapshot,
    pub links: Vec<Registered>,
    by_name: HashMap<String, usize>,
}

impl Agents {
    /// Adds an agent, or refreshes one that registers again (after a restart or a lost link).
    pub fn register(&mut self, link: Registration, now: Instant) -> usize {
        let mut attributes = link.attributes;
        attributes.entry("hostname".into()).or_insert_with(|| link.name.clone());
        if let Some(&i) = self.by_name.get(&link.name) {
            let a = &mut self.snapshot.agents[i];
            a.up = true;
            a.total = link.resources;
            a.attributes = attributes;
            self.snapshot.attributes_changed();
            self.links[i].tx = link.tx;
            self.links[i].last_seen = now;
            self.links[i].awaited = false;
            self.links[i].back_by = None;
            self.links[i].connection += 1;
            return i;
        }
        let i = self.snapshot.add_agent(AgentInfo {
            name: link.name.clone(),
            attributes,
            total: link.resources,
            used: Capacity::default(),
            up: true,
            draining: false,
        });
        self.links.push(Registered { tx: link.tx, last_seen: now, awaited: false, given_up: Vec::new(), warm_containers: 0, back_by: None, connection: 1 });
        self.by_name.insert(link.name, i);
        i
    }

    /// The entry of an agent that held runs before a server restart and has not registered since
    /// (created if needed): it takes no new runs until it registers.
    pub fn awaited(&mut self, name: &str, now: Instant) -> usize {
        if let Some(i) = self.index(name) {
            return i;
        }
        let (tx, _) = mpsc::channel(1);
        let mut attributes = BTreeMap::new();
        attributes.insert("hostname".to_string(), name.to_string());
        let i = self.snapshot.add_agent(AgentInfo {
            name: name.to_string(),
            attributes,
            total: Capacity::default(),
            used: Capacity::default(),
            up: false,
            draining: false,
        });
        self.links.push(Registered { tx, last_seen: now, awaited: true, given_up: Vec::new(), warm_containers: 0, back_by: None, connection: 0 });
        self.by_name.insert(name.to_string(), i);
        i
    }

    /// The index of a named agent.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Notes that agent `name` is restarting and will be back by `by`: it takes no new runs
    /// and is not lost before then.
    pub fn back_soon(&mut self, name: &str, by: Instant) -> Option<usize> {
        let i = self.index(name)?;
        self.snapshot.agents[i].up = false;
        self.links[i].back_by = Some(by);
        Some(i)
    }

    /// Notes that an agent was heard from; a lost agent comes back up. `None` for an unknown
    /// agent, or one restarting (it is back when it registers).
    pub fn seen(&mut self, name: &str, now: Instant) -> Option<usize> {
        let i = self.index(name)?;
        // A heartbeat still queued from before the restart notice does not undo it.
        if self.links[i].back_by.is_some() {
            return None;
        }
        self.links[i].last_seen = now;
        self.snapshot.agents[i].up = true;
        Some(i)
    }

    /// Marks agents silent for longer than `timeout` (a restarting one: also past the time it
    /// gave) as lost; returns the newly lost ones, each with why.
    pub fn expire(&mut self, now: Instant, timeout: std::time::Duration) -> Vec<(usize, Silence)> {
        let mut lost = Vec::new();
        for (i, l) in self.links.iter_mut().enumerate() {
            let a = &mut self.snapshot.agents[i];
            let silent = now.duration_since(l.last_seen) > timeout;
            if let Some(by) = l.back_by {
                if silent && now > by {
                    l.back_by = None;
                    lost.push((i, Silence::NotBack));
                }
            } else if (a.up || l.awaited) && silent {
                a.up = false;
                lost.push((i, if std::mem::take(&mut l.awaited) { Silence::Awaited } else { Silence::NoHeartbeat }));
            }
        }
        lost
    }

    /// The state of agent `i`.
    pub fn state(&self, i: usize) -> AgentState {
        let a = &self.snapshot.agents[i];
        if self.links[i].back_by.is_some() {
            return AgentState::Restarting;
        }
        match (a.up, a.draining) {
            (false, _) if self.links[i].awaited => AgentState::Awaited,
            (false, _) => AgentState::Lost,
            (true, true) => AgentState::Draining,
            (true, false) => AgentState::Up,
        }
    }

    /// Name of agent `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.snapshot.agents[i].name
    }
}

/// Why an agent was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Its heartbeats stopped.
    NoHeartbeat,
    /// It held runs before the server restarted and did not reconnect.
    Awaited,
    /// It said it was restarting and did not come back in the time it gave.
    NotBack,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Its name.
    pub name: String,
    /// Up, draining or lost.
    pub state: AgentState,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// CPU cores offered / in use.
    pub cpus: (f64, f64),
    /// Memory bytes offered / in use.
    pub mem: (u64, u64),
    /// Disk bytes offered / in use.
    pub disk: (u64, u64),
    /// Active runs on it.
    pub runs: usize,
    /// Warm containers it holds.
    pub warm_containers: u32,
    /// Seconds since it was last heard from.
    pub last_seen_secs: f64,
}

impl Agents {
    /// The API view of agent `i`, which holds `runs` active runs.
    pub fn view(&self, i: usize, runs: usize, now: Instant) -> AgentView {
        let a = &self.snapshot.agents[i];
        AgentView {
            name: a.name.clone(),
            state: self.state(i),
            attributes: a.attributes.clone(),
            cpus: (a.total.cpus, a.used.cpus),
            mem: (a.total.mem, a.used.mem),
            disk: (a.total.disk, a.used.disk),
            runs,
            warm_containers: self.links[i].warm_containers,
            last_seen_secs: now.duration_since(self.links[i].last_seen).as_secs_f64(),
        }
    }
}
