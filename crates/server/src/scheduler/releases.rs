//! Staged releases inside the scheduler: a service's replicas moved to a new spec in stages, one
//! replica step at a time, read from and acted on through the replica controller
//! (`services.rs`). The stages and the request are in `tug_core::release`.
//!
//! One replica's step: it is pulled out (not ready: see `ReplicaView::ready`; with a `pull_out`
//! hook, the load balancer is told and the replica stopped once it answers), stopped, started
//! again on the new spec at the same index, and once healthy pulled back in (with a `pull_in`
//! hook, once the load balancer answers). A hook that fails or does not answer within 10 s fails
//! the release, saying which replica and why.
//!
//! | state (not braked)   | when nothing is in progress                               |
//! |----------------------|-----------------------------------------------------------|
//! | `pending`            | → `smoking` (→ `rolling_out` when `smoke` is 0)            |
//! | `smoking`            | the next smoke replica steps; all done → `baking`          |
//! | `baking`             | after `bake` → `rolling_out`                               |
//! | `rolling_out`        | the next `batch` replicas step; none left → `succeeded`    |
//! | `revoking`           | the next `batch` of replaced replicas step back; → `revoked`|
//!
//! | event                                                    | action                          |
//! |----------------------------------------------------------|---------------------------------|
//! | a stepping replica's new attempt is healthy              | pulled back in; step done       |
//! | it exits, fails its check, or is not healthy in time     | `failed`, saying which and why  |
//! | a replaced replica exits or fails later (smoke, bake, rollout) | `failed`                  |
//! | `brake`                                                  | no new step starts until `resume`|
//! | `retry` (failed)                                         | the failed stage again          |
//! | `revoke` (any state but the ends)                        | `revoking`                      |
//! | `succeeded`                                              | the new spec is written to the store and becomes the service's |
//!
//! Every change of a release is written to the store (as a `ProgressRecord`), so a restarted
//! server, or a new leader, goes on with it where it was: the replicas it had moved run the new
//! spec, a braked release stays braked, a bake ends when it would have. It waits until the
//! replicas have been adopted from their agents (or started afresh, each on the spec its record
//! says), then refreshes what it knows of them; a replica that was in its step steps again
//! (unless it was started afresh, on the new spec: then it is awaited as in a step).

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tug_core::ServiceSpec;
use tug_core::release::{ReleasePlan, ReleaseRequest};
use tug_core::run::RunId;
use tug_store::{ProgressKind, ProgressRecord};

use super::Scheduler;
use super::services::ReplicaState;
use crate::stream::EventKind;
use crate::error::{Error, Result};

/// Releases kept for reading after they end.
const KEPT: usize = 200;

/// Where a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Accepted; its first step comes next.
    Pending,
    /// Replacing the smoke replicas, one at a time.
    Smoking,
    /// Waiting with the smoke replicas on the new spec.
    Baking,
    /// Replacing the other replicas, a batch at a time.
    RollingOut,
    /// Every replica runs the new spec, which is now the service's.
    Succeeded,
    /// A replica on the new spec failed; retry or revoke.
    Failed,
    /// Putting replaced replicas back on the previous spec.
    Revoking,
    /// Every replica runs the previous spec again.
    Revoked,
}

impl ReleaseState {
    /// The release is over: nothing more happens to it.
    pub fn ended(self) -> bool {
        matches!(self, ReleaseState::Succeeded | ReleaseState::Revoked)
    }
}

/// What an operator can do to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseAction {
    /// Start no more replica steps.
    Brake,
    /// Go on after a brake.
    Resume,
    /// Run the failed stage again.
    Retry,
    /// Put every replaced replica back on the previous spec.
    Revoke,
}

impl ReleaseAction {
    /// The action named in a URL.
    pub fn parse(s: &str) -> Option<ReleaseAction> {
        Some(match s {
            "brake" => ReleaseAction::Brake,
            "resume" => ReleaseAction::Resume,
            "retry" => ReleaseAction::Retry,
            "revoke" => ReleaseAction::Revoke,
            _ => return None,
        })
    }
}

/// One line of a release's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseEvent {
    /// When.
    pub at: Timestamp,
    /// What happened.
    pub what: String,
}

/// A replica being moved to (or back from) the new spec.
#[derive(Debug, Clone)]
struct Step {
    /// Its attempt when the step began: the new spec runs in later ones.
    old_attempt: u32,
    since: Instant,
    /// A load balancer's hook it waits on.
    hook: Option<Hook>,
}

/// The load balancer's hooks of a release (`pull_out`, `pull_in`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hooks {
    /// Told before a replica is stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_out: Option<String>,
    /// Told once a replaced replica is healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_in: Option<String>,
}

/// A hook call under way: which, and its answer once it has come (`Err`: why it failed).
#[derive(Debug, Clone)]
struct Hook {
    pull_in: bool,
    answer: std::sync::Arc<std::sync::Mutex<Option<std::result::Result<(), HookError>>>>,
}

/// Why a load balancer's hook failed; the release's failure quotes it.
#[derive(Debug, thiserror::Error)]
enum HookError {
    /// The hook answered, but not 2xx.
    #[error("{url} answered {status} (a hook answers 2xx once done)")]
    Status { url: String, status: reqwest::StatusCode },
    /// The hook could not be reached, or did not answer within 10 s.
    #[error("{url}: {source}")]
    Call {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// No HTTP client could be built (the host's TLS roots).
    #[error("no HTTP client to call hooks with: {0}")]
    Client(String),
}

/// How long a load balancer's hook may take to answer.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Calls `url` with `body` (POST, JSON) on a task of its own; its answer lands in the returned
/// hook.
fn call_hook(url: &str, body: serde_json::Value, pull_in: bool) -> Hook {
    static HTTP: std::sync::OnceLock<std::result::Result<reqwest::Client, String>> = std::sync::OnceLock::new();
    let hook = Hook { pull_in, answer: Default::default() };
    let (answer, url) = (hook.answer.clone(), url.to_owned());
    tokio::spawn(async move {
        let http = HTTP.get_or_init(|| {
            let tls = tug_tls::ClientTls::new(None, None).and_then(|t| t.for_http()).map_err(|e| e.to_string())?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(HOOK_TIMEOUT)
                .user_agent(concat!("tugboat/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        });
        let result = match http {
            Ok(http) => match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(HookError::Status { url, status: r.status() }),
                Err(source) => Err(HookError::Call { url, source }),
            },
            Err(e) => Err(HookError::Client(e.clone())),
        };
        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    });
    hook
}

/// One release.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// `rel-N`.
    pub id: String,
    /// The service.
    pub service: String,
    /// Where it is.
    pub state: ReleaseState,
    /// Braked: no replica starts its step until resumed.
    pub braked: bool,
    /// How it rolls out.
    pub plan: ReleasePlan,
    /// The load balancer's hooks.
    pub hooks: Hooks,
    /// What failed, when it failed: which replica and why.
    pub failure: Option<String>,
    /// The spec before.
    pub from: ServiceSpec,
    /// The spec it releases.
    pub to: ServiceSpec,
    /// When it was asked for.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// What happened, oldest first.
    pub history: Vec<ReleaseEvent>,
    /// Replicas in their step, by index.
    #[serde(skip)]
    steps: BTreeMap<u32, Step>,
    /// Replicas whose step is done, with the attempt that passed.
    #[serde(skip)]
    done: BTreeMap<u32, u32>,
    #[serde(skip)]
    bake_until: Option<Instant>,
    /// The stage it failed in, which a retry runs again.
    #[serde(skip)]
    failed_in: Option<ReleaseState>,
    #[serde(skip)]
    started: Instant,
    /// Loaded from the store at start-up and not yet caught up with its replicas.
    #[serde(skip)]
    restored: Option<Restored>,
    /// A hash of what the record last written to the store holds (a write happens when it
    /// changes).
    #[serde(skip)]
    saved: Option<u64>,
    /// The state and brake last published on the event stream.
    #[serde(skip)]
    announced: (ReleaseState, bool),
}

/// What a release loaded at start-up still has to do once its replicas are known again.
#[derive(Debug, Clone)]
struct Restored {
    /// Replicas that were in their step, with the run id each had when loaded: an agent that
    /// reports the replica gives it back its old run id.
    stepping: Vec<(u32, RunId)>,
    /// Replicas whose step was done.
    done: Vec<u32>,
}

/// A release as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    id: String,
    service: String,
    state: ReleaseState,
    braked: bool,
    plan: ReleasePlan,
    hooks: Hooks,
    failure: Option<String>,
    from: ServiceSpec,
    to: ServiceSpec,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
    history: Vec<ReleaseEvent>,
    /// Replicas whose attempts run the new spec.
    on_release: Vec<u32>,
    /// Replicas in their step.
    stepping: Vec<u32>,
    /// Replicas whose step is done.
    done: Vec<u32>,
    /// When the bake ends (baking).
    bake_until: Option<Timestamp>,
    failed_in: Option<ReleaseState>,
}

/// The number in `rel-N`.
fn release_number(id: &str) -> Option<u64> {
    id.strip_prefix("rel-")?.parse().ok()
}

/// A release with its progress now.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    /// The release.
    #[serde(flatten)]
    pub release: Release,
    /// The service's replicas now.
    pub replicas: u32,
    /// Replicas on the new spec (or, revoking, still on it).
    pub on_release: u32,
    /// Replicas whose step is done in this stage's direction.
    pub done: u32,
    /// Replicas in their step now.
    pub in_progress: Vec<u32>,
    /// Milliseconds of bake left (baking only).
    pub bake_left_ms: Option<u64>,
    /// Milliseconds from the call to its end (or to now).
    pub elapsed_ms: u64,
}

/// Every recent release.
#[derive(Default)]
pub(super) struct Releases {
    list: VecDeque<Release>,
    next: u64,
}

impl Releases {
    /// Notes in a release's history that an update of its service's spec started it.
    pub(super) fn note_update(&mut self, id: &str, now: Timestamp) {
        if let Some(r) = self.get_mut(id) {
            r.note(now, "an update of the service's spec: its replicas move to it batch by batch, each healthy before the next".into());
        }
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Release> {
        self.list.iter_mut().find(|r| r.id == id)
    }

    /// The service's release that has not ended, if any.
    pub(super) fn active(&self, service: &str) -> Option<&Release> {
        self.list.iter().find(|r| r.service == service && !r.state.ended())
    }

    /// Whether any release may move on (or has to catch up after a restart).
    pub(super) fn moving(&self) -> bool {
        self.list.iter().any(|r| (!r.state.ended() && r.state != ReleaseState::Failed) || r.restored.is_some())
    }

    /// The earliest instant a release needs looking at: a bake over, a step timing out.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        for r in self.list.iter().filter(|r| !r.state.ended() && r.state != ReleaseState::Failed) {
            // A hook under way is looked at again soon.
            let soon = r.steps.values().any(|s| s.hook.is_some()).then(|| Instant::now() + std::time::Duration::from_millis(50));
            let steps = r.steps.values().map(|s| s.since + r.plan.health_timeout.as_std()).chain(soon);
            let bake = r.bake_until.filter(|_| r.state == ReleaseState::Baking && !r.braked);
            for t in steps.chain(bake) {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        }
        at
    }
}

impl Release {
    /// The stage a failed release failed in (which a retry runs again).
    pub fn failed_in(&self) -> Option<ReleaseState> {
        self.failed_in.filter(|_| self.state == ReleaseState::Failed)
    }

    fn note(&mut self, now: Timestamp, what: String) {
        tracing::info!(release = %self.id, service = %self.service, "{what}");
        self.history.push(ReleaseEvent { at: now, what });
    }
}

impl Scheduler {
    /// Starts a release of service `name`.
    pub(super) async fn start_release(&mut self, name: &str, req: ReleaseRequest) -> Result<ReleaseView> {
        self.begin_release(name, req, false).await
    }

    /// Replaces every replica of a service on its current spec, as a release with no smoke and
    /// no bake: `batch` replicas at a time, each healthy before the next batch.
    pub(super) async fn restart_service(
        &mut self,
        name: &str,
        batch: Option<tug_core::release::Batch>,
        health_timeout: Option<tug_core::Duration>,
    ) -> Result<ReleaseView> {
        let req = ReleaseRequest { smoke: Some(0), bake: Some(tug_core::Duration::ZERO), batch, health_timeout, ..Default::default() };
        self.begin_release(name, req, true).await
    }

    /// Starts a release; a `restart` may keep the spec as it is.
    async fn begin_release(&mut self, name: &str, req: ReleaseRequest, restart: bool) -> Result<ReleaseView> {
        let record = self.store.get_service(name).await?;
        if let Some(r) = self.releases.active(name) {
            return Err(Error::Conflict(format!(
                "release {} of service {name:?} is {}; wait for it, or revoke it (tug release revoke {}) before starting another",
                r.id,
                state_words(r),
                r.id
            )));
        }
        let hooks = Hooks { pull_out: req.pull_out.clone(), pull_in: req.pull_in.clone() };
        let (target, plan) = if restart { req.plan_restart(&record.spec)? } else { req.plan(&record.spec)? };
        let now = self.clock.now();
        self.releases.next += 1;
        let mut release = Release {
            id: format!("rel-{}", self.releases.next),
            service: name.to_string(),
            state: ReleaseState::Pending,
            braked: false,
            plan,
            hooks,
            failure: None,
            from: record.spec,
            to: target.spec.clone(),
            started_at: now,
            finished_at: None,
            history: Vec::new(),
            steps: BTreeMap::new(),
            done: BTreeMap::new(),
            bake_until: None,
            failed_in: None,
            started: Instant::now(),
            restored: None,
            saved: None,
            announced: (ReleaseState::Pending, false),
        };
        if restart {
            release.note(now, format!("a restart: every replica is replaced on the same spec, batch {}, each healthy before the next batch", plan.batch));
        } else {
            release.note(now, format!("started: smoke {}, bake {}, batch {}", plan.smoke, plan.bake, plan.batch));
        }
        let id = release.id.clone();
        self.releases.list.push_back(release);
        if self.releases.list.len() > KEPT
            && let Some(i) = self.releases.list.iter().position(|r| r.state.ended())
            && let Some(old) = self.releases.list.remove(i)
            && let Some(n) = release_number(&old.id)
            && let Err(e) = self.store.delete_progress(ProgressKind::Release, &[n]).await
        {
            tracing::warn!(release = %old.id, error = %e, "could not delete an old release from the store");
        }
        self.replicas.set_target(name, Some(target));
        let detail = serde_json::json!({
            "release": id, "state": ReleaseState::Pending, "smoke": plan.smoke, "bake": plan.bake, "batch": plan.batch,
        });
        self.announce_service(EventKind::ReleaseStarted, name, detail);
        self.save_release(&id).await;
        self.drive_releases().await;
        Ok(self.release_view(&id).expect("the release just started"))
    }

    /// Brakes, resumes, retries or revokes a release.
    pub(super) async fn release_action(&mut self, id: &str, action: ReleaseAction) -> Result<ReleaseView> {
        let now = self.clock.now();
        let Some(r) = self.releases.get_mut(id) else {
            return Err(Error::NotFound(format!("no release {id:?}; see `tug release list SERVICE`")));
        };
        let refuse = |r: &Release, what: &str| Err(Error::Conflict(format!("release {} is {}: {what}", r.id, state_words(r))));
        if r.state.ended() {
            return refuse(r, "it is over; start a new release to change the service again");
        }
        if r.restored.is_some() && matches!(action, ReleaseAction::Retry | ReleaseAction::Revoke) {
            if !self.catch_up(id).await {
                let r = self.releases.get_mut(id).expect("found above");
                return refuse(r, "the server has just restarted and waits for the agents to report its replicas; try again in a few seconds");
            }
        }
        let Some(r) = self.releases.get_mut(id) else { return Err(Error::NotFound(format!("no release {id:?}"))) };
        match action {
            ReleaseAction::Brake => {
                if r.braked {
                    return refuse(r, "it is braked already");
                }
                r.braked = true;
                r.note(now, "braked".into());
            }
            ReleaseAction::Resume => {
                if !r.braked {
                    return refuse(r, "it is not braked; nothing to resume");
                }
                r.braked = false;
                r.note(now, "resumed".into());
            }
            ReleaseAction::Retry => {
                let Some(stage) = r.failed_in.filter(|_| r.state == ReleaseState::Failed) else {
                    return refuse(r, "retry is for a failed release");
                };
                r.state = stage;
                r.failed_in = None;
                r.failure = None;
                r.braked = false;
                r.note(now, format!("retried: {} again", stage_words(stage)));
                let (service, indices) = (r.service.clone(), r.steps.keys().copied().collect::<Vec<_>>());
                // The replicas that failed (and those that were stepping) step again.
                let mut again = indices;
                for (&index, &attempt) in &r.done {
                    let fine = self
                        .replicas
                        .by_index(&service, index)
                        .is_some_and(|x| x.attempt == attempt && matches!(x.state, ReplicaState::Healthy | ReplicaState::Running));
                    if !fine {
                        again.push(index);
                    }
                }
                let r = self.releases.get_mut(id).expect("found above");
                for index in &again {
                    r.done.remove(index);
                    r.steps.remove(index);
                }
                let to_new = stage != ReleaseState::Revoking;
                for index in again {
                    self.step(id, index, to_new).await;
                }
            }
            ReleaseAction::Revoke => {
                if r.state == ReleaseState::Revoking {
                    return refuse(r, "it is being revoked already");
                }
                r.state = ReleaseState::Revoking;
                r.braked = false;
                r.failed_in = None;
                r.steps.clear();
                r.done.clear();
                r.note(now, "revoking: replaced replicas go back to the previous spec".into());
            }
        }
        self.announce_release(id);
        self.save_release(id).await;
        self.drive_releases().await;
        Ok(self.release_view(id).expect("found above"))
    }

    /// One release and its progress.
    pub(super) fn release_view(&self, id: &str) -> Option<ReleaseView> {
        let release = self.releases.list.iter().find(|r| r.id == id)?.clone();
        let indices = self.replicas.indices(&release.service);
        let on_release = match release.state {
            // The new spec is the current one now.
            ReleaseState::Succeeded => indices.len(),
            _ => indices.iter().filter(|&&i| self.replicas.by_index(&release.service, i).is_some_and(|r| r.release)).count(),
        };
        let bake_left_ms = release
            .bake_until
            .filter(|_| release.state == ReleaseState::Baking)
            .map(|t| u64::try_from(t.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX));
        let elapsed = match release.finished_at {
            Some(end) => end.duration_since(release.started_at).as_millis().max(0) as u64,
            None => u64::try_from(release.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let (done, in_progress) = match &release.restored {
            Some(x) => (x.done.len() as u32, x.stepping.iter().map(|s| s.0).collect()),
            None => (release.done.len() as u32, release.steps.keys().copied().collect()),
        };
        Some(ReleaseView {
            replicas: indices.len() as u32,
            on_release: on_release as u32,
            done,
            in_progress,
            bake_left_ms,
            elapsed_ms: elapsed,
            release,
        })
    }

    /// A service's releases, newest first.
    pub(super) fn releases_of(&self, service: &str) -> Vec<ReleaseView> {
        let ids: Vec<String> = self.releases.list.iter().rev().filter(|r| r.service == service).map(|r| r.id.clone()).collect();
        ids.iter().filter_map(|id| self.release_view(id)).collect()
    }

    /// Moves every release on as far as it can go now.
    pub(super) async fn drive_releases(&mut self) {
        let ids: Vec<String> = self
            .releases
            .list
            .iter()
            .filter(|r| (!r.state.ended() && r.state != ReleaseState::Failed) || r.restored.is_some())
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            // A stage can end and the next begin in one go; a few rounds at most.
            for _ in 0..8 {
                let more = self.drive_release(&id).await;
                self.announce_release(&id);
                if !more {
                    break;
                }
            }
            self.save_release(&id).await;
        }
    }

    /// Publishes what changed in a release's state or brake since it was last published.
    fn announce_release(&mut self, id: &str) {
        let Some(r) = self.releases.get_mut(id) else { return };
        let (was, was_braked) = r.announced;
        let (state, braked) = (r.state, r.braked);
        if (was, was_braked) == (state, braked) {
            return;
        }
        r.announced = (state, braked);
        let kind = if was != state {
            match state {
                ReleaseState::Failed => EventKind::ReleaseFailed,
                ReleaseState::Succeeded => EventKind::ReleaseSucceeded,
                ReleaseState::Revoked => EventKind::ReleaseRevoked,
                _ if was == ReleaseState::Failed && state != ReleaseState::Revoking => EventKind::ReleaseRetried,
                _ => EventKind::ReleaseStage,
            }
        } else if braked {
            EventKind::ReleaseBraked
        } else {
            EventKind::ReleaseResumed
        };
        let reason = match state {
            ReleaseState::Failed => r.failure.clone(),
            ReleaseState::Revoked => r.history.last().map(|e| e.what.clone()),
            _ => None,
        };
        let detail = serde_json::json!({
            "release": r.id, "state": state, "braked": braked, "reason": reason, "failed_in": r.failed_in(),
        });
        let (service, to) = (r.service.clone(), r.to.replicas);
        self.announce_service(kind, &service, detail);
        if state == ReleaseState::Succeeded && was != state {
            let detail = serde_json::json!({"release": id, "replicas": to});
            self.announce_service(EventKind::ServiceChanged, &service, detail);
        }
    }

    /// Writes a release to the store if it changed since it was last written. A failed write is
    /// logged and tried again at the next change or round.
    async fn save_release(&mut self, id: &str) {
        let Some(r) = self.releases.list.iter().find(|r| r.id == id) else { return };
        let Some(n) = release_number(&r.id) else { return };
        let mut on_release = Vec::new();
        if r.state != ReleaseState::Succeeded {
            for i in self.replicas.indices(&r.service) {
                if self.replicas.by_index(&r.service, i).is_some_and(|x| x.release) {
                    on_release.push(i);
                }
            }
        }
        // Until it has caught up after a restart, what it loaded is what it knows.
        let (stepping, done): (Vec<u32>, Vec<u32>) = match &r.restored {
            Some(x) => (x.stepping.iter().map(|s| s.0).collect(), x.done.clone()),
            None => (r.steps.keys().copied().collect(), r.done.keys().copied().collect()),
        };
        // What a write would change, cheaply: most rounds change nothing, and a release's record
        // (two specs and its history) is not worth making to find that out.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (r.state, r.braked, r.failed_in, r.history.len(), r.finished_at, &on_release, &stepping, &done).hash(&mut h);
            h.finish()
        };
        if r.saved == Some(key) {
            return;
        }
        let bake_until = r.bake_until.filter(|_| r.state == ReleaseState::Baking).map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            self.clock.now() + jiff::SignedDuration::try_from(left).unwrap_or_default()
        });
        let saved = Saved {
            id: r.id.clone(),
            service: r.service.clone(),
            state: r.state,
            braked: r.braked,
            plan: r.plan,
            hooks: r.hooks.clone(),
            failure: r.failure.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            history: r.history.clone(),
            on_release,
            stepping,
            done,
            bake_until,
            failed_in: r.failed_in,
        };
        let Ok(value) = serde_json::to_value(&saved) else { return };
        let record = ProgressRecord { kind: ProgressKind::Release, id: n, service: r.service.clone(), ended: r.state.ended(), state: value };
        match self.store.put_progress(&record).await {
            Ok(()) => {
                if let Some(r) = self.releases.get_mut(id) {
                    r.saved = Some(key);
                }
            }
            Err(e) => tracing::error!(release = %id, error = %e, "could not write the release to the store; trying again at its next change"),
        }
    }

    /// Loads the stored releases at start-up (after the services): ended ones for reading, the
    /// others to go on with once their replicas are known again.
    pub(super) async fn load_releases(&mut self) -> Result<()> {
        let now = self.clock.now();
        let mut loaded = 0;
        for record in self.store.list_progress(ProgressKind::Release).await? {
            let saved: Saved = match serde_json::from_value(record.state) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(release = record.id, error = %e, "stored release cannot be read; left out");
                    continue;
                }
            };
            self.releases.next = self.releases.next.max(record.id);
            let ago = now.duration_since(saved.started_at).try_into().unwrap_or_default();
            let started = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            let bake_until = saved.bake_until.map(|t| {
                let left: std::time::Duration = t.duration_since(now).try_into().unwrap_or_default();
                Instant::now() + left
            });
            let mut r = Release {
                id: saved.id,
                service: saved.service,
                state: saved.state,
                braked: saved.braked,
                plan: saved.plan,
                hooks: saved.hooks,
                failure: saved.failure,
                from: saved.from,
                to: saved.to.clone(),
                started_at: saved.started_at,
                finished_at: saved.finished_at,
                history: saved.history,
                steps: BTreeMap::new(),
                done: BTreeMap::new(),
                bake_until,
                failed_in: saved.failed_in,
                started,
                restored: None,
                saved: None,
                announced: (saved.state, saved.braked),
            };
            if !r.state.ended() {
                match saved.to.validate() {
                    Ok(target) => {
                        self.replicas.set_target(&r.service, Some(target));
                        let mut stepping = Vec::new();
                        for &i in &saved.on_release {
                            if let Some(x) = self.replicas.by_index_mut(&r.service, i) {
                                x.release = true;
                            }
                        }
                        for &i in &saved.stepping {
                            if let Some(x) = self.replicas.by_index_mut(&r.service, i) {
                                x.pulled_out = true;
                                stepping.push((i, x.run_id));
                            }
                        }
                        r.restored = Some(Restored { stepping, done: saved.done });
                        r.note(now, "picked up by a server that started (a restart, or a new leader): going on once its replicas are known again".into());
                        loaded += 1;
                    }
                    Err(e) => {
                        r.failed_in = Some(r.state).filter(|s| *s != ReleaseState::Failed).or(r.failed_in);
                        r.state = ReleaseState::Failed;
                        let why = format!("its new spec is no longer valid: {e}");
                        r.note(now, format!("failed: {why}"));
                        r.failure = Some(why);
                    }
                }
            }
            self.releases.list.push_back(r);
        }
        if loaded > 0 {
            tracing::info!(releases = loaded, "releases in progress loaded; they go on once their replicas are known");
        }
        Ok(())
    }

    /// A release loaded at start-up catches up with its replicas once they have been adopted
    /// or started afresh: the attempts of the replicas it had moved are theirs now, and those
    /// that were in their step step again (one started afresh on the new spec is awaited).
    /// False while the replicas are still waiting for their agents.
    async fn catch_up(&mut self, id: &str) -> bool {
        if self.replicas.adopting() {
            return false;
        }
        let Some(r) = self.releases.get_mut(id) else { return false };
        let Some(restored) = r.restored.take() else { return true };
        let (service, to_new) = (r.service.clone(), r.state != ReleaseState::Revoking);
        for i in restored.done {
            if let Some(x) = self.replicas.by_index(&service, i) {
                let attempt = x.attempt;
                self.releases.get_mut(id).expect("found above").done.insert(i, attempt);
            }
        }
        let mut again = Vec::new();
        for (i, loaded_run) in restored.stepping {
            let Some(x) = self.replicas.by_index(&service, i) else { continue };
            if x.run_id == loaded_run && x.release == to_new {
                // Started afresh, on the spec its step puts it on: awaited as in its step.
                let step = Step { old_attempt: 0, since: Instant::now(), hook: None };
                self.releases.get_mut(id).expect("found above").steps.insert(i, step);
            } else {
                again.push(i);
            }
        }
        let now = self.clock.now();
        let r = self.releases.get_mut(id).expect("found above");
        r.note(now, format!("carrying on: {} replica(s) done, {} in their step", r.done.len(), r.steps.len() + again.len()));
        if r.state == ReleaseState::Failed {
            // A retry steps them again.
            for i in again {
                r.steps.insert(i, Step { old_attempt: 0, since: Instant::now(), hook: None });
            }
            return true;
        }
        for i in again {
            self.step(id, i, to_new).await;
        }
        true
    }

    /// One round for one release; true when its stage moved on (worth another round).
    async fn drive_release(&mut self, id: &str) -> bool {
        let now = self.clock.now();
        let mono = Instant::now();
        let Some(r) = self.releases.get_mut(id) else { return false };
        let service = r.service.clone();
        if r.restored.is_some() && !self.catch_up(id).await {
            return false;
        }
        let r = self.releases.get_mut(id).expect("found above");
        if r.state.ended() || r.state == ReleaseState::Failed {
            return false;
        }
        if self.replicas.indices(&service).is_empty() && self.store.get_service(&service).await.is_err() {
            let r = self.releases.get_mut(id).expect("found above");
            r.state = ReleaseState::Revoked;
            r.finished_at = Some(now);
            r.note(now, "the service was deleted".into());
            return false;
        }
        let r = self.releases.get_mut(id).expect("found above");
        let revoking = r.state == ReleaseState::Revoking;
        let timeout = r.plan.health_timeout;
        // Steps in progress: done once healthy on their new attempt; failed if that attempt
        // ended, or is not healthy in time.
        let mut failure = None;
        let steps: Vec<(u32, Step)> = r.steps.iter().map(|(i, s)| (*i, s.clone())).collect();
        let hooks = r.hooks.clone();
        let mut finished = Vec::new();
        // Replicas the load balancer has let go of (stopped now), and healthy ones it is asked
        // to take back.
        let (mut pulled_out, mut pull_in) = (Vec::new(), Vec::new());
        for (index, step) in steps {
            let Some(x) = self.replicas.by_index(&service, index) else {
                finished.push((index, None)); // scaled in meanwhile
                continue;
            };
            if let Some(h) = &step.hook {
                let answer = h.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
                let which = if h.pull_in { "pull_in" } else { "pull_out" };
                match answer {
                    None => {}
                    Some(Err(why)) => {
                        failure.get_or_insert_with(|| format!("the load balancer's {which} hook for replica {index} failed: {why}"));
                    }
                    Some(Ok(())) if h.pull_in => finished.push((index, Some(x.attempt))),
                    Some(Ok(())) => pulled_out.push((index, x.run_id)),
                }
                continue;
            }
            let new = x.attempt > step.old_attempt && !x.replacing;
            if new && x.state == ReplicaState::Healthy && hooks.pull_in.is_some() {
                pull_in.push(index);
            } else if new && x.state == ReplicaState::Healthy {
                finished.push((index, Some(x.attempt)));
            } else if new && matches!(x.state, ReplicaState::Restarting | ReplicaState::Stopping | ReplicaState::Failed) {
                failure.get_or_insert_with(|| format!("replica {index} failed on the new spec: {}", x.reason.as_deref().unwrap_or("it stopped")));
            } else if mono.duration_since(step.since) > timeout.as_std() {
                failure.get_or_insert_with(|| {
                    let why = x.reason.as_deref().map(|w| format!("; last problem: {w}")).unwrap_or_default();
                    format!("replica {index} was not healthy within {timeout} (it is {}){why}", state_name(x.state))
                });
            }
        }
        // Replicas already moved must stay up on the new spec.
        if !revoking && failure.is_none() {
            for (&index, &attempt) in &r.done {
                let Some(x) = self.replicas.by_index(&service, index) else { continue };
                if x.attempt != attempt || matches!(x.state, ReplicaState::Restarting | ReplicaState::Stopping | ReplicaState::Failed) {
                    failure = Some(format!(
                        "replica {index} failed on the new spec after it was healthy: {}",
                        x.reason.as_deref().unwrap_or("it stopped")
                    ));
                    break;
                }
            }
        }
        for (index, run_id) in pulled_out {
            if let Some(step) = self.releases.get_mut(id).and_then(|r| r.steps.get_mut(&index)) {
                step.hook = None;
                step.since = Instant::now();
            }
            let why = format!("replaced by release {id}");
            self.stop_replica(run_id, false, &why).await;
        }
        for index in pull_in {
            let (Some(url), Some(body)) = (hooks.pull_in.clone(), self.hook_body(id, index, "pull_in").await) else { continue };
            let r = self.releases.get_mut(id).expect("found above");
            if let Some(step) = r.steps.get_mut(&index) {
                step.hook = Some(call_hook(&url, body, true));
            }
            r.note(now, format!("replica {index} is healthy; asked the load balancer to pull it back in"));
        }
        for (index, attempt) in finished {
            if let Some(x) = self.replicas.by_index_mut(&service, index) {
                x.pulled_out = false;
            }
            let r = self.releases.get_mut(id).expect("found above");
            r.steps.remove(&index);
            if let Some(a) = attempt {
                r.done.insert(index, a);
                let to = if revoking { "back on the previous spec" } else { "on the new spec" };
                r.note(now, format!("replica {index} is healthy {to} and back in service"));
            }
        }
        let r = self.releases.get_mut(id).expect("found above");
        if let Some(why) = failure {
            r.failed_in = Some(r.state);
            r.state = ReleaseState::Failed;
            r.note(now, format!("failed: {why}"));
            r.failure = Some(why);
            return false;
        }
        if r.braked || !r.steps.is_empty() {
            return false;
        }
        match r.state {
            ReleaseState::Pending => {
                r.state = if r.plan.smoke == 0 { ReleaseState::RollingOut } else { ReleaseState::Smoking };
                let stage = stage_words(r.state);
                r.note(now, stage.into());
                true
            }
            ReleaseState::Smoking => {
                if (r.done.len() as u32) < r.plan.smoke {
                    let next = self.next_indices(id, 1, true);
                    if let Some(&index) = next.first() {
                        self.step(id, index, true).await;
                        return false;
                    }
                }
                let r = self.releases.get_mut(id).expect("found above");
                r.state = ReleaseState::Baking;
                r.bake_until = Some(mono + r.plan.bake.as_std());
                let bake = r.plan.bake;
                r.note(now, format!("baking for {bake}"));
                true
            }
            ReleaseState::Baking => {
                if r.bake_until.is_some_and(|t| t > mono) {
                    return false;
                }
                r.state = ReleaseState::RollingOut;
                r.note(now, "rolling out".into());
                true
            }
            ReleaseState::RollingOut | ReleaseState::Revoking => {
                let batch = r.plan.batch.size(self.replicas.indices(&service).len() as u32);
                let next = self.next_indices(id, batch, !revoking);
                if next.is_empty() {
                    self.end_release(id).await;
                    return false;
                }
                for index in next {
                    self.step(id, index, !revoking).await;
                }
                false
            }
            ReleaseState::Succeeded | ReleaseState::Failed | ReleaseState::Revoked => false,
        }
    }

    /// Up to `n` replicas, lowest index first, not yet on the spec a step to the new spec
    /// (`to_new`) or back would put them on.
    fn next_indices(&self, id: &str, n: u32, to_new: bool) -> Vec<u32> {
        let Some(r) = self.releases.list.iter().find(|r| r.id == id) else { return Vec::new() };
        self.replicas
            .indices(&r.service)
            .into_iter()
            .filter(|&i| self.replicas.by_index(&r.service, i).is_some_and(|x| x.release != to_new))
            .take(n as usize)
            .collect()
    }

    /// Starts one replica's step: pulled out, stopped, and started again on the new spec
    /// (`to_new`) or the previous one.
    async fn step(&mut self, id: &str, index: u32, to_new: bool) {
        let Some(r) = self.releases.get_mut(id) else { return };
        let service = r.service.clone();
        let Some(x) = self.replicas.by_index_mut(&service, index) else { return };
        x.pulled_out = true;
        x.release = to_new;
        x.replacing = true;
        x.start_failures = 0;
        let (run_id, old_attempt) = (x.run_id, x.attempt);
        let pull_out = self.releases.get_mut(id).and_then(|r| r.hooks.pull_out.clone());
        let hook = match pull_out {
            Some(url) => self.hook_body(id, index, "pull_out").await.map(|body| call_hook(&url, body, false)),
            None => None,
        };
        let detail = serde_json::json!({"index": index, "release": id, "to": if to_new { "new" } else { "previous" }, "attempt": old_attempt});
        self.announce_service(EventKind::ReplicaReplaced, &service, detail);
        let r = self.releases.get_mut(id).expect("found above");
        let to = if to_new { "the new spec" } else { "the previous spec" };
        let now = self.clock.now();
        let waits = hook.is_some();
        r.steps.insert(index, Step { old_attempt, since: Instant::now(), hook });
        if waits {
            // Stopped once the load balancer has let go of it (drive_release).
            r.note(now, format!("replica {index}: asked the load balancer to pull it out, to be replaced with {to}"));
            return;
        }
        r.note(now, format!("replica {index} pulled out, replaced with {to}"));
        let why = format!("replaced by release {id}");
        self.stop_replica(run_id, false, &why).await;
    }

    /// What a load balancer's hook is told about replica `index` of release `id`: the event
    /// (`pull_out`, `pull_in`), the replica, its agent, its address when it has one from a pool,
    /// and the port its health check probes.
    async fn hook_body(&self, id: &str, index: u32, event: &str) -> Option<serde_json::Value> {
        let r = self.releases.list.iter().find(|r| r.id == id)?;
        let x = self.replicas.by_index(&r.service, index)?;
        let spec = if x.release { &r.to } else { &r.from };
        let instance = tug_net::Identity::Replica { service: r.service.clone(), index }.claim_name();
        let mut address = None;
        if let Some(net) = &spec.network
            && let Ok(claims) = self.store.list_claims(Some(&net.pool)).await
        {
            address = claims.into_iter().find(|c| c.name == instance).map(|c| c.ip.to_string());
        }
        let port = spec.health.as_ref().and_then(|h| h.port);
        Some(serde_json::json!({
            "event": event, "release": id, "service": r.service, "index": index, "instance": instance,
            "agent": x.agent.map(|i| self.agents.name(i).to_string()), "address": address, "port": port,
        }))
    }

    /// A release with nothing left to step: the new spec becomes the service's (durably), or
    /// the revoke is over.
    async fn end_release(&mut self, id: &str) {
        let now = self.clock.now();
        let Some(r) = self.releases.get_mut(id) else { return };
        let service = r.service.clone();
        if r.state == ReleaseState::Revoking {
            r.state = ReleaseState::Revoked;
            r.finished_at = Some(now);
            r.note(now, "revoked: every replica runs the previous spec".into());
            self.replicas.set_target(&service, None);
            return;
        }
        // The count may have changed by a scale while the release went on: keep today's.
        let mut to = r.to.clone();
        let written = match self.store.get_service(&service).await {
            Ok(record) => {
                to.replicas = record.spec.replicas;
                match to.validate() {
                    Ok(target) => self.store.update_service(&target.spec, now).await.map(|_| target).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let r = self.releases.get_mut(id).expect("found above");
        match written {
            Ok(target) => {
                r.state = ReleaseState::Succeeded;
                r.finished_at = Some(now);
                let what = if r.from == r.to { "succeeded: every replica was replaced" } else { "succeeded: the new spec is the service's" };
                r.note(now, what.into());
                self.replicas.promote(&service, target);
            }
            Err(e) => {
                let why = format!("writing the new spec failed: {e}");
                r.failed_in = Some(ReleaseState::RollingOut);
                r.state = ReleaseState::Failed;
                r.note(now, format!("failed: {why}"));
                r.failure = Some(why);
            }
        }
    }
}

fn stage_words(s: ReleaseState) -> &'static str {
    match s {
        ReleaseState::Pending => "pending",
        ReleaseState::Smoking => "smoke: replacing replicas one by one",
        ReleaseState::Baking => "baking",
        ReleaseState::RollingOut => "rolling out",
        ReleaseState::Succeeded => "succeeded",
        ReleaseState::Failed => "failed",
        ReleaseState::Revoking => "revoking",
        ReleaseState::Revoked => "revoked",
    }
}

fn state_words(r: &Release) -> String {
    let s = serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    if r.braked { format!("{s} (braked)") } else { s }
}

fn state_name(s: ReplicaState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v["state"].as_str().map(str::to_owned)).unwrap_or_default()
}
