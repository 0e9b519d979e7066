//! Job commands: create, update, delete, pause/resume, run now, kill. Each validates, writes the
//! store (durable before the reply), then updates the in-memory state.

use tug_core::dag;
use tug_core::job::{ConcurrencyPolicy, Job};
use tug_core::protocol::KillReason;
use tug_core::run::{Run, RunId, RunState, Trigger};
use tug_core::JobSpec;
use tug_store::{FireBatch, JobRecord};

use super::fire::Decisions;
use super::timers::Slot;
use super::{Entry, Scheduler};
use crate::error::{Error, Result};

impl Scheduler {
    /// Checks the spec, its parents and the graph.
    fn check(&self, spec: JobSpec) -> Result<Job> {
        let job = spec.validate()?;
        if let Some(schedule) = &job.schedule {
            self.check_interval(&job.spec.name, schedule)?;
        }
        for p in &job.spec.parents {
            if !self.index.contains_key(p) {
                return Err(Error::UnknownParent { job: job.spec.name.clone(), parent: p.clone() });
            }
        }
        dag::check_parents(&job.spec.name, &job.spec.parents, |n| {
            self.entry(n).map(|e| e.job.spec.parents.as_slice())
        })?;
        Ok(job)
    }

    /// Refuses a schedule whose next fires come closer together than `min_interval`. The first
    /// 64 fires from now show it for every kind: `@every` and ISO periods are even, and a cron
    /// expression's shortest gap recurs within its smallest field's cycle.
    fn check_interval(&self, job: &str, schedule: &tug_core::schedule::Schedule) -> Result<()> {
        let min = self.config.min_interval;
        if min.is_zero() {
            return Ok(());
        }
        let mut prev: Option<jiff::Timestamp> = None;
        for fire in schedule.iter_after(self.clock.now()).take(64) {
            if let Some(p) = prev {
                let gap = fire.at.duration_since(p).unsigned_abs();
                if gap < min {
                    return Err(Error::TooFrequent {
                        job: job.to_owned(),
                        schedule: schedule.expr().to_owned(),
                        gap,
                        min,
                    });
                }
            }
            prev = Some(fire.at);
        }
        Ok(())
    }

    /// Adds a loaded or created job to the tables and arms its timer.
    pub(super) fn insert_entry(&mut self, entry: Entry) -> Slot {
        let name = entry.job.spec.name.clone();
        for p in &entry.job.spec.parents {
            self.children.entry(p.clone()).or_default().push(name.clone());
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as Slot
            }
        };
        self.index.insert(name, slot);
        self.metrics.jobs.set(self.index.len() as i64);
        self.arm(slot);
        slot
    }

    fn unlink_parents(&mut self, name: &str, parents: &[String]) {
        for p in parents {
            if let Some(c) = self.children.get_mut(p) {
                c.retain(|x| x != name);
                if c.is_empty() {
                    self.children.remove(p);
                }
            }
        }
    }

    pub(super) async fn create_job(&mut self, spec: JobSpec) -> Result<JobRecord> {
        if self.index.contains_key(&spec.name) {
            return Err(tug_store::StoreError::JobExists(spec.name).into());
        }
        let job = self.check(spec)?;
        let now = self.clock.now();
        let record = self.store.create_job(&job.spec, now).await?;
        let mut entry = Entry::new(job, record.version);
        entry.cursor = Some(now);
        self.insert_entry(entry);
        Ok(record)
    }

    pub(super) async fn update_job(&mut self, spec: JobSpec, expected: Option<u64>) -> Result<JobRecord> {
        let Some(&slot) = self.index.get(&spec.name) else {
            return Err(tug_store::StoreError::JobNotFound(spec.name).into());
        };
        let job = self.check(spec)?;
        let now = self.clock.now();
        let old = self.slots[slot as usize].as_ref().expect("indexed slot is occupied");
        let timing_changed = old.job.spec.schedule != job.spec.schedule
            || old.job.spec.tz() != job.spec.tz()
            || (!old.job.spec.enabled && job.spec.enabled);
        let old_parents = old.job.spec.parents.clone();
        let record = self.store.update_job(&job.spec, expected, now).await?;
        if timing_changed {
            // A new schedule starts from now: its fires before the change were never due.
            self.store
                .commit_fires(FireBatch { runs: vec![], cursors: vec![(job.spec.name.clone(), now)] }, now)
                .await?;
        }
        let name = job.spec.name.clone();
        self.unlink_parents(&name, &old_parents);
        for p in &job.spec.parents {
            self.children.entry(p.clone()).or_default().push(name.clone());
        }
        let e = self.slots[slot as usize].as_mut().expect("indexed slot is occupied");
        e.job = job;
        e.version = record.version;
        if timing_changed {
            e.cursor = Some(now);
        }
        self.arm(slot);
        Ok(record)
    }

    pub(super) async fn delete_job(&mut self, name: &str) -> Result<()> {
        let Some(&slot) = self.index.get(name) else {
            return Err(tug_store::StoreError::JobNotFound(name.to_string()).into());
        };
        if let Some(children) = self.children.get(name).filter(|c| !c.is_empty()) {
            return Err(Error::HasChildren { job: name.to_string(), children: children.join(", ") });
        }
        let removed = self.store.delete_job(name).await?;
        let e = self.slots[slot as usize].take().expect("indexed slot is occupied");
        if let Some(at) = e.next {
            self.timers.remove(at, slot);
        }
        for id in self.runs.of_job(slot).to_vec() {
            if self.runs.run(id).is_some_and(|r| matches!(r.state, RunState::Starting | RunState::Running)) {
                self.send_kill(id, KillReason::Requested).await;
            }
            self.runs.finish(id, &mut self.agents.snapshot);
        }
        self.metrics.runs_in_flight.set(self.runs.len() as i64);
        self.unlink_parents(name, &e.job.spec.parents);
        self.index.remove(name);
        self.metrics.jobs.set(self.index.len() as i64);
        self.free.push(slot);
        self.logs.remove(&removed).await;
        Ok(())
    }

    pub(super) async fn set_paused(&mut self, name: &str, paused: bool) -> Result<JobRecord> {
        let Some(&slot) = self.index.get(name) else {
            return Err(tug_store::StoreError::JobNotFound(name.to_string()).into());
        };
        let e = self.slots[slot as usize].as_ref().expect("indexed slot is occupied");
        let mut spec = e.job.spec.clone();
        if spec.paused == paused {
            return Ok(self.store.get_job(name).await?);
        }
        spec.paused = paused;
        let record = self.store.update_job(&spec, None, self.clock.now()).await?;
        let e = self.slots[slot as usize].as_mut().expect("indexed slot is occupied");
        e.job.spec.paused = paused;
        e.version = record.version;
        // On resume the timer is set from the cursor, so the misfire policy covers the pause.
        self.arm(slot);
        Ok(record)
    }

    pub(super) async fn run_now(&mut self, name: &str, args: Vec<String>) -> Result<Run> {
        let Some(&slot) = self.index.get(name) else {
            return Err(tug_store::StoreError::JobNotFound(name.to_string()).into());
        };
        let e = self.slots[slot as usize].as_ref().expect("indexed slot is occupied");
        let active = self.runs.of_job(slot);
        if e.job.spec.concurrency == ConcurrencyPolicy::Forbid && !active.is_empty() {
            let ids: Vec<String> = active.iter().map(|i| i.to_string()).collect();
            return Err(Error::Conflict(format!(
                "job {name:?} has an active run ({}) and its concurrency policy is forbid; \
                 kill that run first, or set concurrency to allow or replace",
                ids.join(", ")
            )));
        }
        let now = self.clock.now();
        let at = self.unique_instant(name, now);
        let mut batch = FireBatch::default();
        let mut decided = Decisions::default();
        self.admit(slot, at, Trigger::Manual, &mut batch, &mut decided);
        if !args.is_empty() {
            decided.args.insert((name.to_string(), at), args);
        }
        let created = self.commit(batch, decided, now).await?;
        created
            .into_iter()
            .next()
            .ok_or_else(|| Error::Conflict(format!("a run of {name:?} for {at} already exists; try again")))
    }

    pub(super) async fn kill_run(&mut self, id: RunId) -> Result<Run> {
        let Some(run) = self.runs.run(id).cloned() else {
            let run = self.store.get_run(id).await?;
            return Err(Error::Conflict(format!("run {id} already finished ({}); nothing to kill", run.state)));
        };
        match run.state {
            RunState::Starting | RunState::Running => {
                self.send_kill(id, KillReason::Requested).await;
                Ok(run)
            }
            _ => {
                // Pending (queued or waiting for a retry): it never reaches an agent.
                let now = self.clock.now();
                let r = self.runs.record_mut(id).expect("checked above");
                r.state = RunState::Killed;
                r.retry_at = None;
                r.finished_at = Some(now);
                r.reason = Some("killed on request before it started".into());
                let out = r.clone();
                self.save_and_complete(vec![id], vec![], vec![id], now).await;
                // Durable before the API answers.
                self.persister.flush().await?;
                Ok(out)
            }
        }
    }

    pub(super) async fn kill_job(&mut self, name: &str) -> Result<Vec<Run>> {
        let Some(&slot) = self.index.get(name) else {
            return Err(tug_store::StoreError::JobNotFound(name.to_string()).into());
        };
        let mut out = Vec::new();
        for id in self.runs.of_job(slot).to_vec() {
            out.push(self.kill_run(id).await?);
        }
        Ok(out)
    }
}

/// A command with extra arguments appended: argv gets them as is, a shell string gets each one
/// single-quoted so it stays one word.
pub(super) fn with_args(command: tug_core::job::Command, args: &[String]) -> tug_core::job::Command {
    use tug_core::job::Command;
    match command {
        Command::Argv(mut v) => {
            v.extend(args.iter().cloned());
            Command::Argv(v)
        }
        Command::Shell(mut s) => {
            for a in args {
                s.push(' ');
                s.push('\'');
                s.push_str(&a.replace('\'', "'\\''"));
                s.push('\'');
            }
            Command::Shell(s)
        }
    }
}
