//! The event stream: every change the scheduler makes to jobs, runs, agents, services (their
//! replicas, scale operations and releases), as one ordered
//! sequence that the API serves as Server-Sent Events (`GET /api/v1/events`), the UI and
//! `tug events` follow, and integrations read instead of polling.
//!
//! | property | how |
//! | --- | --- |
//! | ordered, numbered | each event gets the next id; ids of one server start at `epoch << 32`, so they keep growing across restarts |
//! | bounded | the last `capacity` events are kept in a ring; publishing never waits and never fails |
//! | resumable | a subscriber names the last id it saw and gets everything after it that the ring still holds |
//! | never silently lossy | a subscriber whose next event has left the ring gets [`Lagged`] (how many it missed) before it goes on |
//!
//! Run events are published once their change is durable (after the store write), so an event
//! never names a run the API cannot show yet.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;
use tug_core::run::{Run, RunState};

use crate::clock::SharedClock;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    /// A job was created.
    #[serde(rename = "job.created")]
    JobCreated,
    /// A job's spec was replaced.
    #[serde(rename = "job.changed")]
    JobChanged,
    /// A job was deleted (with its runs).
    #[serde(rename = "job.deleted")]
    JobDeleted,
    /// A job was paused.
    #[serde(rename = "job.paused")]
    JobPaused,
    /// A paused job was resumed.
    #[serde(rename = "job.resumed")]
    JobResumed,
    /// A run was created by a fire, a manual start or a dependency.
    #[serde(rename = "run.fired")]
    RunFired,
    /// A run was placed on an agent and its launch is on the way.
    #[serde(rename = "run.placed")]
    RunPlaced,
    /// A run's process started on its agent.
    #[serde(rename = "run.started")]
    RunStarted,
    /// A run waits: for an agent with room, or for the job's previous run.
    #[serde(rename = "run.waiting")]
    RunWaiting,
    /// A run's attempt failed and it will be retried (`retry_at`).
    #[serde(rename = "run.retried")]
    RunRetried,
    /// A run ended; its `state` says how.
    #[serde(rename = "run.finished")]
    RunFinished,
    /// A fire missed its window and was skipped (the misfire policy).
    #[serde(rename = "run.misfired")]
    RunMisfired,
    /// An agent registered (first time or again).
    #[serde(rename = "agent.joined")]
    AgentJoined,
    /// An agent went silent past the agent timeout.
    #[serde(rename = "agent.lost")]
    AgentLost,
    /// An agent was drained: it takes no new runs.
    #[serde(rename = "agent.drained")]
    AgentDrained,
    /// A drained agent takes runs again.
    #[serde(rename = "agent.undrained")]
    AgentUndrained,
    /// A service was created.
    #[serde(rename = "service.created")]
    ServiceCreated,
    /// A service's spec was replaced (by an update, or a release that succeeded).
    #[serde(rename = "service.changed")]
    ServiceChanged,
    /// A service was deleted; its replicas stop.
    #[serde(rename = "service.deleted")]
    ServiceDeleted,
    /// A service's replica count was set (`replicas`, `operation`), by a call or a scaling rule.
    #[serde(rename = "service.scaled")]
    ServiceScaled,
    /// A replica's attempt was placed on an agent and its launch is on the way.
    #[serde(rename = "replica.placed")]
    ReplicaPlaced,
    /// A replica's attempt is running.
    #[serde(rename = "replica.started")]
    ReplicaStarted,
    /// A replica passes its health check (or runs, without one).
    #[serde(rename = "replica.healthy")]
    ReplicaHealthy,
    /// A replica failed its health check and is stopped to be replaced.
    #[serde(rename = "replica.unhealthy")]
    ReplicaUnhealthy,
    /// A replica's attempt ended (`reason`); `removed` when it is gone for good (scaled in, deleted).
    #[serde(rename = "replica.stopped")]
    ReplicaStopped,
    /// A replica's next attempt is on its way after one ended (`restart_in_ms`), or a release replaces it (`release`).
    #[serde(rename = "replica.replaced")]
    ReplicaReplaced,
    /// A scale operation's counts changed (replicas, placed, started, healthy).
    #[serde(rename = "operation.progress")]
    OperationProgress,
    /// A scale operation ended: succeeded, superseded or failed (`error`).
    #[serde(rename = "operation.finished")]
    OperationFinished,
    /// A release started.
    #[serde(rename = "release.started")]
    ReleaseStarted,
    /// A release entered a stage (`state`: smoking, baking, rolling_out, revoking).
    #[serde(rename = "release.stage")]
    ReleaseStage,
    /// A release was braked.
    #[serde(rename = "release.braked")]
    ReleaseBraked,
    /// A braked release was resumed.
    #[serde(rename = "release.resumed")]
    ReleaseResumed,
    /// A failed release runs its failed stage again.
    #[serde(rename = "release.retried")]
    ReleaseRetried,
    /// A release failed (`reason`: which replica, and why).
    #[serde(rename = "release.failed")]
    ReleaseFailed,
    /// A release succeeded: its spec is the service's.
    #[serde(rename = "release.succeeded")]
    ReleaseSucceeded,
    /// A revoke is over: every replica runs the previous spec.
    #[serde(rename = "release.revoked")]
    ReleaseRevoked,
}

impl EventKind {
    /// Every kind, for help texts and filters.
    pub const ALL: [EventKind; 36] = [
        EventKind::JobCreated,
        EventKind::JobChanged,
        EventKind::JobDeleted,
        EventKind::JobPaused,
        EventKind::JobResumed,
        EventKind::RunFired,
        EventKind::RunPlaced,
        EventKind::RunStarted,
        EventKind::RunWaiting,
        EventKind::RunRetried,
        EventKind::RunFinished,
        EventKind::RunMisfired,
        EventKind::AgentJoined,
        EventKind::AgentLost,
        EventKind::AgentDrained,
        EventKind::AgentUndrained,
        EventKind::ServiceCreated,
        EventKind::ServiceChanged,
        EventKind::ServiceDeleted,
        EventKind::ServiceScaled,
        EventKind::ReplicaPlaced,
        EventKind::ReplicaStarted,
        EventKind::ReplicaHealthy,
        EventKind::ReplicaUnhealthy,
        EventKind::ReplicaStopped,
        EventKind::ReplicaReplaced,
        EventKind::OperationProgress,
        EventKind::OperationFinished,
        EventKind::ReleaseStarted,
        EventKind::ReleaseStage,
        EventKind::ReleaseBraked,
        EventKind::ReleaseResumed,
        EventKind::ReleaseRetried,
        EventKind::ReleaseFailed,
        EventKind::ReleaseSucceeded,
        EventKind::ReleaseRevoked,
    ];

    /// Its name on the wire, e.g. `run.finished`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobCreated => "job.created",
            EventKind::JobChanged => "job.changed",
            EventKind::JobDeleted => "job.deleted",
            EventKind::JobPaused => "job.paused",
            EventKind::JobResumed => "job.resumed",
            EventKind::RunFired => "run.fired",
            EventKind::RunPlaced => "run.placed",
            EventKind::RunStarted => "run.started",
            EventKind::RunWaiting => "run.waiting",
            EventKind::RunRetried => "run.retried",
            EventKind::RunFinished => "run.finished",
            EventKind::RunMisfired => "run.misfired",
            EventKind::AgentJoined => "agent.joined",
            EventKind::AgentLost => "agent.lost",
            EventKind::AgentDrained => "agent.drained",
            EventKind::AgentUndrained => "agent.undrained",
            EventKind::ServiceCreated => "service.created",
            EventKind::ServiceChanged => "service.changed",
            EventKind::ServiceDeleted => "service.deleted",
            EventKind::ServiceScaled => "service.scaled",
            EventKind::ReplicaPlaced => "replica.placed",
            EventKind::ReplicaStarted => "replica.started",
            EventKind::ReplicaHealthy => "replica.healthy",
            EventKind::ReplicaUnhealthy => "replica.unhealthy",
            EventKind::ReplicaStopped => "replica.stopped",
            EventKind::ReplicaReplaced => "replica.replaced",
            EventKind::OperationProgress => "operation.progress",
            EventKind::OperationFinished => "operation.finished",
            EventKind::ReleaseStarted => "release.started",
            EventKind::ReleaseStage => "release.stage",
            EventKind::ReleaseBraked => "release.braked",
            EventKind::ReleaseResumed => "release.resumed",
            EventKind::ReleaseRetried => "release.retried",
            EventKind::ReleaseFailed => "release.failed",
            EventKind::ReleaseSucceeded => "release.succeeded",
            EventKind::ReleaseRevoked => "release.revoked",
        }
    }

    /// The kind a stored run change announces, from the state it was written with.
    pub fn of_run(run: &Run) -> EventKind {
        match run.state {
            RunState::Starting => EventKind::RunPlaced,
            RunState::Running => EventKind::RunStarted,
            RunState::Pending if run.retry_at.is_some() => EventKind::RunRetried,
            RunState::Pending => EventKind::RunWaiting,
            RunState::Skipped => EventKind::RunMisfired,
            _ => EventKind::RunFinished,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Its place in the stream; larger is later.
    pub id: u64,
    /// When it was published.
    pub at: jiff::Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The job it is about (job and run events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The agent it is about (agent events; run events carry theirs in `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The run as it is after the event (run events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// The service it is about (service, replica, operation and release events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What a service event says beyond its kind: the replica's index, agent, attempt and
    /// reason; the operation's or release's id, state and counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// The event as JSON, made once for every subscriber that sends it.
    #[serde(skip)]
    json: std::sync::OnceLock<String>,
}

impl Event {
    /// The event as JSON (what the stream sends as its data); serialized on first use, then
    /// shared by every subscriber, so a hundred subscribers cost one serialization.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| serde_json::to_string(self).unwrap_or_default())
    }
}

/// A subscriber's next event has left the ring: it missed `missed` events and goes on from
/// `resume_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lagged {
    /// Events it will never see; `None` when its last id is from an earlier server start (how
    /// many happened since is not known).
    pub missed: Option<u64>,
    /// The oldest event still held, where it goes on.
    pub resume_at: u64,
}

struct Ring {
    /// The id the next event gets.
    next: u64,
    events: VecDeque<Arc<Event>>,
}

impl Ring {
    /// Appends an event, dropping the oldest when full.
    fn push(&mut self, event: Event, capacity: usize) {
        if self.events.len() == capacity {
            self.events.pop_front();
        }
        self.events.push_back(Arc::new(event));
    }
}

struct Inner {
    ring: Mutex<Ring>,
    capacity: usize,
    clock: SharedClock,
    /// The id of the newest event, for subscribers to wait on.
    latest: watch::Sender<u64>,
    /// Set when the server stops: subscriptions end, so open streams let it shut down.
    closed: std::sync::atomic::AtomicBool,
}

/// The stream's publisher and its ring of recent events. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

/// Events kept for resuming when the server is not told otherwise.
pub const DEFAULT_CAPACITY: usize = 65_536;

impl EventBus {
    /// A bus keeping the last `capacity` events.
    pub fn new(clock: SharedClock, capacity: usize) -> EventBus {
        let (latest, _) = watch::channel(0);
        let ring = Ring { next: 1, events: VecDeque::with_capacity(capacity.min(4096)) };
        EventBus { inner: Arc::new(Inner { ring: Mutex::new(ring), capacity: capacity.max(1), clock, latest, closed: Default::default() }) }
    }

    /// Numbers this server's events from `epoch << 32` (call before publishing), so a client
    /// resuming with an id from an earlier server start is told it missed events.
    pub fn start_epoch(&self, epoch: u64) {
        let mut ring = self.inner.ring.lock().expect("event ring lock");
        if ring.events.is_empty() {
            ring.next = (epoch << 32).max(1);
        }
    }

    /// Publishes one event. Never waits on subscribers.
    pub fn publish(&self, kind: EventKind, job: Option<&str>, agent: Option<&str>, run: Option<Run>) {
        let at = self.inner.clock.now();
        let id = {
            let mut ring = self.inner.ring.lock().expect("event ring lock");
            let id = ring.next;
            ring.next += 1;
            let event = Event {
                id,
                at,
                kind,
                job: job.map(str::to_string),
                agent: agent.map(str::to_string),
                run,
                service: None,
                detail: None,
                json: Default::default(),
            };
            ring.push(event, self.inner.capacity);
            id
        };
        self.inner.latest.send_replace(id);
    }

    /// Publishes a service event (service, replica, operation, release) with what it says.
    pub fn publish_service(&self, kind: EventKind, service: &str, detail: serde_json::Value) {
        let at = self.inner.clock.now();
        let id = {
            let mut ring = self.inner.ring.lock().expect("event ring lock");
            let id = ring.next;
            ring.next += 1;
            let detail = Some(detail).filter(|d| !d.is_null());
            let event =
                Event { id, at, kind, job: None, agent: None, run: None, service: Some(service.to_string()), detail, json: Default::default() };
            ring.push(event, self.inner.capacity);
            id
        };
        self.inner.latest.send_replace(id);
    }

    /// Publishes a run change with the kind its state announces.
    pub fn publish_run(&self, run: &Run) {
        self.publish(EventKind::of_run(run), Some(&run.job), None, Some(run.clone()));
    }

    /// Publishes run events in order, in one go: one clock reading, one turn of the lock and one
    /// wake-up of the subscribers for a whole herd of changes (a fire of 5,000 jobs makes 10,000).
    pub fn publish_runs(&self, events: Vec<(EventKind, Run)>) {
        if events.is_empty() {
            return;
        }
        let at = self.inner.clock.now();
        let mut gone = Vec::new();
        let last = {
            let mut ring = self.inner.ring.lock().expect("event ring lock");
            for (kind, run) in events {
                let id = ring.next;
                ring.next += 1;
                let event = Event {
                    id,
                    at,
                    kind,
                    job: Some(run.job.clone()),
                    agent: None,
                    run: Some(run),
                    service: None,
                    detail: None,
                    json: Default::default(),
                };
                if ring.events.len() == self.inner.capacity {
                    gone.extend(ring.events.pop_front());
                }
                ring.events.push_back(Arc::new(event));
            }
            ring.next - 1
        };
        // Freed outside the lock, so readers do not wait for it.
        drop(gone);
        self.inner.latest.send_replace(last);
    }

    /// A subscription that starts after event `after` (0: from the oldest held), or after the
    /// newest event when `None`.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let rx = self.inner.latest.subscribe();
        let cursor = match after {
            Some(a) => a,
            None => self.inner.ring.lock().expect("event ring lock").next - 1,
        };
        Subscription { bus: self.clone(), cursor, rx }
    }

    /// Ends every subscription (after what it has not yet been handed); the server is stopping.
    pub fn close(&self) {
        self.inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.latest.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The id of the newest event (0 when none yet).
    pub fn latest(&self) -> u64 {
        *self.inner.latest.borrow()
    }

    /// Events after `cursor`, at most `max`; or how many the cursor missed.
    fn after(&self, cursor: u64, max: usize) -> Result<Vec<Arc<Event>>, Lagged> {
        let ring = self.inner.ring.lock().expect("event ring lock");
        let Some(first) = ring.events.front().map(|e| e.id) else { return Ok(Vec::new()) };
        // 0 is no event's id: "from the oldest held".
        if cursor != 0 && cursor + 1 < first && cursor < ring.next - 1 {
            let missed = (cursor >> 32 == first >> 32).then(|| first - cursor - 1);
            return Err(Lagged { missed, resume_at: first });
        }
        let skip = (cursor + 1).saturating_sub(first) as usize;
        Ok(ring.events.iter().skip(skip).take(max).cloned().collect())
    }
}

/// Announces stored run changes, filling in a start the write merged away: an agent's
/// `running` and `succeeded` (or `failed`, then a retry) for a short run often arrive in one
/// batch, which stores only the end, yet followers count starts. Remembers the attempts it
/// announced as started until they end, and the attempts a retry ended until the next one is
/// placed (a pending retry can be written again while it waits, with the same ended attempt).
#[derive(Default)]
pub struct RunAnnouncer {
    started: std::collections::HashSet<(u64, u32)>,
    retried: std::collections::HashSet<(u64, u32)>,
}

impl RunAnnouncer {
    /// Publishes the changes `runs` were stored with, in order.
    pub fn announce(&mut self, bus: &EventBus, runs: Vec<Run>) {
        let mut events = Vec::with_capacity(runs.len());
        for run in runs {
            let key = (run.id, run.attempt);
            // The attempt before this one, which a retry ended.
            let ended = (run.id, run.attempt.saturating_sub(1));
            match run.state {
                RunState::Pending if run.retry_at.is_some() => {
                    // A retry: the attempt that ran is over. The record still holds its start.
                    let announced = self.started.remove(&ended);
                    if self.retried.insert(ended) && !announced && run.started_at.is_some() {
                        let mut running = Self::running(&run);
                        running.attempt = ended.1;
                        running.retry_at = None;
                        events.push((EventKind::RunStarted, running));
                    }
                }
                RunState::Pending => {}
                state => {
                    self.retried.remove(&ended);
                    if state == RunState::Running {
                        self.started.insert(key);
                    } else if state.is_terminal() && !self.started.remove(&key) && run.started_at.is_some() {
                        events.push((EventKind::RunStarted, Self::running(&run)));
                    }
                }
            }
            events.push((EventKind::of_run(&run), run));
        }
        bus.publish_runs(events);
    }

    /// The run as it was while its current attempt ran.
    fn running(run: &Run) -> Run {
        let mut running = run.clone();
        running.state = RunState::Running;
        running.finished_at = None;
        running.exit_code = None;
        running.signal = None;
        running.reason = None;
        running
    }
}

/// One subscriber's place in the stream.
pub struct Subscription {
    bus: EventBus,
    cursor: u64,
    rx: watch::Receiver<u64>,
}

/// What a subscriber gets next.
#[derive(Debug)]
pub enum Next {
    /// Events in order (never empty).
    Events(Vec<Arc<Event>>),
    /// It fell behind the ring: these were missed; the next call goes on from the oldest held.
    Lagged(Lagged),
    /// The bus is gone (the server is stopping).
    Closed,
}

impl Subscription {
    /// Waits for the next events after the cursor (at most `max` at a time).
    pub async fn next(&mut self, max: usize) -> Next {
        loop {
            match self.bus.after(self.cursor, max) {
                Ok(events) if !events.is_empty() => {
                    self.cursor = events.last().expect("not empty").id;
                    return Next::Events(events);
                }
                Ok(_) => {}
                Err(lag) => {
                    self.cursor = lag.resume_at - 1;
                    return Next::Lagged(lag);
                }
            }
            if self.bus.is_closed() {
                return Next::Closed;
            }
            let cursor = self.cursor;
            let bus = self.bus.clone();
            if self.rx.wait_for(|latest| *latest > cursor || bus.is_closed()).await.is_err() {
                return Next::Closed;
            }
        }
    }

    /// The id of the last event handed out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn bus(capacity: usize) -> EventBus {
        EventBus::new(Arc::new(SystemClock), capacity)
    }

    fn ids(n: Next) -> Vec<u64> {
        match n {
            Next::Events(e) => e.iter().map(|e| e.id).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_subscriber_sees_later_events_in_order() {
        let b = bus(8);
        b.publish(EventKind::JobCreated, Some("before"), None, None);
        let mut s = b.subscribe(None);
        b.publish(EventKind::JobCreated, Some("a"), None, None);
        b.publish(EventKind::JobPaused, Some("a"), None, None);
        assert_eq!(ids(s.next(100).await), vec![2, 3]);
        b.publish(EventKind::JobDeleted, Some("a"), None, None);
        assert_eq!(ids(s.next(100).await), vec![4]);
    }

    #[tokio::test]
    async fn an_events_json_is_made_once_and_is_the_event() {
        let b = bus(8);
        let mut s = b.subscribe(None);
        b.publish(EventKind::AgentJoined, None, Some("a1"), None);
        let Next::Events(got) = s.next(10).await else { panic!("an event") };
        let json = got[0].json();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!((v["id"].as_u64(), v["kind"].as_str(), v["agent"].as_str()), (Some(1), Some("agent.joined"), Some("a1")));
        assert!(v.get("json").is_none(), "{json}");
        assert!(std::ptr::eq(json, got[0].json()), "the same text for the next subscriber");
    }

    #[tokio::test]
    async fn resuming_from_an_id_replays_what_the_ring_holds() {
        let b = bus(8);
        for _ in 0..5 {
            b.publish(EventKind::JobChanged, Some("a"), None, None);
        }
        assert_eq!(ids(b.subscribe(Some(2)).next(100).await), vec![3, 4, 5]);
        assert_eq!(ids(b.subscribe(Some(0)).next(2).await), vec![1, 2]);
        let late = bus(2);
        late.start_epoch(5);
        for _ in 0..3 {
            late.publish(EventKind::JobChanged, Some("a"), None, None);
        }
        assert_eq!(ids(late.subscribe(Some(0)).next(9).await), vec![(5 << 32) + 1, (5 << 32) + 2], "0 means the oldest held");
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_is_told_how_much_it_missed() {
        let b = bus(4);
        for _ in 0..10 {
            b.publish(EventKind::JobChanged, Some("a"), None, None);
        }
        let mut s = b.subscribe(Some(3));
        match s.next(100).await {
            Next::Lagged(l) => assert_eq!(l, Lagged { missed: Some(3), resume_at: 7 }),
            other => panic!("{other:?}"),
        }
        assert_eq!(ids(s.next(100).await), vec![7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn service_events_name_their_service_and_say_what_happened() {
        let b = bus(8);
        let mut s = b.subscribe(None);
        b.publish_service(EventKind::ReplicaUnhealthy, "web", serde_json::json!({"index": 2, "reason": "HTTP 500"}));
        b.publish(EventKind::JobCreated, Some("a"), None, None);
        let Next::Events(got) = s.next(10).await else { panic!("events") };
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2], "one sequence for every kind");
        let v: serde_json::Value = serde_json::from_str(got[0].json()).unwrap();
        assert_eq!((v["kind"].as_str(), v["service"].as_str(), v["detail"]["index"].as_u64()), (Some("replica.unhealthy"), Some("web"), Some(2)));
        assert!(v.get("job").is_none() && v.get("run").is_none(), "{v}");
        let v: serde_json::Value = serde_json::from_str(got[1].json()).unwrap();
        assert!(v.get("service").is_none() && v.get("detail").is_none(), "a job event is as before: {v}");
        assert!(EventKind::ALL.iter().all(|k| serde_json::to_value(k).unwrap().as_str() == Some(k.as_str())), "names agree");
    }

    #[tokio::test]
    async fn closing_ends_waiting_subscriptions() {
        let b = bus(4);
        let mut s = b.subscribe(None);
        let waiting = tokio::spawn(async move { matches!(s.next(10).await, Next::Closed) });
        tokio::task::yield_now().await;
        b.close();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn ids_of_a_later_server_start_are_larger() {
        let b = bus(4);
        b.start_epoch(3);
        b.publish(EventKind::AgentJoined, None, Some("a1"), None);
        assert_eq!(b.latest(), 3 << 32);
        // A client that saw id 40 from an earlier start missed everything since.
        match b.subscribe(Some(40)).next(10).await {
            Next::Lagged(l) => assert_eq!(l, Lagged { missed: None, resume_at: 3 << 32 }),
            other => panic!("{other:?}"),
        }
    }

    /// A run record as the scheduler writes it.
    fn run(state: &str, attempt: u32, started: bool, retry: bool) -> Run {
        let mut v = serde_json::json!({"id": 7, "job": "j", "scheduled_at": "2026-06-01T00:00:00Z", "trigger": "manual",
            "state": state, "attempt": attempt, "created_at": "2026-06-01T00:00:00Z"});
        if started {
            v["started_at"] = "2026-06-01T00:00:01Z".into();
        }
        if retry {
            v["retry_at"] = "2026-06-01T00:00:05Z".into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn a_start_merged_into_a_retry_or_an_end_is_announced_once() {
        let b = bus(64);
        let mut s = b.subscribe(None);
        let mut a = RunAnnouncer::default();
        // Attempt 1 started and failed in one batch; the retry's record is written twice while it waits.
        a.announce(&b, vec![run("starting", 1, false, false), run("pending", 2, true, true)]);
        a.announce(&b, vec![run("pending", 2, true, true)]);
        // Attempt 2 reports its start, then fails for good.
        a.announce(&b, vec![run("starting", 2, false, false), run("running", 2, true, false)]);
        a.announce(&b, vec![run("failed", 2, true, false)]);
        let Next::Events(events) = s.next(100).await else { panic!("events") };
        let seen: Vec<(&str, u32)> = events.iter().map(|e| (e.kind.as_str(), e.run.as_ref().unwrap().attempt)).collect();
        assert_eq!(
            seen,
            [("run.placed", 1), ("run.started", 1), ("run.retried", 2), ("run.retried", 2), ("run.placed", 2), ("run.started", 2), ("run.finished", 2)]
        );
        let started = &events[1].run.as_ref().unwrap();
        assert_eq!((started.state, started.retry_at), (RunState::Running, None));
        // A retry of an attempt that never started (lost before it began) announces no start.
        a.announce(&b, vec![run("pending", 3, false, true)]);
        let Next::Events(events) = s.next(100).await else { panic!("events") };
        assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["run.retried"]);
    }
}
